"""An OpenAI Agents SDK agent whose sessions live in Redis, through promptstate.

Run it with OPENAI_API_KEY set and Redis on localhost (or REDIS_URL).
"""

import asyncio
import os

from agents import Agent, Runner, SQLiteSession, function_tool

from promptstate import RedisStore
from promptstate.integrations.openai_agents import PromptStateSession


@function_tool
def get_time(city: str) -> str:
    """The local time in a city."""
    return f"14:05 in {city}"


agent = Agent(name="assistant", instructions="Be brief.", model="gpt-4.1-mini", tools=[get_time])


async def copy_session(old: SQLiteSession, new: PromptStateSession) -> int:
    """Move one session from the SDK's own store to promptstate; returns how many items."""
    items = await old.get_items()
    await new.add_items(items)  # one atomic write, every item kept exactly
    return len(items)


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    prefix = os.environ.get("PROMPTSTATE_PREFIX", "myapp:")
    async with RedisStore.from_url(url, prefix=prefix, ttl=7 * 24 * 3600) as store:
        session = PromptStateSession("user-42", store)  # the one line that changes

        result = await Runner.run(agent, "What time is it in Tokyo?", session=session)
        print(result.final_output)
        result = await Runner.run(agent, "Which city did I ask about?", session=session)
        print(result.final_output)

        # The same conversation, as promptstate sees it (the CLI and listings see this too).
        for message in await store.load("user-42"):
            print(f"{message.role:>9}: {message.content or message.tool_calls}")

        # Moving an existing SQLiteSession over is a get_items / add_items pair.
        old = SQLiteSession("user-7", "conversations.db")
        print("copied", await copy_session(old, PromptStateSession("user-7", store)), "items")
        old.close()


if __name__ == "__main__":
    asyncio.run(main())

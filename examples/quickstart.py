"""Store a conversation, read back a window of it, fork it, and list a user's sessions."""

import asyncio

from promptstate import MemoryStore, Message, State


async def main() -> None:
    async with MemoryStore(ttl=3600) as store:
        await store.set("alice:1", State(conversation_id="alice:1", user_id="alice"))
        await store.append(
            "alice:1", [Message("user", "Hi, I'm Alice"), Message("assistant", "Hello Alice!")]
        )
        window = await store.load("alice:1", last=1)
        print("newest:", window[0].content)

        await store.fork("alice:1", "alice:2")  # a branch that shares the history so far
        await store.append("alice:2", [Message("user", "Let's talk about something else")])

        async for state in store.list_by_prefix("alice:"):
            print(
                state.conversation_id,
                len(state.messages),
                "messages,",
                state.token_count,
                "tokens, version",
                state.version,
            )


asyncio.run(main())

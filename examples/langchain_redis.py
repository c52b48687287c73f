"""A LangChain chain whose chat history lives in Redis, through promptstate.

Run it with OPENAI_API_KEY set and Redis on localhost (or REDIS_URL):
pip install 'promptstate[langchain,redis]' langchain-openai
"""

import asyncio
import os

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_openai import ChatOpenAI

from promptstate import RedisStore
from promptstate.integrations.langchain import PromptStateChatMessageHistory


async def copy_history(old: BaseChatMessageHistory, new: PromptStateChatMessageHistory) -> int:
    """Move one conversation from another chat history to promptstate; returns its length."""
    messages = await old.aget_messages()
    await new.aadd_messages(messages)  # one atomic write
    return len(messages)


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    prefix = os.environ.get("PROMPTSTATE_PREFIX", "myapp:")
    async with RedisStore.from_url(url, prefix=prefix, ttl=7 * 24 * 3600) as store:
        prompt = ChatPromptTemplate.from_messages(
            [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{input}")]
        )
        chain = RunnableWithMessageHistory(
            prompt | ChatOpenAI(model="gpt-4.1-mini"),
            lambda session_id: PromptStateChatMessageHistory(session_id, store),  # the one line
            input_messages_key="input",
            history_messages_key="history",
        )
        config = {"configurable": {"session_id": "user-42"}}
        print((await chain.ainvoke({"input": "I am Ada."}, config=config)).content)
        print((await chain.ainvoke({"input": "What is my name?"}, config=config)).content)

        # The same conversation, as promptstate sees it (the CLI and listings see this too).
        for message in await store.load("user-42"):
            print(f"{message.role:>9}: {message.content}")


if __name__ == "__main__":
    asyncio.run(main())

"""PromptStateChatMessageHistory: LangChain's BaseChatMessageHistory on every store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("langchain_core", reason="langchain-core is not installed")

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from promptstate import (
    InvalidKeyError,
    MemoryStore,
    Message,
    PromptStateError,
    SQLiteStore,
    Store,
    ToolCall,
    ValidationError,
)
from promptstate.integrations import langchain as lc
from promptstate.integrations.langchain import MESSAGE_KEY, PromptStateChatMessageHistory
from promptstate.stores.redis import RedisStore
from tests.providers.loopback import LoopbackServer, json_reply

pytestmark = [pytest.mark.usefixtures("sweep_orphaned_sockets")]
anyio_only = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

# RunnableWithMessageHistory is deprecated in langchain-core 1.x (LangGraph persistence is the
# recommended way); people still use it, and it is what this adapter plugs into.
langchain_deprecated = pytest.mark.filterwarnings(
    "ignore::langchain_core._api.deprecation.LangChainDeprecationWarning"
)


def _conversation() -> list[BaseMessage]:
    return [
        SystemMessage(content="Be brief."),
        HumanMessage(content='Wie spät ist es in 東京? 🕐 "q" \\ \n', name="alice", id="h1"),
        AIMessage(
            content=[
                {"type": "text", "text": "Let me check."},
                {"type": "reasoning", "reasoning": "the user wants the time"},
            ],
            tool_calls=[
                {"id": "call_1", "name": "get_time", "args": {"city": "Tokyo"}},
                {"id": "call_2", "name": "get_weather", "args": {"city": "東京", "n": [1, 2.5]}},
            ],
            usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
            response_metadata={"model_name": "m-1", "finish_reason": "tool_calls"},
            id="run-1",
        ),
        ToolMessage(content="14:05", tool_call_id="call_1", name="get_time"),
        ToolMessage(
            content=[{"type": "text", "text": "21 °C"}],
            tool_call_id="call_2",
            artifact={"raw": [21, "C"]},
            status="success",
        ),
        AIMessage(content="It is 14:05 and 21 °C."),
        ChatMessage(role="assistant", content="a custom-role message"),
        AIMessageChunk(content="a chunk"),
    ]


@anyio_only
async def test_messages_round_trip(store: Store) -> None:
    history = PromptStateChatMessageHistory("rt", store)
    assert isinstance(history, BaseChatMessageHistory)
    assert await history.aget_messages() == []
    conversation = _conversation()
    await history.aadd_messages(conversation)
    back = await history.aget_messages()
    assert back == conversation
    assert [type(m) for m in back] == [type(m) for m in conversation]
    ai = back[2]
    assert isinstance(ai, AIMessage)
    assert ai.tool_calls[1]["args"] == {"city": "東京", "n": [1, 2.5]}
    assert ai.usage_metadata == {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19}
    # What promptstate sees: one message per LangChain message, roles and text mapped.
    stored = await store.load("rt")
    assert [m.role for m in stored] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "assistant",
        "assistant",
    ]
    assert stored[1].name == "alice"
    assert stored[2].content == "Let me check."
    assert stored[2].tool_calls == (
        ToolCall("call_1", "get_time", '{"city": "Tokyo"}'),
        ToolCall("call_2", "get_weather", '{"city": "東京", "n": [1, 2.5]}'),
    )
    assert (stored[3].tool_call_id, stored[4].content) == ("call_1", "21 °C")
    assert all(m.tokens is not None for m in stored)
    # Plain ones (the system message, the last AI text) are rebuilt from role and text.
    assert [MESSAGE_KEY in m.metadata for m in stored] == [
        False,
        True,
        True,
        True,
        True,
        False,
        True,
        True,
    ]


@anyio_only
async def test_add_clear_and_several_sessions(store: Store) -> None:
    one = PromptStateChatMessageHistory("c:1", store)
    two = PromptStateChatMessageHistory("c:2", store)
    await one.aadd_messages([HumanMessage(content="cats")])
    await one.aadd_messages([AIMessage(content="meow")])
    await two.aadd_messages([HumanMessage(content="dogs")])
    await one.aadd_messages([])
    assert [m.content for m in await one.aget_messages()] == ["cats", "meow"]
    await one.aclear()
    assert await one.aget_messages() == []
    assert [m.content for m in await two.aget_messages()] == ["dogs"]
    await one.aclear()  # clearing nothing is fine
    await one.aadd_messages([HumanMessage(content="again")])
    assert [m.content for m in await one.aget_messages()] == ["again"]


@anyio_only
async def test_concurrent_adds_lose_nothing(store: Store) -> None:
    history = PromptStateChatMessageHistory("busy", store)

    async def add(start: int) -> None:
        await history.aadd_messages([HumanMessage(content=f"m{start + i}") for i in range(4)])

    async with anyio.create_task_group() as tg:
        for start in range(0, 40, 4):
            tg.start_soon(add, start)
    contents = [m.content for m in await history.aget_messages()]
    assert sorted(contents) == sorted(f"m{i}" for i in range(40))  # type: ignore[type-var]
    for start in range(0, 40, 4):
        at = contents.index(f"m{start}")
        assert contents[at : at + 4] == [f"m{start + i}" for i in range(4)]


@anyio_only
async def test_bad_input_is_refused_before_writing() -> None:
    store = MemoryStore()
    history = PromptStateChatMessageHistory("bad", store)
    with pytest.raises(ValidationError):
        await history.aadd_messages(HumanMessage(content="not a list"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await history.aadd_messages([HumanMessage(content="ok"), "text"])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        await history.aadd_messages(
            [HumanMessage(content="ok"), AIMessage(content="x", additional_kwargs={"o": object()})]
        )
    assert await store.count("bad") == 0, "a refused batch was partly written"
    with pytest.raises(InvalidKeyError):
        PromptStateChatMessageHistory("", store)
    with pytest.raises(ValidationError):
        PromptStateChatMessageHistory("x", object())  # type: ignore[arg-type]


@anyio_only
async def test_messages_without_a_langchain_message_read_as_their_kind() -> None:
    store = MemoryStore()
    await store.append(
        "plain",
        [
            Message("system", "sys"),
            Message("user", "hi", name="bob"),
            Message("assistant", "", tool_calls=(ToolCall("c1", "f", '{"a": 1}'),)),
            Message("tool", "done", tool_call_id="c1", name="f"),
            Message("assistant", "bye"),
        ],
    )
    got = await PromptStateChatMessageHistory("plain", store).aget_messages()
    assert got == [
        SystemMessage(content="sys"),
        HumanMessage(content="hi", name="bob"),
        AIMessage(content="", tool_calls=[{"id": "c1", "name": "f", "args": {"a": 1}}]),
        ToolMessage(content="done", tool_call_id="c1", name="f"),
        AIMessage(content="bye"),
    ]


@anyio_only
async def test_sync_methods_inside_a_running_loop_name_the_async_method() -> None:
    history = PromptStateChatMessageHistory("s", MemoryStore())
    with pytest.raises(PromptStateError, match=r"aget_messages\(\)"):
        _ = history.messages
    with pytest.raises(PromptStateError, match=r"aadd_messages"):
        history.add_messages([HumanMessage(content="x")])
    with pytest.raises(PromptStateError, match=r"aadd_messages"):
        history.add_user_message("x")
    with pytest.raises(PromptStateError, match=r"aclear\(\)"):
        history.clear()
    assert await history.aget_messages() == [], "a refused sync call wrote"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def sync_store(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[Store]:
    # A store used from sync code only, as a sync application would: the history runs every
    # call on the thread's own loop, where the store's connections then live.
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "sync.db")
    else:
        made = RedisStore.from_url(redis_url, prefix=f"lcsync{uuid.uuid4().hex[:8]}:")
    try:
        yield made
    finally:

        async def close() -> None:
            if request.param == "redis":
                await made.delete_by_prefix("")
            await made.aclose()

        lc._run_sync(close(), "clear")


def test_sync_methods_without_a_running_loop(sync_store: Store) -> None:
    history = PromptStateChatMessageHistory("sync", sync_store)
    assert history.messages == []
    history.add_user_message("hello")
    history.add_ai_message("hi there")
    history.add_messages([HumanMessage(content="a"), AIMessage(content="b")])
    assert [m.content for m in history.messages] == ["hello", "hi there", "a", "b"]
    assert "hello" in str(history)
    history.clear()
    assert history.messages == []
    # Another thread gets its own loop, with a store of its own.
    seen: list[Any] = []

    def other() -> None:
        history2 = PromptStateChatMessageHistory("t", MemoryStore())
        history2.add_user_message("from a thread")
        seen.extend(m.content for m in history2.messages)

    thread = __import__("threading").Thread(target=other)
    thread.start()
    thread.join()
    assert seen == ["from a thread"]


@anyio_only
@langchain_deprecated
async def test_runnable_with_message_history_two_turns(store: Store) -> None:
    model = FakeMessagesListChatModel(
        responses=[
            AIMessage(content="Hello Ada.", usage_metadata=None),
            AIMessage(content="Your name is Ada."),
        ]
    )
    seen: list[list[BaseMessage]] = []

    def record(value: Any) -> Any:
        seen.append(list(value.to_messages()))
        return value

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{input}")]
    )
    chain = RunnableWithMessageHistory(
        prompt | record | model,
        lambda session_id: PromptStateChatMessageHistory(session_id, store),
        input_messages_key="input",
        history_messages_key="history",
    )
    config: Any = {"configurable": {"session_id": "lc:ada"}}
    first = await chain.ainvoke({"input": "I am Ada."}, config=config)
    assert first.content == "Hello Ada."
    second = await chain.ainvoke({"input": "What is my name?"}, config=config)
    assert second.content == "Your name is Ada."
    # The second call saw the first turn.
    assert [m.content for m in seen[1]] == [
        "Be brief.",
        "I am Ada.",
        "Hello Ada.",
        "What is my name?",
    ]
    stored = await PromptStateChatMessageHistory("lc:ada", store).aget_messages()
    assert [(type(m).__name__, m.content) for m in stored] == [
        ("HumanMessage", "I am Ada."),
        ("AIMessage", "Hello Ada."),
        ("HumanMessage", "What is my name?"),
        ("AIMessage", "Your name is Ada."),
    ]
    assert [m.role for m in await store.load("lc:ada")] == ["user", "assistant"] * 2


def test_a_missing_langchain_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "try:\n"
        "    import promptstate.integrations.langchain\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'promptstate[langchain]'" in out.stdout


def test_the_thread_loop_is_reused() -> None:
    async def loop_id() -> int:
        return id(asyncio.get_running_loop())

    assert lc._run_sync(loop_id(), "messages") == lc._run_sync(loop_id(), "messages")


# -- the docs example, against a loopback Chat Completions server --------------------------


def _completion(n: int, text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4.1-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@anyio_only
async def test_the_docs_example_runs_on_redis(server: LoopbackServer, redis_url: str) -> None:
    pytest.importorskip("langchain_openai", reason="langchain-openai is not installed")
    server.queue(
        json_reply(200, _completion(1, "Hello Ada.")),
        json_reply(200, _completion(2, "Your name is Ada.")),
    )
    prefix = f"lcdoc{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"{server.url}/v1",
        "OPENAI_API_BASE": f"{server.url}/v1",
        "OPENAI_API_KEY": "test-key",
        "REDIS_URL": redis_url,
        "PROMPTSTATE_PREFIX": prefix,
        "PYTHONPATH": str(ROOT),
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }
    try:
        done = await anyio.run_process(
            [sys.executable, str(ROOT / "examples" / "langchain_redis.py")], env=env, check=False
        )
        out = done.stdout.decode()
        assert done.returncode == 0, done.stderr.decode()
        assert out.splitlines() == [
            "Hello Ada.",
            "Your name is Ada.",
            "     user: I am Ada.",
            "assistant: Hello Ada.",
            "     user: What is my name?",
            "assistant: Your name is Ada.",
        ]
        # The second request carried the first turn.
        sent = [m["content"] for m in server.requests[1].json()["messages"]]
        assert sent == ["Be brief.", "I am Ada.", "Hello Ada.", "What is my name?"]
    finally:
        async with RedisStore.from_url(redis_url, prefix=prefix) as store:
            await store.delete_by_prefix("")


@anyio_only
@langchain_deprecated
async def test_copy_history_from_another_chat_history(store: Store) -> None:
    pytest.importorskip("langchain_openai", reason="langchain-openai is not installed")
    from langchain_core.chat_history import InMemoryChatMessageHistory

    from examples.langchain_redis import copy_history

    old = InMemoryChatMessageHistory()
    await old.aadd_messages(_conversation())
    new = PromptStateChatMessageHistory("moved", store)
    assert await copy_history(old, new) == len(_conversation())
    assert await new.aget_messages() == _conversation()


@anyio_only
async def test_plain_messages_are_stored_without_a_copy() -> None:
    store = MemoryStore()
    history = PromptStateChatMessageHistory("plain", store)
    plain = [
        HumanMessage(content="hi", name="ann"),
        AIMessage(content="hello"),
        SystemMessage(content="sys"),
    ]
    rich = [
        AIMessage(content="x", id="run-1"),
        HumanMessage(content=[{"type": "text", "text": "t"}]),
    ]
    await history.aadd_messages(plain + rich)
    stored = await store.load("plain")
    assert [MESSAGE_KEY in m.metadata for m in stored] == [False] * 3 + [True] * 2
    assert await history.aget_messages() == plain + rich


@anyio_only
async def test_last_reads_a_window_that_never_starts_with_an_orphan_tool_message(
    store: Store,
) -> None:
    conversation = _conversation()  # system, human, ai (2 calls), tool, tool, ai, chat, chunk
    await PromptStateChatMessageHistory("win", store).aadd_messages(conversation)
    assert (
        await PromptStateChatMessageHistory("win", store, last=3).aget_messages()
        == (conversation[-3:])
    )
    # The newest 5 start with the two tool messages: they go, the rest stays.
    assert (
        await PromptStateChatMessageHistory("win", store, last=5).aget_messages()
        == (conversation[-3:])
    )
    assert (
        await PromptStateChatMessageHistory("win", store, last=6).aget_messages()
        == (conversation[-6:])
    )
    assert await PromptStateChatMessageHistory("win", store, last=99).aget_messages() == (
        conversation
    )
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValidationError):
            PromptStateChatMessageHistory("win", store, last=bad)  # type: ignore[arg-type]


@anyio_only
async def test_broken_tool_arguments_read_as_invalid_tool_calls() -> None:
    store = MemoryStore()
    await store.append(
        "broken",
        [
            Message(
                "assistant",
                tool_calls=(
                    ToolCall("c1", "f", '{"a": 1'),
                    ToolCall("c2", "g", "[1, 2]"),
                    ToolCall("c3", "h", ""),
                ),
            )
        ],
    )
    (ai,) = await PromptStateChatMessageHistory("broken", store).aget_messages()
    assert isinstance(ai, AIMessage)
    assert ai.tool_calls == [{"id": "c3", "name": "h", "args": {}, "type": "tool_call"}]
    assert [(c["id"], c["args"]) for c in ai.invalid_tool_calls] == [
        ("c1", '{"a": 1'),
        ("c2", "[1, 2]"),
    ]

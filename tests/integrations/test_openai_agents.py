"""PromptStateSession: the OpenAI Agents SDK's Session protocol on every store.

The protocol tests follow what the SDK's own session suites check (tests/memory and
tests/extensions/memory of openai-agents-python): order, ``limit`` returning the newest n in
chronological order, pop on an empty session, clear, several sessions on one store, concurrent
adds. The end-to-end tests run the real ``Runner`` against a loopback server speaking the
Responses API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("agents", reason="the OpenAI Agents SDK is not installed")

from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool
from agents.memory import Session, SessionSettings
from openai import AsyncOpenAI

from promptstate import (
    EncryptedStore,
    InvalidKeyError,
    MemoryStore,
    Message,
    Store,
    ToolCall,
    ValidationError,
)
from promptstate.integrations.openai_agents import (
    ITEM_KEY,
    PromptStateSession,
    item_to_message,
    message_to_items,
)
from promptstate.stores.redis import RedisStore
from tests.providers.loopback import LoopbackServer, json_reply

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("sweep_orphaned_sockets")]

ROOT = Path(__file__).resolve().parents[2]


#: One item of every shape the Responses input accepts (and one it does not know yet).
ITEMS: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": "Use tools."},
    {"role": "user", "content": "Wie spät ist es in 東京? 🕐 \"q\" 'x' \\ \n\t"},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Look: "},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
        ],
    },
    {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "thinking"}],
        "encrypted_content": "gAAAAB" + "x" * 200,
    },
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_time",
        "arguments": '{"city": "Tokyo"}',
        "status": "completed",
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "14:05"},
    {
        "type": "function_call_output",
        "call_id": "call_2",
        "output": [{"type": "input_text", "text": "a list output"}],
    },
    {
        "type": "web_search_call",
        "id": "ws_1",
        "status": "completed",
        "action": {"type": "search", "query": "weather"},
    },
    {
        "type": "computer_call",
        "id": "cu_1",
        "call_id": "cc_1",
        "action": {"type": "click", "x": 1, "y": 2, "button": "left"},
        "pending_safety_checks": [],
        "status": "completed",
    },
    {"type": "item_reference", "id": "msg_0"},
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "It is 14:05.", "annotations": [], "logprobs": None},
            {"type": "refusal", "refusal": " No more."},
        ],
    },
    {"type": "a_future_item", "payload": {"nested": [1, 2.5, None, True, "x"]}, "n": 2**40},
]


async def test_every_item_type_round_trips_exactly(store: Store) -> None:
    session = PromptStateSession("rt", store)
    await session.add_items(ITEMS)
    assert await session.get_items() == ITEMS
    assert json.dumps(await session.get_items()) == json.dumps(ITEMS)  # same key order too
    assert await session.get_items(limit=3) == ITEMS[-3:]
    # And what promptstate sees: one message per item, roles and text mapped.
    messages = await store.load("rt")
    assert len(messages) == len(ITEMS)
    assert [m.role for m in messages[:4]] == ["system", "system", "user", "user"]
    assert messages[2].content == ITEMS[2]["content"]
    assert messages[3].content == "Look: "
    assert messages[5].tool_calls == (ToolCall("call_1", "get_time", '{"city": "Tokyo"}'),)
    assert (messages[6].role, messages[6].content, messages[6].tool_call_id) == (
        "tool",
        "14:05",
        "call_1",
    )
    assert messages[7].content == "a list output"
    assert messages[11].content == "It is 14:05. No more."
    assert all(m.metadata[ITEM_KEY] == item for m, item in zip(messages, ITEMS, strict=True))
    assert all(m.tokens is not None for m in messages)


async def test_protocol_semantics(store: Store) -> None:
    session = PromptStateSession("ops", store)
    assert isinstance(session, Session)
    assert await session.get_items() == []
    assert await session.pop_item() is None, "pop on an empty session"
    await session.add_items([])
    assert await store.count("ops") == 0, "adding nothing wrote"
    items = [{"role": "user" if i % 2 else "assistant", "content": str(i)} for i in range(1, 5)]
    await session.add_items(items[:2])
    await session.add_items(items[2:])
    assert await session.get_items() == items
    assert await session.get_items(limit=2) == items[2:], "limit: the newest, oldest first"
    assert await session.get_items(limit=10) == items
    assert await session.get_items(limit=0) == []
    assert await session.pop_item() == items[3]
    assert await session.get_items() == items[:3]
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.clear_session()  # clearing nothing is fine
    await session.add_items(items[:1])
    assert await session.get_items() == items[:1], "a cleared session is usable again"


async def test_sessions_on_one_store_are_isolated(store: Store) -> None:
    one, two = PromptStateSession("s:1", store), PromptStateSession("s:2", store)
    await one.add_items([{"role": "user", "content": "cats"}])
    await two.add_items([{"role": "user", "content": "dogs"}])
    await one.clear_session()
    assert await one.get_items() == []
    assert await two.get_items() == [{"role": "user", "content": "dogs"}]
    assert await two.pop_item() == {"role": "user", "content": "dogs"}
    assert await one.pop_item() is None


async def test_concurrent_adds_lose_nothing(store: Store) -> None:
    session = PromptStateSession("busy", store)

    async def add(start: int) -> None:
        await session.add_items([{"role": "user", "content": f"m{start + i}"} for i in range(5)])

    async with anyio.create_task_group() as tg:
        for start in range(0, 50, 5):
            tg.start_soon(add, start)
    contents = [item["content"] for item in await session.get_items()]
    assert sorted(contents) == sorted(f"m{i}" for i in range(50))
    for start in range(0, 50, 5):  # each add is one atomic batch, in order
        at = contents.index(f"m{start}")
        assert contents[at : at + 5] == [f"m{start + i}" for i in range(5)]


async def test_concurrent_pops_never_return_the_same_item(store: Store) -> None:
    session = PromptStateSession("pops", store)
    items = [{"role": "user", "content": f"m{i}"} for i in range(40)]
    await session.add_items(items)
    popped: list[Any] = []

    async def pop() -> None:
        popped.append(await session.pop_item())

    async def add(i: int) -> None:
        await session.add_items([{"role": "user", "content": f"late{i}"}])

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(pop)
            if i % 3 == 0:
                tg.start_soon(add, i)
    contents = [p["content"] for p in popped if p is not None]
    assert len(contents) == 30
    assert len(set(contents)) == 30, "two pops returned the same item"
    left = [item["content"] for item in await session.get_items()]
    everything = {f"m{i}" for i in range(40)} | {f"late{i}" for i in range(0, 30, 3)}
    assert sorted(contents + left) == sorted(everything), "an item was lost"


async def test_pop_from_several_sessions_objects_on_one_key(store: Store) -> None:
    # Two processes' worth of session objects over one key share the items.
    a, b = PromptStateSession("shared", store), PromptStateSession("shared", store)
    await a.add_items([{"role": "user", "content": "1"}, {"role": "user", "content": "2"}])
    assert await b.pop_item() == {"role": "user", "content": "2"}
    assert await a.get_items() == [{"role": "user", "content": "1"}]


async def test_session_settings_limit() -> None:
    store = MemoryStore()
    items = [{"role": "user", "content": str(i)} for i in range(5)]
    session = PromptStateSession("lim", store, session_settings=SessionSettings(limit=2))
    await session.add_items(items)
    assert session.session_settings == SessionSettings(limit=2)
    assert await session.get_items() == items[-2:]
    assert await session.get_items(limit=4) == items[-4:], "an explicit limit wins"
    from_dict = PromptStateSession("lim", store, session_settings={"limit": 3})
    assert from_dict.session_settings == SessionSettings(limit=3)
    assert await from_dict.get_items() == items[-3:]
    assert PromptStateSession("lim", store).session_settings is None


async def test_bad_input_is_refused_before_writing() -> None:
    store = MemoryStore()
    session = PromptStateSession("bad", store)
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValidationError):
            await session.get_items(limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await session.add_items({"role": "user", "content": "not a list"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await session.add_items([{"role": "user", "content": "ok"}, "not a dict"])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        await session.add_items([{"role": "user", "content": object()}])
    assert await store.count("bad") == 0, "a refused batch was partly written"
    with pytest.raises(ValidationError):
        PromptStateSession("x", object())  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        PromptStateSession("", store)
    with pytest.raises(ValidationError):
        PromptStateSession("x", store, session_settings=5)


async def test_messages_without_an_item_read_as_items() -> None:
    # A session promptstate's own pipeline wrote reads as the items it stands for.
    store = MemoryStore()
    await store.append(
        "mixed",
        [
            Message("user", "hi"),
            Message(
                "assistant",
                tool_calls=(ToolCall("c1", "f", "{}"), ToolCall("c2", "g", '{"a": 1}')),
            ),
            Message("tool", "done", tool_call_id="c1"),
            Message("assistant", "bye"),
        ],
    )
    session = PromptStateSession("mixed", store)
    assert await session.get_items() == [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
        {"role": "assistant", "content": "bye"},
    ]
    assert await session.get_items(limit=3) == (await session.get_items())[-3:]
    assert message_to_items(item_to_message({"type": "x"})) == [{"type": "x"}]


async def test_encrypted_store_keeps_items_sealed_and_round_trips() -> None:
    inner = MemoryStore()
    store = EncryptedStore(inner, keys={"k1": bytes(range(32))}, active="k1")
    session = PromptStateSession("enc", store)
    await session.add_items(ITEMS)
    assert await session.get_items() == ITEMS
    raw = (await inner.get("enc")).messages
    assert "東京" not in repr(raw), "an item reached the inner store in the clear"
    assert await session.pop_item() == ITEMS[-1]


def test_the_core_never_imports_the_frameworks() -> None:
    code = (
        "import sys, promptstate, promptstate.stores, promptstate.cli, promptstate.sdk\n"
        "import promptstate.integrations, promptstate.pipeline\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('agents', 'openai', 'langchain_core', 'langchain')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_sdk_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['agents'] = None\n"
        "try:\n"
        "    import promptstate.integrations.openai_agents\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'promptstate[agents]'" in out.stdout


# -- end to end: the real Runner against a loopback Responses API ---------------------------


def _response(n: int, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": "completed",
        "model": "gpt-test",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
        },
    }


def _text(n: int, text: str) -> dict[str, Any]:
    return {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


def _agent(server: LoopbackServer, **options: Any) -> Agent[Any]:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="test-key", max_retries=0)
    model = OpenAIResponsesModel(model="gpt-test", openai_client=client)
    return Agent(name="assistant", instructions="Be brief.", model=model, **options)


async def test_runner_two_runs_with_a_tool_call(store: Store, server: LoopbackServer) -> None:
    @function_tool
    def get_time(city: str) -> str:
        """The time in a city."""
        return f"14:05 in {city}"

    agent = _agent(server, tools=[get_time])
    config = RunConfig(tracing_disabled=True)
    reasoning = {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [],
        "encrypted_content": "gAAAAB-opaque",
    }
    call = {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_time",
        "arguments": '{"city": "Tokyo"}',
        "status": "completed",
    }
    server.queue(
        json_reply(200, _response(1, [reasoning, call])),
        json_reply(200, _response(2, [_text(2, "It is 14:05 in Tokyo.")])),
        json_reply(200, _response(3, [_text(3, "You asked about Tokyo.")])),
    )
    session = PromptStateSession(f"run:{uuid.uuid4().hex[:6]}", store)
    first = await Runner.run(agent, "What time is it in Tokyo?", session=session, run_config=config)
    assert first.final_output == "It is 14:05 in Tokyo."
    second = await Runner.run(
        agent, "Which city did I ask about?", session=session, run_config=config
    )
    assert second.final_output == "You asked about Tokyo."

    stored = await session.get_items()
    kinds = [item.get("type", "message") for item in stored]
    assert kinds == [
        "message",
        "reasoning",
        "function_call",
        "function_call_output",
        "message",
        "message",
        "message",
    ]
    assert stored[1]["encrypted_content"] == "gAAAAB-opaque"
    assert stored[3]["call_id"] == "call_1"
    assert stored[3]["output"] == "14:05 in Tokyo"

    # The third request (the second run) replayed the whole first run, tool call included.
    replayed = server.requests[2].json()["input"]
    assert [i.get("type", "message") for i in replayed] == kinds[:6]
    assert replayed[2]["call_id"] == "call_1"
    assert replayed[3]["output"] == "14:05 in Tokyo"
    assert replayed[-1]["content"] == "Which city did I ask about?"
    # promptstate sees the conversation as messages.
    roles = [m.role for m in await store.load(session.session_id)]
    assert roles == ["user", "assistant", "assistant", "tool", "assistant", "user", "assistant"]


async def test_runner_honours_the_session_limit(server: LoopbackServer) -> None:
    store = MemoryStore()
    session = PromptStateSession("lim", store, session_settings=SessionSettings(limit=2))
    agent = _agent(server)
    config = RunConfig(tracing_disabled=True)
    for n in range(1, 4):
        server.queue(json_reply(200, _response(n, [_text(n, f"reply {n}")])))
        await Runner.run(agent, f"message {n}", session=session, run_config=config)
    sent = server.requests[-1].json()["input"]
    assert [i["content"] if isinstance(i["content"], str) else "reply" for i in sent] == [
        "message 2",
        "reply",
        "message 3",
    ]
    assert len(await session.get_items(limit=None)) == 2, "session_settings.limit applies"
    assert await store.count("lim") == 6


async def test_the_docs_example_runs_on_redis(
    server: LoopbackServer, redis_url: str, tmp_path: Path
) -> None:
    from agents import SQLiteSession

    old = SQLiteSession("user-7", str(tmp_path / "conversations.db"))
    old_items: list[Any] = [ITEMS[2], ITEMS[4], ITEMS[-1]]
    await old.add_items(old_items)
    old.close()
    call = {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_time",
        "arguments": '{"city": "Tokyo"}',
        "status": "completed",
    }
    server.queue(
        json_reply(200, _response(1, [call])),
        json_reply(200, _response(2, [_text(2, "It is 14:05 in Tokyo.")])),
        json_reply(200, _response(3, [_text(3, "Tokyo.")])),
    )
    prefix = f"agentsdoc{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"{server.url}/v1",
        "OPENAI_API_KEY": "test-key",
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
        "REDIS_URL": redis_url,
        "PROMPTSTATE_PREFIX": prefix,
        "PYTHONPATH": str(ROOT),
    }
    try:
        done = await anyio.run_process(
            [sys.executable, str(ROOT / "examples" / "agents_redis.py")],
            env=env,
            cwd=tmp_path,
            check=False,
        )
        out = done.stdout.decode()
        assert done.returncode == 0, done.stderr.decode()
        assert out.splitlines()[:2] == ["It is 14:05 in Tokyo.", "Tokyo."]
        assert "copied 3 items" in out
        assert len(server.requests) == 3
        async with RedisStore.from_url(redis_url, prefix=prefix) as store:
            assert await PromptStateSession("user-7", store).get_items() == old_items
            assert await store.count("user-42") == 6
    finally:
        async with RedisStore.from_url(redis_url, prefix=prefix) as store:
            await store.delete_by_prefix("")

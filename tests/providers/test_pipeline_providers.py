"""Both HTTP providers end to end through Pipeline.execute / Pipeline.stream, and the tool loop.

The model is a real HTTP server on 127.0.0.1 (see loopback.py); the store is a MemoryStore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from promptstate import (
    AnthropicProvider,
    MemoryStore,
    Message,
    OpenAIProvider,
    ProviderError,
    SQLiteStore,
    ToolCall,
    Usage,
    ValidationError,
)
from promptstate.pipeline import Middleware, Pipeline
from promptstate.providers.mock import MockProvider
from promptstate.stages import CallProvider, LoadState, SaveState
from promptstate.tools import ToolLoop
from tests.providers.loopback import (
    LoopbackServer,
    anthropic_sse,
    drain,
    hang,
    json_reply,
    openai_sse,
    sse_reply,
)
from tests.providers.test_anthropic_provider import message_doc, stream_events
from tests.providers.test_openai_provider import chunk, completion, usage_chunk

pytestmark = pytest.mark.anyio

OPENAI_IN, OPENAI_OUT = 0.15, 0.60  # gpt-4o-mini, USD per 1M tokens
CLAUDE_IN, CLAUDE_OUT = 3.0, 15.0  # claude-sonnet-4-5


def openai(server: LoopbackServer, **kwargs: Any) -> OpenAIProvider:
    kwargs.setdefault("backoff", 0.01)
    return OpenAIProvider("gpt-4o-mini", base_url=server.url + "/v1", api_key="sk-x", **kwargs)


def anthropic(server: LoopbackServer, **kwargs: Any) -> AnthropicProvider:
    kwargs.setdefault("backoff", 0.01)
    return AnthropicProvider("claude-sonnet-4-5", base_url=server.url, api_key="sk-a", **kwargs)


def tool_call_completion(*calls: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    return completion(
        None,
        tool_calls=[
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in calls
        ],
        finish="tool_calls",
        usage=(50, 10),
    )


def roles(messages: list[Message]) -> list[str]:
    return [m.role for m in messages]


# -- plain turns ---------------------------------------------------------------------------


async def test_openai_execute_and_stream_through_the_pipeline(server: LoopbackServer) -> None:
    server.queue(
        json_reply(200, completion("Hi Alice!", usage=(12, 5))),
        sse_reply(
            openai_sse(
                [
                    chunk({"content": "You are "}),
                    chunk({"content": "Alice."}),
                    chunk({}, finish="stop"),
                    usage_chunk(30, 4),
                ]
            )
        ),
    )
    async with openai(server) as llm, MemoryStore() as store, Pipeline(llm, store=store) as pipe:
        result = await pipe.execute("s1", "user", "Hi, I'm Alice", temperature=0.1)
        assert result.response.content == "Hi Alice!"
        assert result.usage == Usage(12, 5)
        assert result.cost == pytest.approx((12 * OPENAI_IN + 5 * OPENAI_OUT) / 1e6)
        chunks = await drain(pipe.stream("s1", "user", "What's my name?"))
        state = await store.get("s1")
    assert "".join(c.text for c in chunks) == "You are Alice."
    assert chunks[-1].done
    assert chunks[-1].usage == Usage(30, 4)
    second = server.requests[1].json()
    assert [m["content"] for m in second["messages"]] == [
        "Hi, I'm Alice",
        "Hi Alice!",
        "What's my name?",
    ]
    assert server.requests[0].json()["temperature"] == 0.1
    assert [m.content for m in state.messages] == [
        "Hi, I'm Alice",
        "Hi Alice!",
        "What's my name?",
        "You are Alice.",
    ]
    expected = (12 * OPENAI_IN + 5 * OPENAI_OUT + 30 * OPENAI_IN + 4 * OPENAI_OUT) / 1e6
    assert state.total_cost == pytest.approx(expected)


async def test_anthropic_execute_and_stream_through_the_pipeline(server: LoopbackServer) -> None:
    server.queue(
        json_reply(200, message_doc()),
        sse_reply(anthropic_sse(stream_events(tool=False))),
    )
    async with (
        anthropic(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, system="Be kind.") as pipe,
    ):
        result = await pipe.execute("s1", "user", "Hello")
        assert result.response.content == "Hi there"
        assert result.cost == pytest.approx((20 * CLAUDE_IN + 10 * CLAUDE_OUT) / 1e6)
        chunks = await drain(pipe.stream("s1", "user", "Again"))
        state = await store.get("s1")
    assert [c.text for c in chunks if not c.done] == ["Hel", "lo"]
    assert chunks[-1].usage == Usage(25, 15)
    second = server.requests[1].json()
    assert second["system"] == "Be kind."
    assert second["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Again"},
    ]
    assert [m.content for m in state.messages] == ["Hello", "Hi there", "Again", "Hello"]


@pytest.mark.parametrize("which", ["openai", "anthropic"])
async def test_connection_cut_mid_stream_saves_nothing(server: LoopbackServer, which: str) -> None:
    if which == "openai":
        events = openai_sse([chunk({"content": "Hel"}), chunk({"content": "lo"})], done=False)
        llm: Any = openai(server)
    else:
        events = anthropic_sse(stream_events()[:5])
        llm = anthropic(server)
    server.queue(sse_reply(events, cut=True))
    async with llm, MemoryStore() as store, Pipeline(llm, store=store) as pipe:
        received: list[Any] = []
        with pytest.raises(ProviderError):
            await drain(pipe.stream("s1", "user", "hi"), received)
        assert [c.text for c in received] == ["Hel", "lo"]
        assert await store.load("s1") == []


async def test_provider_failure_saves_nothing(server: LoopbackServer) -> None:
    server.queue(json_reply(401, {"error": {"message": "no", "type": "auth"}}))
    async with openai(server) as llm, MemoryStore() as store, Pipeline(llm, store=store) as pipe:
        with pytest.raises(ProviderError) as info:
            await pipe.execute("s1", "user", "hi")
        assert info.value.status_code == 401
        assert await store.load("s1") == []


# -- tool loops ---------------------------------------------------------------------------


async def test_openai_tool_loop_runs_tools_concurrently_and_persists_rounds(
    server: LoopbackServer,
) -> None:
    both_running = anyio.Event()
    running = 0

    async def weather(city: str) -> dict[str, Any]:
        """The weather in a city.

        Args:
            city: The city.
        """
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        with anyio.fail_after(5):
            await both_running.wait()  # returns only if both calls run at the same time
        return {"city": city, "temp": 20}

    server.queue(
        json_reply(
            200,
            tool_call_completion(
                ("call_1", "weather", {"city": "Oslo"}), ("call_2", "weather", {"city": "Rome"})
            ),
        ),
        json_reply(200, completion("Oslo and Rome are both 20 degrees.", usage=(80, 12))),
    )
    async with (
        openai(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, tools=[weather], max_tool_rounds=3) as pipe,
    ):
        result = await pipe.execute("s1", "user", "Weather in Oslo and Rome?")
        state = await store.get("s1")
    first, second = (r.json() for r in server.requests)
    assert first["tools"][0]["function"]["name"] == "weather"
    assert first["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert second["messages"][1]["tool_calls"][1]["id"] == "call_2"
    assert second["messages"][2:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": '{"city":"Oslo","temp":20}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"city":"Rome","temp":20}'},
    ]
    assert result.response.content == "Oslo and Rome are both 20 degrees."
    assert result.usage == Usage(130, 22)
    expected = (130 * OPENAI_IN + 22 * OPENAI_OUT) / 1e6
    assert result.cost == pytest.approx(expected)
    assert state.total_cost == pytest.approx(expected)
    assert roles(state.messages) == ["user", "assistant", "tool", "tool", "assistant"]
    assert state.messages[1].tool_calls[0] == ToolCall("call_1", "weather", '{"city": "Oslo"}')


async def test_anthropic_streamed_tool_loop(server: LoopbackServer) -> None:
    def lookup(order_id: str) -> str:
        return f"order {order_id} shipped"

    server.queue(
        sse_reply(anthropic_sse(stream_events(tool=True))),
        sse_reply(anthropic_sse(stream_events(tool=False))),
    )
    async with (
        anthropic(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, tools=[lookup]) as pipe,
    ):
        chunks = await drain(pipe.stream("s1", "user", "Where is order 7?"))
        state = await store.get("s1")
    assert "".join(c.text for c in chunks) == "HelloHello"
    assert chunks[-1].done
    assert chunks[-1].message is not None
    assert chunks[-1].message.content == "Hello"
    second = server.requests[1].json()
    assert second["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "order 7 shipped"}
        ],
    }
    assert roles(state.messages) == ["user", "assistant", "tool", "assistant"]


async def test_a_failing_tool_is_an_error_result_for_the_model(server: LoopbackServer) -> None:
    def explode(n: int) -> int:
        raise RuntimeError("disk on fire")

    server.queue(
        json_reply(200, tool_call_completion(("c1", "explode", {"n": 1}))),
        json_reply(200, completion("Sorry, the tool failed.")),
    )
    async with (
        openai(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, tools=[explode]) as pipe,
    ):
        result = await pipe.execute("s1", "user", "go")
        state = await store.get("s1")
    assert result.response.content == "Sorry, the tool failed."
    tool_message = state.messages[2]
    assert tool_message.content == "Error: RuntimeError: disk on fire"
    assert tool_message.metadata.get("is_error") is True
    assert server.requests[1].json()["messages"][2]["content"] == tool_message.content


async def test_provider_failure_mid_loop_keeps_finished_rounds(server: LoopbackServer) -> None:
    def noop() -> str:
        return "done"

    server.queue(
        json_reply(200, tool_call_completion(("c1", "noop", {}))),
        json_reply(400, {"error": {"message": "bad request", "type": "invalid_request_error"}}),
        json_reply(200, completion("Recovered.")),
    )
    async with (
        openai(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, tools=[noop]) as pipe,
    ):
        with pytest.raises(ProviderError):
            await pipe.execute("s1", "user", "go")
        kept = await store.load("s1")
        assert roles(kept) == ["user", "assistant"]
        assert kept[1].tool_calls == (ToolCall("c1", "noop", "{}"),)
        # The conversation goes on: the interrupted call is answered with an error result.
        result = await pipe.execute("s1", "user", "try again")
    assert result.response.content == "Recovered."
    sent = server.requests[2].json()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert "no result" in sent[2]["content"]


async def test_cancellation_during_tools_keeps_finished_rounds(server: LoopbackServer) -> None:
    async def forever() -> str:
        await anyio.sleep(60)
        return "never"

    server.queue(json_reply(200, tool_call_completion(("c1", "forever", {}))))
    async with (
        openai(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, tools=[forever]) as pipe,
    ):
        with anyio.move_on_after(0.5) as scope:
            await pipe.execute("s1", "user", "go")
        assert scope.cancelled_caught
        assert roles(await store.load("s1")) == ["user", "assistant"]


async def test_max_tool_rounds_then_a_final_answer_without_tools(server: LoopbackServer) -> None:
    calls = 0

    def again() -> str:
        nonlocal calls
        calls += 1
        return "more"

    server.queue(
        json_reply(200, tool_call_completion(("c1", "again", {}))),
        json_reply(200, tool_call_completion(("c2", "again", {}))),
        json_reply(200, completion("Giving up.")),
    )
    async with (
        openai(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, tools=[again], max_tool_rounds=2) as pipe,
    ):
        result = await pipe.execute("s1", "user", "loop")
        state = await store.get("s1")
    assert calls == 2
    assert len(server.requests) == 3
    assert "tool_choice" not in server.requests[1].json()
    assert server.requests[2].json()["tool_choice"] == "none"
    assert result.response.content == "Giving up."
    assert roles(state.messages) == ["user", "assistant", "tool", "assistant", "tool", "assistant"]


async def test_tool_loop_with_mock_provider_and_custom_middleware() -> None:
    replies: list[str | Message] = [
        Message("assistant", "", tool_calls=(ToolCall("c1", "add", '{"a": 2, "b": 3}'),)),
        "The sum is 5.",
    ]

    def add(a: int, b: int) -> int:
        return a + b

    mock = MockProvider(replies)
    stages: list[Middleware] = [
        LoadState(),
        ToolLoop([add], max_rounds=1),
        CallProvider(),
        SaveState(),
    ]
    async with MemoryStore() as store, Pipeline(mock, store=store, middleware=stages) as pipe:
        result = await pipe.execute("s1", "user", "2+3?")
        state = await store.get("s1")
    assert result.response.content == "The sum is 5."
    assert state.messages[2].content == "5"
    assert mock.last_messages[-1].content == "5"


def test_tools_need_a_call_provider_stage() -> None:
    def f() -> None:
        return None

    with pytest.raises(ValidationError, match="CallProvider"):
        Pipeline(MockProvider(["x"]), middleware=[LoadState()], tools=[f])
    with pytest.raises(ValidationError, match="max_tool_rounds"):
        Pipeline(MockProvider(["x"]), tools=[f], max_tool_rounds=-1)
    with pytest.raises(ValidationError, match="not both"):
        Pipeline(MockProvider(["x"]), middleware=[ToolLoop([f]), CallProvider()], tools=[f])


async def test_timeout_through_the_pipeline(server: LoopbackServer) -> None:
    server.queue(hang())
    async with (
        openai(server, timeout=0.2, max_retries=0) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store) as pipe,
    ):
        with pytest.raises(ProviderError, match="timed out"):
            await pipe.execute("s1", "user", "hi")
        assert await store.load("s1") == []


def streamed_tool_call(call_id: str, name: str, arguments: str) -> list[str]:
    half = len(arguments) // 2
    return openai_sse(
        [
            chunk({"content": "Checking. "}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": arguments[:half]},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}),
            chunk({}, finish="tool_calls"),
            usage_chunk(40, 8),
        ]
    )


async def test_openai_streamed_tool_loop(server: LoopbackServer) -> None:
    def double(n: int) -> int:
        return n * 2

    server.queue(
        sse_reply(streamed_tool_call("c1", "double", '{"n": 21}')),
        sse_reply(openai_sse([chunk({"content": "It is 42."}, finish="stop"), usage_chunk(60, 5)])),
    )
    async with (
        openai(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, tools=[double]) as pipe,
    ):
        chunks = await drain(pipe.stream("s1", "user", "double 21"))
        state = await store.get("s1")
    assert "".join(c.text for c in chunks) == "Checking. It is 42."
    assert chunks[-1].usage == Usage(100, 13)
    expected = (100 * OPENAI_IN + 13 * OPENAI_OUT) / 1e6
    assert chunks[-1].cost == pytest.approx(expected)
    assert state.total_cost == pytest.approx(expected)
    assert roles(state.messages) == ["user", "assistant", "tool", "assistant"]
    assert state.messages[1].tool_calls == (ToolCall("c1", "double", '{"n": 21}'),)
    assert state.messages[2].content == "42"


async def test_stream_cut_in_the_second_round_keeps_the_first(server: LoopbackServer) -> None:
    def double(n: int) -> int:
        return n * 2

    server.queue(
        sse_reply(streamed_tool_call("c1", "double", '{"n": 21}')),
        sse_reply(openai_sse([chunk({"content": "It is"})], done=False), cut=True),
    )
    async with (
        openai(server) as llm,
        MemoryStore() as store,
        Pipeline(llm, store=store, tools=[double]) as pipe,
    ):
        with pytest.raises(ProviderError):
            await drain(pipe.stream("s1", "user", "double 21"))
        kept = await store.load("s1")
    assert roles(kept) == ["user", "assistant"]
    assert kept[1].content == "Checking. "


async def test_finished_rounds_survive_in_a_durable_store(
    server: LoopbackServer, tmp_path: Path
) -> None:
    def lookup(order_id: str) -> str:
        return f"order {order_id} shipped"

    path = tmp_path / "state.db"
    server.queue(
        json_reply(200, tool_call_completion(("c1", "lookup", {"order_id": "7"}))),
        json_reply(200, tool_call_completion(("c2", "lookup", {"order_id": "8"}))),
        json_reply(500, {"error": {"message": "gone", "type": "server_error"}}),
    )
    async with (
        openai(server, max_retries=0) as llm,
        SQLiteStore(path) as store,
        Pipeline(llm, store=store, tools=[lookup]) as pipe,
    ):
        with pytest.raises(ProviderError):
            await pipe.execute("s1", "user", "Where are 7 and 8?")
    async with SQLiteStore(path) as reopened:
        state = await reopened.get("s1")
    assert roles(state.messages) == ["user", "assistant", "tool", "assistant"]
    assert state.messages[2].content == "order 7 shipped"
    assert state.total_cost == pytest.approx(2 * (50 * OPENAI_IN + 10 * OPENAI_OUT) / 1e6)

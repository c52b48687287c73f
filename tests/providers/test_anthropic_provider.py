"""AnthropicProvider against a real HTTP server on 127.0.0.1 speaking the messages API."""

from __future__ import annotations

import json
import traceback
from typing import Any

import httpx
import pytest

from promptstate import ClosedError, Message, ProviderError, ToolCall, Usage, ValidationError
from promptstate.providers import AnthropicProvider, Chunk, Provider
from promptstate.tools import Tool
from tests.providers.loopback import (
    LoopbackServer,
    anthropic_sse,
    drain,
    hang,
    json_reply,
    sse_reply,
)

pytestmark = pytest.mark.anyio

KEY = "sk-ant-api03-SECRET-abcdef0123456789"


def message_doc(
    content: list[dict[str, Any]] | None = None,
    *,
    stop: str = "end_turn",
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content if content is not None else [{"type": "text", "text": "Hi there"}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 20, "output_tokens": 10},
    }


def make(server: LoopbackServer, **kwargs: Any) -> AnthropicProvider:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("backoff", 0.01)
    return AnthropicProvider(
        kwargs.pop("model", "claude-sonnet-4-5"), base_url=server.url, **kwargs
    )


def lookup(order_id: str) -> str:
    """Look up an order.

    Args:
        order_id: The order's id.
    """
    return "shipped"


def assert_no_key(error: BaseException) -> None:
    for text in (str(error), repr(error), "".join(traceback.format_exception(error))):
        assert KEY not in text


async def test_complete_sends_the_published_request_shape(server: LoopbackServer) -> None:
    server.queue(json_reply(200, message_doc()))
    history = [
        Message("system", "You are terse."),
        Message("user", "Where is order 7?"),
        Message(
            "assistant",
            "Checking.",
            tool_calls=(
                ToolCall("toolu_1", "lookup", '{"order_id": "7"}'),
                ToolCall("toolu_2", "lookup", '{"order_id": "8"}'),
            ),
        ),
        Message("tool", "shipped", tool_call_id="toolu_1", name="lookup"),
        Message(
            "tool",
            "Error: boom",
            tool_call_id="toolu_2",
            name="lookup",
            metadata={"is_error": True},
        ),
        Message("user", "Thanks"),
        Message("system", "Answer in English."),
    ]
    async with make(server) as provider:
        result = await provider.complete(
            history, temperature=0.5, top_p=0.8, stop="END", tools=[lookup], tool_choice="required"
        )
    (request,) = server.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.json() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "You are terse.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": "Where is order 7?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "lookup",
                        "input": {"order_id": "7"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "lookup",
                        "input": {"order_id": "8"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "shipped"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": "Error: boom",
                        "is_error": True,
                    },
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
        "temperature": 0.5,
        "top_p": 0.8,
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "lookup",
                "description": "Look up an order.",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "order_id": {"type": "string", "description": "The order's id."}
                    },
                    "required": ["order_id"],
                },
            }
        ],
        "tool_choice": {"type": "any"},
    }
    assert result.message.content == "Hi there"
    assert result.usage == Usage(20, 10)
    assert result.finish_reason == "stop"
    assert result.model == "claude-sonnet-4-5-20250929"
    assert result.cost == pytest.approx((20 * 3.0 + 10 * 15.0) / 1e6)


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("lookup", {"type": "tool", "name": "lookup"}),
        (
            {"type": "any", "disable_parallel_tool_use": True},
            {"type": "any", "disable_parallel_tool_use": True},
        ),
    ],
)
def test_tool_choice_mapping(choice: Any, wire: Any) -> None:
    provider = AnthropicProvider("claude-3-5-haiku", base_url="http://127.0.0.1:1")
    body = provider.build_body([Message("user", "x")], {"tool_choice": choice}, stream=False)
    assert body["tool_choice"] == wire


def test_openai_style_tool_specs_are_converted() -> None:
    provider = AnthropicProvider("claude-3-5-haiku", base_url="http://127.0.0.1:1")
    spec = {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
    }
    native = {"name": "g", "input_schema": {"type": "object"}}
    body = provider.build_body(
        [Message("user", "x")], {"tools": [spec, native, Tool("h")], "max_tokens": 10}, stream=True
    )
    assert body["tools"] == [
        {"name": "f", "description": "d", "input_schema": {"type": "object"}},
        {"name": "g", "input_schema": {"type": "object"}},
        {"name": "h", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["max_tokens"] == 10
    assert body["stream"] is True


@pytest.mark.parametrize("option", ["seed", "response_format"])
async def test_openai_only_options_are_refused_before_sending(
    server: LoopbackServer, option: str
) -> None:
    async with make(server) as provider:
        with pytest.raises(ValidationError, match=option):
            await provider.complete([Message("user", "x")], **{option: 1})
    assert server.requests == []


async def test_response_with_tool_use(server: LoopbackServer) -> None:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {"order_id": "7"}},
    ]
    usage = {
        "input_tokens": 100,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 2000,
        "output_tokens": 50,
    }
    server.queue(json_reply(200, message_doc(content, stop="tool_use", usage=usage)))
    async with make(server) as provider:
        result = await provider.complete([Message("user", "where?")], tools=[lookup])
    assert result.finish_reason == "tool_calls"
    assert result.message.content == "Let me look."
    assert result.message.tool_calls == (ToolCall("toolu_9", "lookup", '{"order_id":"7"}'),)
    assert result.usage == Usage(3100, 50)
    expected = (100 * 3.0 + 1000 * 3.75 + 2000 * 0.3 + 50 * 15.0) / 1e6
    assert result.cost == pytest.approx(expected)


def stream_events(*, tool: bool = True) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-5",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 25, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
    ]
    if tool:
        events += [
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "lookup",
                    "input": {},
                },
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"order_'},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'id": "7"}'},
            },
            {"type": "content_block_stop", "index": 1},
        ]
    events += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
        {"type": "message_stop"},
    ]
    return events


async def test_stream_text_tool_use_and_usage(server: LoopbackServer) -> None:
    server.queue(sse_reply(anthropic_sse(stream_events())))
    async with make(server) as provider:
        assert isinstance(provider, Provider)
        chunks = [c async for c in provider.stream([Message("user", "hi")], max_tokens=99)]
    body = server.requests[0].json()
    assert body["stream"] is True
    assert body["max_tokens"] == 99
    assert [c.text for c in chunks[:-1]] == ["Hel", "lo"]
    last = chunks[-1]
    assert last.done
    assert last.finish_reason == "tool_calls"
    assert last.usage == Usage(25, 15)
    assert last.cost == pytest.approx((25 * 3.0 + 15 * 15.0) / 1e6)
    assert last.tool_calls == (ToolCall("toolu_1", "lookup", '{"order_id": "7"}'),)
    assert last.message is not None
    assert last.message.content == "Hello"
    assert last.message.tool_calls == last.tool_calls


async def test_stream_tool_use_without_input_deltas_gets_empty_object(
    server: LoopbackServer,
) -> None:
    events = [
        e
        for e in stream_events()
        if not (e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta")
    ]
    server.queue(sse_reply(anthropic_sse(events)))
    async with make(server) as provider:
        chunks = [c async for c in provider.stream([Message("user", "hi")])]
    assert chunks[-1].tool_calls == (ToolCall("toolu_1", "lookup", "{}"),)


async def test_error_event_in_stream(server: LoopbackServer) -> None:
    events = [
        *stream_events(tool=False)[:4],
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    server.queue(sse_reply(anthropic_sse(events)))
    received: list[Chunk] = []
    async with make(server) as provider:
        with pytest.raises(ProviderError, match="Overloaded") as info:
            await drain(provider.stream([Message("user", "hi")]), received)
    assert info.value.retryable is True
    assert [c.text for c in received] == ["Hel"]
    assert len(server.requests) == 1


async def test_connection_cut_mid_stream(server: LoopbackServer) -> None:
    server.queue(sse_reply(anthropic_sse(stream_events()[:5]), cut=True))
    async with make(server) as provider:
        with pytest.raises(ProviderError) as info:
            await drain(provider.stream([Message("user", "hi")]))
    assert_no_key(info.value)


async def test_stream_without_message_stop(server: LoopbackServer) -> None:
    server.queue(sse_reply(anthropic_sse(stream_events()[:-1]), chunked=False))
    async with make(server) as provider:
        with pytest.raises(ProviderError, match="message_stop"):
            await drain(provider.stream([Message("user", "hi")]))


async def test_529_overloaded_is_retried(server: LoopbackServer) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    server.queue(json_reply(529, overloaded), json_reply(200, message_doc()))
    async with make(server) as provider:
        result = await provider.complete([Message("user", "hi")])
    assert result.message.content == "Hi there"
    assert len(server.requests) == 2


async def test_401_is_not_retried_and_hides_the_key(server: LoopbackServer) -> None:
    error_doc = {
        "type": "error",
        "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"},
    }
    server.queue(json_reply(401, error_doc), json_reply(200, message_doc()))
    async with make(server) as provider:
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message("user", "hi")])
        assert KEY not in repr(provider)
        assert KEY not in repr(vars(provider))
        assert KEY not in repr(provider._client.headers)
    assert len(server.requests) == 1
    assert info.value.status_code == 401
    assert info.value.retryable is False
    assert "authentication_error" in info.value.message
    assert_no_key(info.value)


async def test_timeout_is_a_provider_error(server: LoopbackServer) -> None:
    server.queue(hang())
    async with make(server, timeout=httpx.Timeout(0.2), max_retries=0) as provider:
        with pytest.raises(ProviderError, match="timed out"):
            await provider.complete([Message("user", "hi")])


async def test_key_from_environment_and_missing_key(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    server.queue(json_reply(200, message_doc()))
    async with AnthropicProvider("claude-3-5-haiku", base_url=server.url) as provider:
        await provider.complete([Message("user", "hi")])
    assert server.requests[0].headers["x-api-key"] == KEY
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(ValidationError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider("claude-3-5-haiku")
    with pytest.raises(ValidationError, match="max_tokens"):
        AnthropicProvider("claude-3-5-haiku", api_key=KEY, max_tokens=0)


async def test_use_after_close(server: LoopbackServer) -> None:
    provider = make(server)
    async with provider:
        pass
    with pytest.raises(ClosedError):
        await provider.complete([Message("user", "hi")])
    assert server.requests == []


async def test_invalid_stored_tool_arguments_are_sent_as_empty_object(
    server: LoopbackServer,
) -> None:
    server.queue(json_reply(200, message_doc()))
    history = [
        Message("user", "x"),
        Message("assistant", "", tool_calls=(ToolCall("t1", "lookup", "not json"),)),
        Message("tool", "r", tool_call_id="t1"),
    ]
    async with make(server) as provider:
        await provider.complete(history)
    sent = server.requests[0].json()["messages"][1]["content"]
    assert sent == [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}]
    assert json.loads(server.requests[0].body)["messages"][2]["content"][0]["tool_use_id"] == "t1"

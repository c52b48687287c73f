"""OpenAIProvider against a real HTTP server on 127.0.0.1 speaking chat completions."""

from __future__ import annotations

import json
import logging
import pickle
import time
import traceback
from typing import Any, Literal

import anyio
import httpx
import pytest

from promptstate import ClosedError, Message, ProviderError, ToolCall, Usage, ValidationError
from promptstate.providers import Chunk, OpenAIProvider, Price, Provider
from tests.providers.loopback import (
    LoopbackServer,
    drain,
    drop,
    hang,
    json_reply,
    openai_sse,
    sse_reply,
    truncated,
)

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-0123456789abcdef"


def completion(
    content: str | None = "Hello!",
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str = "stop",
    usage: tuple[int, int] = (12, 5),
    model: str = "gpt-4o-mini-2024-07-18",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
        **extra,
    }


def usage_chunk(prompt: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }


def make(server: LoopbackServer, **kwargs: Any) -> OpenAIProvider:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("backoff", 0.01)
    return OpenAIProvider(kwargs.pop("model", "gpt-4o-mini"), base_url=server.url + "/v1", **kwargs)


def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    """The weather in a city.

    Args:
        city: The city's name.
        unit: Temperature unit.
    """
    return f"20 {unit} in {city}"


def assert_no_key(error: BaseException) -> None:
    texts = [str(error), repr(error), *map(str, error.args)]
    texts.append("".join(traceback.format_exception(error)))
    for text in texts:
        assert KEY not in text


async def test_complete_sends_the_published_request_shape(server: LoopbackServer) -> None:
    server.queue(json_reply(200, completion()))
    history = [
        Message("system", "Be brief."),
        Message("user", "Weather in Paris?", name="alice"),
        Message(
            "assistant",
            "",
            tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),),
        ),
        Message("tool", "20 C in Paris", tool_call_id="call_1", name="get_weather"),
    ]
    async with make(server) as provider:
        result = await provider.complete(
            history,
            temperature=0.2,
            max_tokens=50,
            top_p=0.9,
            stop=["\n\n"],
            seed=7,
            response_format={"type": "json_object"},
            tools=[get_weather],
            tool_choice="get_weather",
            frequency_penalty=None,
        )
    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?", "name": "alice"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "20 C in Paris"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "response_format": {"type": "json_object"},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "description": "The city's name."},
                            "unit": {
                                "enum": ["C", "F"],
                                "default": "C",
                                "description": "Temperature unit.",
                            },
                        },
                        "required": ["city"],
                    },
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    assert result.message.role == "assistant"
    assert result.message.content == "Hello!"
    assert result.usage == Usage(12, 5)
    assert result.finish_reason == "stop"
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert result.cost == pytest.approx((12 * 0.15 + 5 * 0.60) / 1e6)


async def test_response_with_tool_calls(server: LoopbackServer) -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    server.queue(json_reply(200, completion(None, tool_calls=calls, finish="tool_calls")))
    async with make(server) as provider:
        result = await provider.complete([Message("user", "go")], tools=[get_weather])
    assert result.finish_reason == "tool_calls"
    assert result.message.content == ""
    assert result.message.tool_calls == (
        ToolCall("call_a", "f", '{"x":1}'),
        ToolCall("call_b", "g", "{}"),
    )


def test_official_api_gets_max_completion_tokens_and_local_servers_max_tokens() -> None:
    official = OpenAIProvider("o3", api_key=KEY)
    local = OpenAIProvider("llama", base_url="http://127.0.0.1:1/v1")
    messages = [Message("user", "hi")]
    assert (
        official.build_body(messages, {"max_tokens": 9}, stream=False)["max_completion_tokens"] == 9
    )
    assert local.build_body(messages, {"max_tokens": 9}, stream=False)["max_tokens"] == 9
    forced = OpenAIProvider("x", base_url="http://127.0.0.1:1", max_tokens_field="n_predict")
    assert forced.build_body(messages, {"max_tokens": 3}, stream=False)["n_predict"] == 3


async def test_stream_text_tool_call_deltas_and_usage(server: LoopbackServer) -> None:
    server.queue(
        sse_reply(
            openai_sse(
                [
                    chunk({"role": "assistant", "content": ""}),
                    chunk({"content": "Let me "}),
                    chunk({"content": "check."}),
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""},
                                }
                            ]
                        }
                    ),
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": 1,
                                    "id": "call_2",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city"'},
                                }
                            ]
                        }
                    ),
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]}),
                    chunk({"tool_calls": [{"index": 1, "function": {"arguments": ':"Rome"}'}}]}),
                    chunk({}, finish="tool_calls"),
                    usage_chunk(30, 20),
                ]
            )
        )
    )
    async with make(server) as provider:
        assert isinstance(provider, Provider)
        chunks = [c async for c in provider.stream([Message("user", "weather?")], tools=[])]
    body = server.requests[0].json()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "tools" not in body
    assert [c.text for c in chunks[:-1]] == ["Let me ", "check."]
    assert not any(c.done for c in chunks[:-1])
    last = chunks[-1]
    assert last.done
    assert last.finish_reason == "tool_calls"
    assert last.usage == Usage(30, 20)
    assert last.cost == pytest.approx((30 * 0.15 + 20 * 0.60) / 1e6)
    expected = (
        ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),
        ToolCall("call_2", "get_weather", '{"city":"Rome"}'),
    )
    assert last.tool_calls == expected
    assert last.message is not None
    assert last.message.content == "Let me check."
    assert last.message.tool_calls == expected


async def test_stream_options_can_be_turned_off(server: LoopbackServer) -> None:
    server.queue(sse_reply(openai_sse([chunk({"content": "x"}, finish="stop")])))
    async with make(server) as provider:
        chunks = [c async for c in provider.stream([Message("user", "hi")], stream_options=None)]
    assert "stream_options" not in server.requests[0].json()
    # No usage from the server: counted here (HeuristicTokenCounter), marked, and priced.
    assert chunks[-1].usage == Usage(5, 5, estimated=True)
    assert chunks[-1].cost == pytest.approx((5 * 0.15 + 5 * 0.60) / 1e6)
    assert chunks[-1].message == Message(
        "assistant",
        "x",
        timestamp=chunks[-1].message.timestamp,  # type: ignore[union-attr]
    )


async def test_keyless_local_server_sends_no_authorization(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.queue(json_reply(200, completion()))
    async with OpenAIProvider("llama3", base_url=server.url + "/v1") as provider:
        await provider.complete([Message("user", "hi")])
    assert "authorization" not in server.requests[0].headers


async def test_key_from_environment(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.queue(json_reply(200, completion()))
    async with OpenAIProvider("gpt-4o", base_url=server.url + "/v1") as provider:
        await provider.complete([Message("user", "hi")])
        assert KEY not in repr(provider)
        assert KEY not in repr(vars(provider))
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_no_key_for_the_official_api_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        OpenAIProvider("gpt-4o")


async def test_429_then_success_honours_retry_after(server: LoopbackServer) -> None:
    server.queue(
        json_reply(
            429, {"error": {"message": "Rate limit", "type": "rate_limit"}}, {"retry-after": "0.4"}
        ),
        json_reply(200, completion("after wait")),
    )
    # The backoff alone would be 5 ms; only Retry-After makes it wait 0.4 s.
    async with make(server, backoff=0.005, max_backoff=0.005) as provider:
        started = time.monotonic()
        result = await provider.complete([Message("user", "hi")])
        elapsed = time.monotonic() - started
    assert result.message.content == "after wait"
    assert len(server.requests) == 2
    assert elapsed >= 0.38


async def test_retry_after_ms_is_preferred(server: LoopbackServer) -> None:
    server.queue(
        json_reply(
            429, {"error": {"message": "slow down"}}, {"retry-after-ms": "250", "retry-after": "30"}
        ),
        json_reply(200, completion()),
    )
    async with make(server) as provider:
        started = time.monotonic()
        await provider.complete([Message("user", "hi")])
        assert time.monotonic() - started >= 0.24
    assert len(server.requests) == 2


async def test_5xx_retried_until_max_retries_then_error(server: LoopbackServer) -> None:
    for _ in range(3):
        server.queue(json_reply(503, {"error": {"message": "overloaded", "type": "server_error"}}))
    async with make(server, max_retries=2) as provider:
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message("user", "hi")])
    assert len(server.requests) == 3
    assert info.value.status_code == 503
    assert info.value.retryable is True
    assert "overloaded" in info.value.message


@pytest.mark.parametrize("status", [408, 409, 500, 502])
async def test_retryable_statuses(server: LoopbackServer, status: int) -> None:
    server.queue(
        json_reply(status, {"error": {"message": "try again"}}), json_reply(200, completion())
    )
    async with make(server) as provider:
        result = await provider.complete([Message("user", "hi")])
    assert result.message.content == "Hello!"
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_other_4xx_are_not_retried(server: LoopbackServer, status: int) -> None:
    body = {
        "error": {
            "message": f"Incorrect API key provided: {KEY}.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    server.queue(json_reply(status, body), json_reply(200, completion()))
    async with make(server) as provider:
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message("user", "hi")])
        assert KEY not in repr(provider)
    assert len(server.requests) == 1
    error = info.value
    assert error.status_code == status
    assert error.retryable is False
    assert "Incorrect API key provided" in error.message
    assert "invalid_request_error" in error.message
    assert_no_key(error)
    assert_no_key(pickle.loads(pickle.dumps(error)))


async def test_connection_dropped_then_success(server: LoopbackServer) -> None:
    server.queue(drop(), json_reply(200, completion("second try")))
    async with make(server) as provider:
        result = await provider.complete([Message("user", "hi")])
    assert result.message.content == "second try"
    assert len(server.requests) == 2


async def test_connection_refused_is_a_retryable_provider_error() -> None:
    provider = OpenAIProvider("m", base_url="http://127.0.0.1:9/v1", api_key=KEY, backoff=0.001)
    async with provider:
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message("user", "hi")])
    assert info.value.retryable is True
    assert info.value.status_code is None
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert_no_key(info.value)


async def test_timeout(server: LoopbackServer) -> None:
    server.queue(hang(), hang())
    async with make(server, timeout=0.2, max_retries=1) as provider:
        with pytest.raises(ProviderError, match="timed out") as info:
            await provider.complete([Message("user", "hi")])
    assert info.value.retryable is True
    assert len(server.requests) == 2
    assert_no_key(info.value)


async def test_connection_cut_mid_stream(server: LoopbackServer) -> None:
    events = openai_sse([chunk({"content": "Hel"}), chunk({"content": "lo"})], done=False)
    server.queue(sse_reply(events, cut=True))
    received: list[Chunk] = []
    async with make(server) as provider:
        with pytest.raises(ProviderError, match="interrupted") as info:
            await drain(provider.stream([Message("user", "hi")]), received)
    assert [c.text for c in received] == ["Hel", "lo"]
    assert not any(c.done for c in received)
    assert len(server.requests) == 1  # a stream that started is never re-sent
    assert_no_key(info.value)


async def test_stream_closed_before_the_end(server: LoopbackServer) -> None:
    events = openai_sse([chunk({"content": "Hel"})], done=False)
    server.queue(sse_reply(events, chunked=False))
    async with make(server) as provider:
        with pytest.raises(ProviderError, match="before the answer was complete"):
            await drain(provider.stream([Message("user", "hi")]))


async def test_error_event_in_stream(server: LoopbackServer) -> None:
    events = openai_sse(
        [chunk({"content": "a"}), {"error": {"message": "model crashed", "type": "server_error"}}],
        done=False,
    )
    server.queue(sse_reply(events))
    async with make(server) as provider:
        with pytest.raises(ProviderError, match="model crashed"):
            await drain(provider.stream([Message("user", "hi")]))


async def test_stream_request_retried_before_first_byte(server: LoopbackServer) -> None:
    server.queue(
        json_reply(429, {"error": {"message": "busy"}}, {"retry-after": "0"}),
        sse_reply(openai_sse([chunk({"content": "ok"}, finish="stop"), usage_chunk(1, 1)])),
    )
    async with make(server) as provider:
        chunks = [c async for c in provider.stream([Message("user", "hi")])]
    assert "".join(c.text for c in chunks) == "ok"
    assert len(server.requests) == 2


async def test_stream_401_raises_before_any_chunk(server: LoopbackServer) -> None:
    server.queue(json_reply(401, {"error": {"message": "bad key", "type": "auth"}}))
    async with make(server) as provider:
        received: list[Chunk] = []
        with pytest.raises(ProviderError) as info:
            await drain(provider.stream([Message("user", "hi")]), received)
    assert received == []
    assert info.value.status_code == 401
    assert len(server.requests) == 1


async def test_non_json_error_body(server: LoopbackServer) -> None:
    server.queue(json_reply(502, b"<html>Bad gateway</html>"))
    async with make(server, max_retries=0) as provider:
        with pytest.raises(ProviderError, match="Bad gateway") as info:
            await provider.complete([Message("user", "hi")])
    assert info.value.status_code == 502


async def test_invalid_json_success_body(server: LoopbackServer) -> None:
    server.queue(json_reply(200, b"not json"))
    async with make(server) as provider:
        with pytest.raises(ProviderError, match="not valid JSON"):
            await provider.complete([Message("user", "hi")])


async def test_use_after_close_raises_closed_error(server: LoopbackServer) -> None:
    provider = make(server)
    await provider.aclose()
    await provider.aclose()  # idempotent
    assert provider.closed
    with pytest.raises(ClosedError):
        await provider.complete([Message("user", "hi")])
    with pytest.raises(ClosedError):
        await drain(provider.stream([Message("user", "hi")]))
    with pytest.raises(ClosedError):
        async with provider:
            pass
    assert server.requests == []


async def test_borrowed_client_is_not_closed(server: LoopbackServer) -> None:
    server.queue(json_reply(200, completion()), json_reply(200, completion()))
    async with httpx.AsyncClient() as client:
        async with make(server, http_client=client) as provider:
            await provider.complete([Message("user", "hi")])
        assert not client.is_closed
        # the key travels per request, never in the borrowed client's headers
        assert "authorization" not in client.headers
        async with make(server, http_client=client) as again:
            await again.complete([Message("user", "hi")])
    assert server.requests[1].headers["authorization"] == f"Bearer {KEY}"


async def test_owned_client_is_closed(server: LoopbackServer) -> None:
    provider = make(server)
    client = provider._client
    await provider.aclose()
    assert client.is_closed


async def test_unknown_model_costs_nothing_and_prices_override(server: LoopbackServer) -> None:
    server.queue(json_reply(200, completion()), json_reply(200, completion()))
    async with make(server, model="my-local-model") as provider:
        result = await provider.complete([Message("user", "hi")])
    assert result.cost == 0.0
    async with make(server, model="my-local-model", prices={"my-local-model": (1.0, 2.0)}) as p:
        result = await p.complete([Message("user", "hi")])
    assert result.cost == pytest.approx((12 * 1.0 + 5 * 2.0) / 1e6)
    assert isinstance(p._price, Price)


async def test_tool_message_without_call_id_is_rejected(server: LoopbackServer) -> None:
    async with make(server) as provider:
        with pytest.raises(ValidationError, match="tool_call_id"):
            await provider.complete([Message("tool", "x")])
    assert server.requests == []


async def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValidationError):
        OpenAIProvider("", api_key=KEY)
    with pytest.raises(ValidationError):
        OpenAIProvider("m", api_key=KEY, max_retries=-1)
    with pytest.raises(ValidationError, match="timeout"):
        OpenAIProvider("m", api_key=KEY, timeout=0)
    with pytest.raises(ValidationError, match="timeout"):
        OpenAIProvider("m", api_key=KEY, timeout="30")  # type: ignore[arg-type]


async def test_request_body_is_valid_json_with_unicode(server: LoopbackServer) -> None:
    server.queue(json_reply(200, completion("ünïcødé ✓")))
    async with make(server) as provider:
        result = await provider.complete([Message("user", "héllo ☃")])
    assert server.requests[0].json()["messages"][0]["content"] == "héllo ☃"
    assert result.message.content == "ünïcødé ✓"
    assert json.loads(server.requests[0].body)  # plain JSON on the wire


def test_interrupted_tool_call_in_history_is_answered_in_the_request() -> None:
    provider = OpenAIProvider("m", base_url="http://127.0.0.1:1/v1")
    history = [
        Message("user", "hi"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "f", "{}"),)),
        Message("user", "still there?"),
    ]
    sent = provider.build_body(history, {}, stream=False)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[2]["tool_call_id"] == "c1"


async def test_stream_parallel_calls_at_one_index_told_apart_by_id(server: LoopbackServer) -> None:
    def whole(call_id: str, city: str) -> dict[str, Any]:
        return {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }

    server.queue(
        sse_reply(
            openai_sse(
                [
                    chunk({"tool_calls": [whole("call_x", "Oslo")]}),
                    chunk({"tool_calls": [whole("call_y", "Rome")]}),
                    chunk({}, finish="tool_calls"),
                ]
            )
        )
    )
    async with make(server) as provider:
        chunks = await drain(provider.stream([Message("user", "weather?")]))
    assert chunks[-1].tool_calls == (
        ToolCall("call_x", "get_weather", '{"city": "Oslo"}'),
        ToolCall("call_y", "get_weather", '{"city": "Rome"}'),
    )


async def test_logs_never_contain_the_key(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"bad key {KEY}", "type": "server_error"}}
    server.queue(json_reply(500, echo), json_reply(401, echo))
    async with make(server) as provider:
        with pytest.raises(ProviderError):
            await provider.complete([Message("user", "hi")])
    assert "retrying" in caplog.text
    assert KEY not in caplog.text


async def test_body_cut_short_is_retried(server: LoopbackServer) -> None:
    server.queue(truncated(), json_reply(200, completion("whole")))
    async with make(server) as provider:
        result = await provider.complete([Message("user", "hi")])
    assert result.message.content == "whole"
    assert len(server.requests) == 2


async def test_body_cut_short_without_retries_is_a_provider_error(server: LoopbackServer) -> None:
    server.queue(truncated())
    async with make(server, max_retries=0) as provider:
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message("user", "hi")])
    assert info.value.retryable is True


async def test_borrowed_client_closed_by_its_owner(server: LoopbackServer) -> None:
    client = httpx.AsyncClient()
    provider = make(server, http_client=client)
    await client.aclose()
    with pytest.raises(ClosedError):
        await provider.complete([Message("user", "hi")])
    await provider.aclose()


async def test_stream_stalling_longer_than_the_timeout(server: LoopbackServer) -> None:
    events = openai_sse([chunk({"content": "a"}), chunk({"content": "b"}, finish="stop")])
    server.queue(sse_reply(events, pause=2.0))
    received: list[Chunk] = []
    async with make(server, timeout=0.3) as provider:
        with pytest.raises(ProviderError, match="ReadTimeout"):
            await drain(provider.stream([Message("user", "hi")]), received)
    assert [c.text for c in received] == ["a"]


async def test_an_option_that_is_not_json_is_a_validation_error(server: LoopbackServer) -> None:
    async with make(server) as provider:
        with pytest.raises(ValidationError, match="not JSON"):
            await provider.complete([Message("user", "hi")], metadata={"when": object()})
    assert server.requests == []


async def test_key_whitespace_is_stripped_and_bad_keys_refused(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.queue(json_reply(200, completion()))
    async with make(server, api_key=f"  {KEY}\n") as provider:
        await provider.complete([Message("user", "hi")])
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    for bad in (f"{KEY}\nX-Evil: 1", f"{KEY} more", f"{KEY}\x00"):
        with pytest.raises(ValidationError) as info:
            make(server, api_key=bad)
        assert KEY not in str(info.value)
    monkeypatch.setenv("OPENAI_API_KEY", f"{KEY}\tx")
    with pytest.raises(ValidationError, match="OPENAI_API_KEY") as info:
        OpenAIProvider("gpt-4o")
    assert KEY not in str(info.value)


async def test_concurrent_requests_share_one_client(server: LoopbackServer) -> None:
    for i in range(20):
        server.queue(json_reply(200, completion(f"answer {i}")))
    answers: list[str] = []
    async with make(server) as provider:
        client = provider._client

        async def ask(i: int) -> None:
            result = await provider.complete([Message("user", f"q{i}")])
            answers.append(result.message.content)

        async with anyio.create_task_group() as group:
            for i in range(20):
                group.start_soon(ask, i)
        assert provider._client is client
    assert sorted(answers) == sorted(f"answer {i}" for i in range(20))
    assert len(server.requests) == 20

"""A server that answers in the wrong shape gets a ProviderError, never a bare Python error."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from promptstate import AnthropicProvider, Message, OpenAIProvider, ProviderError
from tests.providers.loopback import LoopbackServer, json_reply, sse_reply

pytestmark = pytest.mark.anyio

OPENAI_BODIES: list[Any] = [
    {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "x"}},
    {"choices": [{"message": {"content": 5}}]},
    {"choices": [{"message": {"content": ["part"]}}]},
    {"choices": [{"message": "hi"}]},
    {"choices": [{"message": {"content": "", "tool_calls": ["call"]}}]},
    {"choices": [{"message": {"content": "", "tool_calls": [{"function": "f"}]}}]},
]
ANTHROPIC_BODIES: list[Any] = [
    {"content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": "x"}},
    {"content": [{"type": "text", "text": "hi"}], "usage": {"output_tokens": [1]}},
]
OPENAI_STREAMS: list[list[Any]] = [
    [{"choices": [{"delta": {"content": 5}}]}, {"choices": [{"finish_reason": "stop"}]}],
    [{"choices": [{"delta": "text"}]}, {"choices": [{"finish_reason": "stop"}]}],
    [{"choices": [{"finish_reason": "stop"}], "usage": {"prompt_tokens": "x"}}],
]
ANTHROPIC_STREAMS: list[list[Any]] = [
    [
        {"type": "message_start", "message": {"usage": "x"}},
        {"type": "message_stop"},
    ],
    [
        {"type": "message_start", "message": {"usage": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}},
        {"type": "message_stop"},
    ],
]


def _client(body: bytes, content_type: str) -> httpx.AsyncClient:
    reply = httpx.Response(200, content=body, headers={"content-type": content_type})
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: reply))


def _sse(events: list[Any]) -> bytes:
    return b"".join(
        f"event: {e.get('type', 'message')}\ndata: {json.dumps(e)}\n\n".encode() for e in events
    )


def _json_body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("provider", "doc"),
    [("openai", d) for d in OPENAI_BODIES] + [("anthropic", d) for d in ANTHROPIC_BODIES],
)
async def test_malformed_completion_is_a_provider_error(provider: str, doc: Any) -> None:
    cls = OpenAIProvider if provider == "openai" else AnthropicProvider
    async with _client(_json_body(doc), "application/json") as http:
        p = cls("m", api_key="k", base_url="http://test", max_retries=0, http_client=http)
        with pytest.raises(ProviderError, match=r"malformed|no choices|content"):
            await p.complete([Message("user", "hi")])


@pytest.mark.parametrize(
    ("provider", "events"),
    [("openai", e) for e in OPENAI_STREAMS] + [("anthropic", e) for e in ANTHROPIC_STREAMS],
)
async def test_malformed_stream_is_a_provider_error(provider: str, events: list[Any]) -> None:
    cls = OpenAIProvider if provider == "openai" else AnthropicProvider
    async with _client(_sse(events), "text/event-stream") as http:
        p = cls("m", api_key="k", base_url="http://test", max_retries=0, http_client=http)
        with pytest.raises(ProviderError, match="malformed"):
            async for _ in p.stream([Message("user", "hi")]):
                pass


def test_a_password_in_base_url_is_not_in_the_repr() -> None:
    # A proxy URL with credentials was shown whole by repr().
    for cls in (OpenAIProvider, AnthropicProvider):
        p = cls("m", api_key="k", base_url="https://user:hunter2@proxy.internal/v1")
        assert "hunter2" not in repr(p)
        assert "user:***@proxy.internal" in repr(p)


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("cls", [OpenAIProvider, AnthropicProvider])
async def test_a_deep_provider_reply_is_a_provider_error(
    server: LoopbackServer, cls: type[OpenAIProvider] | type[AnthropicProvider]
) -> None:
    provider = cls("m", api_key="k", base_url=server.url, max_retries=0)
    try:
        server.queue(json_reply(200, DEEP_JSON))
        with pytest.raises(ProviderError, match="nested too deeply"):
            await provider.complete([Message("user", "hi")])
        server.queue(sse_reply([f"data: {DEEP_JSON.decode()}\n\n"]))
        with pytest.raises(ProviderError, match="nested too deeply"):
            async for _ in provider.stream([Message("user", "hi")]):
                pass
        server.queue(json_reply(400, b'{"error": ' + DEEP_JSON + b"}"))
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message("user", "hi")])
        assert info.value.status_code == 400
    finally:
        await provider.aclose()

"""The shared HTTP helpers: SSE parsing, Retry-After, secrets, error pickling."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from promptstate import ProviderError
from promptstate.providers._http import SSEEvent, iter_sse, parse_retry_after
from promptstate.redaction import Secret

pytestmark = pytest.mark.anyio


async def parse(body: bytes) -> list[SSEEvent]:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=body, headers={"content-type": "text/event-stream"}
        )
    )
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("GET", "http://test/") as response,
    ):
        return [e async for e in iter_sse(response)]


async def test_sse_parsing_follows_the_spec() -> None:
    body = (
        b": comment line\n"
        b"event: first\ndata: a\ndata:  b\n\n"
        b"data: one\r\n\r\n"
        b"id: 7\nretry: 10\ndata:no-space\n\n"
        b"event: empty\n\n"
        b"data: cut off without a blank line"
    )
    events = await parse(body)
    assert events == [
        SSEEvent("first", "a\n b"),
        SSEEvent("message", "one"),
        SSEEvent("message", "no-space"),
    ]


def test_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"retry-after": "1.5"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "-4"})) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None
    future = datetime.now(timezone.utc) + timedelta(seconds=30)
    waited = parse_retry_after(httpx.Headers({"retry-after": format_datetime(future, usegmt=True)}))
    assert waited is not None
    assert 25 <= waited <= 31


def test_secret_never_shows_itself() -> None:
    secret = Secret("sk-hidden")
    assert "sk-hidden" not in repr(secret)
    assert "sk-hidden" not in str(secret)
    assert "sk-hidden" not in f"{secret}"
    assert secret.reveal() == "sk-hidden"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_provider_error_round_trips_through_pickle() -> None:
    error = ProviderError("openai: HTTP 429: slow down", status_code=429, retryable=True)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.status_code, copy.retryable) == (error.message, 429, True)

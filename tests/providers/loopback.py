"""A real HTTP/1.1 server on 127.0.0.1 that speaks whatever the test scripts it to.

Each test queues replies (:func:`json_reply`, :func:`sse_reply`, :func:`hang`, :func:`drop`);
the server answers requests with them in order and records every request it received.
Replies close the connection after writing, so each request is a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Reply = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Status"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    """A whole JSON response."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def write(writer: asyncio.StreamWriter) -> None:
        head = {
            "content-type": "application/json",
            "content-length": str(len(data)),
            "connection": "close",
            **(headers or {}),
        }
        writer.write(_head(status, head) + data)
        await writer.drain()

    return write


def sse_reply(
    events: Iterable[str], *, cut: bool = False, chunked: bool = True, pause: float = 0.0
) -> Reply:
    """A ``text/event-stream`` response, one HTTP chunk per event.

    ``cut`` closes the connection after the events without ending the chunked body (a
    connection lost mid-stream); ``chunked=False`` sends a body delimited by closing.
    """
    items = list(events)

    async def write(writer: asyncio.StreamWriter) -> None:
        head = {"content-type": "text/event-stream", "connection": "close"}
        if chunked:
            head["transfer-encoding"] = "chunked"
        writer.write(_head(200, head))
        for item in items:
            data = item.encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if chunked and not cut:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    return write


def hang(seconds: float = 30.0) -> Reply:
    """Never answer (until ``seconds`` pass or the server closes)."""

    async def write(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)

    return write


def drop() -> Reply:
    """Close the connection without any response."""

    async def write(writer: asyncio.StreamWriter) -> None:
        return None

    return write


def openai_sse(chunks: Iterable[dict[str, Any]], *, done: bool = True) -> list[str]:
    events = [f"data: {json.dumps(c)}\n\n" for c in chunks]
    if done:
        events.append("data: [DONE]\n\n")
    return events


def anthropic_sse(events: Iterable[dict[str, Any]]) -> list[str]:
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events]


@dataclass
class LoopbackServer:
    replies: deque[Reply] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Recorded(method, path, headers, body))
            reply = self.replies.popleft() if self.replies else json_reply(500, {"error": "none"})
            await reply(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)


async def drain(stream: AsyncIterable[Any], into: list[Any] | None = None) -> list[Any]:
    """Consume ``stream``, keeping what it yielded in ``into`` (also when it raises)."""
    received = [] if into is None else into
    async for item in stream:
        received.append(item)
    return received


def truncated(status: int = 200) -> Reply:
    """A response whose body stops before its announced length."""

    async def write(writer: asyncio.StreamWriter) -> None:
        head = {"content-type": "application/json", "content-length": "1000", "connection": "close"}
        writer.write(_head(status, head) + b'{"id": "chatcmpl-')
        await writer.drain()

    return write

"""What the web integration tests share: a store that counts, and a many-session client."""

from __future__ import annotations

import socket

import anyio
import httpx

from promptstate import MemoryStore


class CountingStore(MemoryStore):
    """A MemoryStore that counts how often it is opened and loaded from."""

    def __init__(self) -> None:
        super().__init__()
        self.opens = 0
        self.loads = 0

    async def _open(self) -> None:
        self.opens += 1

    async def load(self, session_id: str, *, last: int | None = None) -> list:  # type: ignore[type-arg]
        self.loads += 1
        return await super().load(session_id, last=last)


def loopback_socket() -> socket.socket:
    """A listening TCP socket on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def many_sessions(base: str, sessions: int, turns: int) -> None:
    """Create ``sessions`` conversations and run ``turns`` turns on each, all at once."""
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def session(i: int) -> None:
            cid = f"user{i % 7}:conv{i}"
            r = await client.post(
                "/conversations", json={"user_id": f"u{i}", "conversation_id": cid}
            )
            assert r.status_code == 201, r.text
            assert r.json() == {"id": cid}
            for t in range(turns):
                r = await client.post(
                    f"/conversations/{cid}/messages", json={"content": f"{i}.{t}"}
                )
                assert r.status_code == 200, r.text
                body = r.json()
                if t == 0:
                    assert body["content"] == f"You said '{i}.0'. This is our first turn."
                else:  # the mock answers from the stored history: the session remembers
                    assert body["content"] == (
                        f"You said '{i}.{t}'; before that, '{i}.{t - 1}'. This is turn {t + 1}."
                    )
                assert body["usage"]["input"] > 0
            r = await client.get(f"/conversations/{cid}/messages")
            assert r.status_code == 200
            history = r.json()
            assert [m["role"] for m in history] == ["user", "assistant"] * turns
            assert [m["content"] for m in history[::2]] == [f"{i}.{t}" for t in range(turns)]

        async with anyio.create_task_group() as tg:
            for i in range(sessions):
                tg.start_soon(session, i)

"""Helpers for the pipeline tests: stores with leases, slow stores, stores that lose replies.

These are real in-process implementations of the store seam (MemoryStore underneath), not
mocks of a server: they let the tests reach the lease and retry paths of the pipeline
deterministically. The server stores plug into the same tests through ``turn_store`` (the
shared ``store`` fixture, tests/conftest.py).
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from promptstate import LeasingStore, MemoryStore, Message, StoreUnavailableError

#: The store kinds the turn-safety tests run on. Server stores are skipped until they exist.
STORE_KINDS = ["memory", "memory-leased", "custom", "sqlite", "redis", "postgres"]


class LeaseTable:
    """Leases shared by several store objects (as a server is shared by processes)."""

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str, float]] = {}
        self.acquired = 0
        self.renewed = 0
        self.released = 0


class LeasingMemoryStore(LeasingStore, MemoryStore):
    """A MemoryStore with leases that keeps the ``LeasingStore`` defaults: its ``append_turn``
    renews the lease (the check), appends, then releases it; its ``acquire_and_load`` takes
    the lease, then reads.

    Give several of them the same ``table`` and ``share_with`` to get separate store objects
    (separate in-process lock tables, like separate processes) over one data set, which only
    the lease keeps apart.
    """

    def __init__(
        self,
        *,
        table: LeaseTable | None = None,
        share_with: MemoryStore | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.table = table or LeaseTable()
        if share_with is not None:
            self._data = share_with._data

    async def _acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        await anyio.lowlevel.checkpoint()
        now = time.monotonic()
        held = self.table.leases.get(key)
        if held is not None and held[1] > now and held[0] != owner:
            return False
        self.table.leases[key] = (owner, now + ttl)
        self.table.acquired += 1
        return True

    async def _renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        await anyio.lowlevel.checkpoint()
        now = time.monotonic()
        held = self.table.leases.get(key)
        if held is None or held[0] != owner or held[1] <= now:
            return False
        self.table.leases[key] = (owner, now + ttl)
        self.table.renewed += 1
        return True

    async def _release_lease(self, key: str, owner: str) -> bool:
        await anyio.lowlevel.checkpoint()
        held = self.table.leases.get(key)
        if held is None or held[0] != owner:
            return False
        del self.table.leases[key]
        self.table.released += 1
        return True


class SlowStore(LeasingMemoryStore):
    """Leases plus a random pause inside load and append_turn, so cancellation can land there."""

    def __init__(self, *, pause: float = 0.002, seed: int = 0, **options: Any) -> None:
        super().__init__(**options)
        self._pause = pause
        self._random = random.Random(seed)

    async def load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        await anyio.sleep(self._random.random() * self._pause)
        return await super().load(session_id, last=last)

    async def append_turn(self, session_id: str, messages: Sequence[Message], **kw: Any) -> int:
        await anyio.sleep(self._random.random() * self._pause)
        count = await super().append_turn(session_id, messages, **kw)
        await anyio.sleep(self._random.random() * self._pause)
        return count


class LostReplyStore(MemoryStore):
    """append_turn applies the write, then raises as if the reply was lost (``failures`` times)."""

    def __init__(self, failures: int, *, before: bool = False) -> None:
        super().__init__()
        self.failures = failures
        self.before = before
        self.calls = 0

    async def append_turn(self, session_id: str, messages: Sequence[Message], **kw: Any) -> int:
        self.calls += 1
        if self.failures and self.before:
            self.failures -= 1
            raise StoreUnavailableError(f"connection lost before writing {session_id!r}")
        count = await super().append_turn(session_id, messages, **kw)
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError(f"connection lost after writing {session_id!r}")
        return count


class LoadSpyStore(MemoryStore):
    """Records every ``load(last=...)`` it is asked for."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.loads: list[int | None] = []

    async def load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        self.loads.append(last)
        return await super().load(session_id, last=last)


def _missing(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return True
        raise
    return False


def server_for(kind: str, request: pytest.FixtureRequest) -> str | None:
    """The server URL ``kind`` needs (resolved outside the event loop), or skip.

    Call it from a synchronous fixture: the server fixtures may start a throwaway server.
    """
    module = {"sqlite": "sqlite", "redis": "redis", "postgres": "postgres"}.get(kind)
    if module is None:
        return None
    if _missing(f"promptstate.stores.{module}"):
        pytest.skip(f"the {kind} store has not landed on this branch yet")
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_dsn"))
    return None


async def drain(chunks: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in chunks]

"""CachedStore: the conformance suite over two inner stores, plus what caching promises."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from promptstate import CachedStore, MemoryStore, Message, State, ValidationError
from promptstate.stores.base import Store
from promptstate.stores.sqlite import SQLiteStore
from promptstate.testing import StoreConformance, StoreFactory

pytestmark = pytest.mark.anyio


class TestCachedMemoryConformance(StoreConformance):
    ttl_seconds = 0.3

    @pytest.fixture
    async def store_factory(self) -> AsyncIterator[StoreFactory]:
        made: list[Store] = []

        async def make(**options: object) -> Store:
            store = CachedStore(MemoryStore(**options), max_entries=8)  # type: ignore[arg-type]
            made.append(store)
            return store

        yield make
        for store in made:
            await store.aclose()


class TestCachedSQLiteConformance(StoreConformance):
    ttl_seconds = 0.5

    @pytest.fixture
    async def store_factory(self, tmp_path: Path) -> AsyncIterator[StoreFactory]:
        made: list[Store] = []

        async def make(**options: object) -> Store:
            inner = SQLiteStore(tmp_path / f"cached-{len(made)}.db", **options)  # type: ignore[arg-type]
            store = CachedStore(inner)
            made.append(store)
            return store

        yield make
        for store in made:
            await store.aclose()


async def test_reads_are_served_from_cache_and_writes_invalidate() -> None:
    inner = MemoryStore()
    store = CachedStore(inner)
    await store.append("s", [Message("user", "a")])
    await store.get("s")
    misses = store.misses
    for _ in range(5):
        assert [m.content for m in await store.load("s")] == ["a"]
        assert (await store.get("s")).version == 1
    assert store.misses == misses
    assert store.hits >= 10
    await store.append("s", [Message("user", "b")])  # through the cache: seen at once
    assert [m.content for m in await store.load("s", last=1)] == ["b"]
    assert (await store.get("s")).version == 2


async def test_other_writers_are_seen_after_the_entry_ttl() -> None:
    inner = MemoryStore()
    store = CachedStore(inner, ttl=0.2, close_inner=False)
    await store.set("s", State(conversation_id="s", user_id="old"))
    assert (await store.get("s")).user_id == "old"
    await inner.set("s", State(conversation_id="s", user_id="new"))  # behind the cache's back
    assert (await store.get("s")).user_id == "old"  # stale, within the entry TTL
    await anyio.sleep(0.3)
    assert (await store.get("s")).user_id == "new"
    # Compare-and-set always asks the inner store, so a stale cache cannot win.
    with pytest.raises(Exception, match="version"):
        await store.set("s", State(conversation_id="s"), expected_version=1)
    await store.aclose()
    assert not inner.closed


async def test_lru_bound_and_isolation() -> None:
    store = CachedStore(MemoryStore(), max_entries=2)
    for key in "abc":
        await store.set(key, State(conversation_id=key, metadata={"k": key}))
    assert len(store._cache) == 2
    got = await store.get("c")
    got.metadata["k"] = "changed"
    got.messages.append(Message("user", "x"))
    again = await store.get("c")
    assert again.metadata == {"k": "c"}
    assert again.messages == []


async def test_leases_pass_through(tmp_path: Path) -> None:
    store = CachedStore(SQLiteStore(tmp_path / "l.db"))
    assert await store.acquire_lease("k", "me", 5.0) is True
    assert await store.release_lease("k", "me") is True
    assert not hasattr(CachedStore(MemoryStore()), "acquire_lease")
    await store.aclose()


def test_bad_arguments() -> None:
    with pytest.raises(ValidationError):
        CachedStore("not a store")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        CachedStore(MemoryStore(), max_entries=0)
    with pytest.raises(ValidationError):
        CachedStore(MemoryStore(), ttl=-1)

"""CachedStore: the conformance suite over two inner stores, plus what caching promises."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import anyio
import pytest

from promptstate import CachedStore, MemoryStore, Message, State, ValidationError
from promptstate.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


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
    store = CachedStore(inner, ttl=0.2)
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
    assert not inner.closed  # borrowed, so left open
    owning = CachedStore(inner, close_inner=True)
    await owning.aclose()
    assert inner.closed


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
    store = CachedStore(SQLiteStore(tmp_path / "l.db"), close_inner=True)
    assert await store.acquire_lease("k", "me", 5.0) is True
    assert await store.release_lease("k", "me") is True
    assert not hasattr(CachedStore(MemoryStore()), "acquire_lease")
    await store.aclose()


async def test_setup_and_purge_expired_pass_through_to_a_store_that_has_them(
    tmp_path: Path,
) -> None:
    inner = SQLiteStore(tmp_path / "p.db", ttl=0.2)
    async with CachedStore(inner, close_inner=True) as store:
        await store.setup()  # the inner store's: idempotent
        await store.append("old", [Message("user", "x")])
        await anyio.sleep(0.4)
        assert await store.purge_expired() == 1
        assert await inner.purge_expired() == 0, "the wrapper did not purge the inner store"
    plain = CachedStore(MemoryStore())
    assert not hasattr(plain, "setup")
    assert not hasattr(plain, "purge_expired")


def test_bad_arguments() -> None:
    with pytest.raises(ValidationError):
        CachedStore("not a store")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        CachedStore(MemoryStore(), max_entries=0)
    with pytest.raises(ValidationError):
        CachedStore(MemoryStore(), ttl=-1)


class _GatedGets(MemoryStore):
    """A MemoryStore whose get() reads, then waits at a gate before answering."""

    gate: anyio.Event | None = None

    async def get(self, key: str) -> State:
        state = await super().get(key)
        if self.gate is not None:
            await self.gate.wait()
        return state

    async def get_many(self, keys: object) -> list[State | None]:
        found = await super().get_many(keys)  # type: ignore[arg-type]
        if self.gate is not None:
            await self.gate.wait()
        return found


async def _race(store: CachedStore, inner: _GatedGets, read: str, write: object) -> None:
    """Start a cache-missing ``read`` of "s", run ``write`` while it is in flight, finish it."""
    inner.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        if read == "get":
            tg.start_soon(store.get, "s")
        else:
            tg.start_soon(store.get_many, ["s"])
        await anyio.sleep(0.01)  # the read has fetched the old state and waits at the gate
        await write()  # type: ignore[operator]
        inner.gate.set()
    inner.gate = None


@pytest.mark.parametrize("read", ["get", "get_many"])
@pytest.mark.parametrize("write", ["append", "append_turn", "save", "set", "delete", "prefix"])
async def test_a_read_in_flight_during_a_write_does_not_cache_the_old_state(
    read: str, write: str
) -> None:
    # The read fetched the state before the write and remembered it after the write had
    # dropped the entry: this process then read its own write wrong until the entry aged out.
    inner = _GatedGets()
    store = CachedStore(inner)
    await store.append("s", [Message("user", "old")])
    writes = {
        "append": lambda: store.append("s", [Message("user", "new")]),
        "append_turn": lambda: store.append_turn("s", [Message("user", "new")], cost=1.0),
        "save": lambda: store.save("s", [Message("user", "old"), Message("user", "new")]),
        "set": lambda: store.set(
            "s",
            State(conversation_id="s", messages=[Message("user", "old"), Message("user", "new")]),
        ),
        "delete": lambda: store.delete("s"),
        "prefix": lambda: store.delete_by_prefix("s"),
    }
    await _race(store, inner, read, writes[write])
    expected = await inner.get_many(["s"])
    got = await store.get_many(["s"])
    assert (got[0] and [m.content for m in got[0].messages]) == (
        expected[0] and [m.content for m in expected[0].messages]
    )
    assert [m.content for m in await store.load("s")] == (
        [m.content for m in expected[0].messages] if expected[0] else []
    )
    await store.aclose()


class _GatedSets(MemoryStore):
    """A MemoryStore whose set() writes, then waits at a gate (when given one) before answering."""

    gates: ClassVar[dict[str, anyio.Event]] = {}

    async def set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        stored = await super().set(key, state, expected_version=expected_version)
        gate = self.gates.get(state.user_id or "")
        if gate is not None:
            await gate.wait()
        return stored


async def test_two_racing_sets_do_not_leave_the_loser_cached() -> None:
    inner = _GatedSets()
    inner.gates = {"first": anyio.Event()}
    store = CachedStore(inner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.set, "s", State(conversation_id="s", user_id="first"))
        await anyio.sleep(0.01)  # "first" is stored and waits before answering
        await store.set("s", State(conversation_id="s", user_id="second"))  # stored last
        inner.gates["first"].set()  # "first" answers last
    assert (await inner.get("s")).user_id == "second"
    assert (await store.get("s")).user_id == "second"
    await store.aclose()


async def test_new_methods_invalidate_and_read_through() -> None:
    inner = MemoryStore()
    store = CachedStore(inner)
    await store.append("k", [Message("user", "a"), Message("assistant", "b")])
    await store.get("k")  # cached now
    assert await store.count("k") == 2
    assert await store.get_metadata("k") == {}
    assert await store.merge_metadata("k", {"title": "t"}) == {"title": "t"}
    assert (await store.get("k")).metadata == {"title": "t"}
    assert await store.truncate("k", 1) == 1
    assert [m.content for m in (await store.get("k")).messages] == ["a"]
    assert await store.count("k") == 1
    await store.fork("k", "f", at=0)
    assert (await store.get("f")).messages == []
    page = await store.list_sessions(order="created_asc")
    assert [i.conversation_id for i in page.items] == ["f", "k"]  # same created_at: by key
    # Another writer's merge is seen once the entry is gone (here: dropped by hand).
    await inner.merge_metadata("k", {"other": 1})
    store.clear()
    assert await store.get_metadata("k") == {"title": "t", "other": 1}

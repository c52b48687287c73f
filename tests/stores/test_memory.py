"""MemoryStore: the conformance suite plus what only an in-process store has (LRU)."""

from __future__ import annotations

from typing import Any

import pytest

from promptstate import MemoryStore, Message, State, ValidationError
from promptstate.stores.base import Store

pytestmark = pytest.mark.anyio


async def test_lru_evicts_least_recently_used() -> None:
    store = MemoryStore(max_sessions=3)
    for key in ("a", "b", "c"):
        await store.append(key, [Message("user", key)])
    await store.get("a")  # a is now the most recently used
    await store.append("d", [Message("user", "d")])
    assert len(store) == 3
    assert await store.load("b") == []  # b was least recently used
    assert [m.content for m in await store.load("a")] == ["a"]
    await store.set("e", State(conversation_id="e"))
    assert sorted([k async for k in store.list_keys("")]) == ["a", "d", "e"]


async def test_expired_sessions_are_swept_on_writes() -> None:
    import anyio

    store = MemoryStore(ttl=0.05)
    for i in range(50):
        await store.append(f"s{i}", [Message("user", "x")])
    await anyio.sleep(0.1)
    await store.append("fresh", [Message("user", "x")])
    assert len(store) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_max_sessions_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValidationError, match="max_sessions"):
        MemoryStore(max_sessions=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -5, float("inf"), float("nan"), "10", True])
def test_ttl_must_be_positive(bad: object) -> None:
    with pytest.raises(ValidationError, match="ttl"):
        MemoryStore(ttl=bad)  # type: ignore[arg-type]


async def test_turn_cost_is_bounded_so_total_cost_stays_finite() -> None:
    store = MemoryStore()
    await store.append_turn("c", [Message("user", "x")], cost=1e12)
    with pytest.raises(ValidationError, match="cost"):
        await store.append_turn("c", [Message("user", "y")], cost=1e308)
    state = await store.get("c")
    assert state.total_cost == 1e12
    assert len(state.messages) == 1


async def test_indexes_follow_every_write_eviction_and_expiry() -> None:
    """Random writes, deletes, evictions and expiries: the sorted indexes always hold exactly
    the sessions there are, and native listing agrees with the reference (read everything)."""
    import random

    import anyio

    from promptstate.stores.base import SessionQuery

    rng = random.Random(5)
    store = MemoryStore(max_sessions=40, ttl=0.2)
    users = [None, "u1", "u2", "u3"]
    for step in range(600):
        key = f"k{rng.randrange(60)}"
        op = rng.randrange(8)
        if op == 0:
            await store.set(key, State(conversation_id=key, user_id=rng.choice(users)))
        elif op == 1:
            await store.append(key, [Message("user", str(step))])
        elif op == 2:
            await store.merge_metadata(key, {"s": step})
        elif op == 3:
            await store.delete(key)
        elif op == 4 and await store.count(key):
            await store.truncate(key, 0)
        elif op == 5:
            target = f"k{rng.randrange(60)}"
            if target != key and await store.count(key):
                await store.fork(key, target, overwrite=True, at=1)
        elif op == 6:
            await store.delete_by_prefix(f"k{rng.randrange(6)}")
        elif step % 97 == 0:
            await anyio.sleep(0.25)  # everything expires
        live = len(store)
        assert len(store._keys) == len(store._by_updated) == len(store._by_created) == live
        assert sum(len(s) for s in store._user_updated.values()) <= live
    for order in ("updated_desc", "created_asc"):
        for user in (None, "u1"):
            query = SessionQuery(order=order, user_id=user, limit=1000)
            native = await store._list_sessions(query)
            reference = await Store._list_sessions(store, query)
            assert native == reference


async def test_append_turn_never_suspends_only_for_memorystores_own_code() -> None:
    # The pipeline's save skips its cancellation shield when this is True: a subclass whose
    # append_turn may suspend must not inherit it.
    import anyio

    class Sleepy(MemoryStore):
        async def _append_turn(self, *args: Any, **kwargs: Any) -> int:
            await anyio.lowlevel.checkpoint()
            return await super()._append_turn(*args, **kwargs)

    class Counting(MemoryStore):
        async def append_turn(self, *args: Any, **kwargs: Any) -> int:
            await anyio.lowlevel.checkpoint()
            return await super().append_turn(*args, **kwargs)

    class Plain(MemoryStore):
        pass

    assert MemoryStore().append_turn_never_suspends
    assert Plain().append_turn_never_suspends
    assert not Sleepy().append_turn_never_suspends
    assert not Counting().append_turn_never_suspends

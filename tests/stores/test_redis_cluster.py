"""RedisStore on a real three-node Redis Cluster started by the tests (tests/redis_cluster.py)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
import pytest

pytest.importorskip("redis")

from redis.asyncio import RedisCluster
from redis.crc import key_slot

from promptstate import Message, State, StoreUnavailableError, open_store
from promptstate.stores.redis import RedisStore
from promptstate.testing import StoreFactory
from promptstate.testing._backends import StoreMaker

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.usefixtures("sweep_orphaned_sockets"),
]


def _prefix() -> str:
    return f"pstest:{uuid.uuid4().hex}:"


@pytest.fixture
async def raw(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url.replace("redis+cluster", "redis"))
    await client.initialize()
    yield client
    await client.aclose()


async def _all_keys(raw: RedisCluster, prefix: str) -> list[bytes]:
    """Every key under ``prefix`` on every primary."""
    return [k async for k in raw.scan_iter(match=prefix + "*", count=1000)]


@pytest.fixture
def make(stores: StoreMaker, redis_cluster_url: str) -> StoreFactory:
    """Stores on the test session's cluster, each under its own prefix, wiped afterwards."""
    return partial(stores.open, "redis-cluster")


async def test_sessions_spread_over_every_primary_and_listing_sees_them_all(
    make: StoreFactory, raw: RedisCluster
) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    ids = [f"s{i}" for i in range(60)]
    for sid in ids:
        await store.append(sid, [Message("user", sid)])
    nodes = {str(raw.get_node_from_key(store._keys(sid)[0].decode())) for sid in ids}
    assert len(nodes) == 3
    assert sorted([k async for k in store.list_keys("s")]) == sorted(ids)
    assert sorted([s.conversation_id async for s in store.list_all()]) == sorted(ids)
    found = await store.get_many(ids)
    assert [s.messages[0].content if s else None for s in found] == ids
    assert await store.delete_by_prefix("s") == 60
    assert await _all_keys(raw, store.prefix) == []


async def test_fork_across_slots(make: StoreFactory, raw: RedisCluster) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    source, target = "fork-src", "fork-dst-7"
    assert key_slot(store._keys(source)[0]) != key_slot(store._keys(target)[0])
    await store.set(
        source, State(conversation_id=source, user_id="u", metadata={"a": 1}, total_cost=1.5)
    )
    await store.append(source, [Message("user", "one"), Message("assistant", "two")])
    copy = await store.fork(source, target)
    assert copy.conversation_id == target
    assert copy.version == 1
    assert (copy.user_id, copy.metadata, copy.total_cost) == ("u", {"a": 1}, 1.5)
    assert [m.content for m in await store.load(target)] == ["one", "two"]
    await store.append(target, [Message("user", "three")])
    assert len(await store.load(source)) == 2


async def test_every_cluster_key_has_a_ttl(make: StoreFactory, raw: RedisCluster) -> None:
    store = await make(ttl=timedelta(minutes=5))
    assert isinstance(store, RedisStore)
    await store.append("a", [Message("user", "x")])
    await store.save("b", [Message("user", "y")])
    await store.fork("a", "c")
    keys = [k for k in await _all_keys(raw, store.prefix) if b"{%idx" not in k]
    assert len(keys) == 6
    for key in keys:
        assert 0 < await raw.pttl(key) <= 300_000


async def test_expired_sessions_leave_the_cluster_index(
    make: StoreFactory, raw: RedisCluster
) -> None:
    store = await make(ttl=0.2)
    assert isinstance(store, RedisStore)
    for i in range(20):
        await store.append(f"old{i}", [Message("user", "x")])
    await anyio.sleep(0.5)
    await store.append("new", [Message("user", "x")])
    members: list[bytes] = []
    for shard in range(store._shards):
        members += await raw.zrange(store._index_keys(shard)[0], 0, -1)  # type: ignore[arg-type]
    assert members == [b"new"]


async def test_open_store_cluster_url(redis_cluster_url: str, raw: RedisCluster) -> None:
    prefix = _prefix()
    store = open_store(redis_cluster_url, prefix=prefix)
    assert isinstance(store, RedisStore)
    async with store:
        assert await store.append("x", [Message("user", "hi")]) == 1
        assert await store.delete("x")
    assert await _all_keys(raw, prefix) == []


async def test_cluster_store_warns_once_on_a_redis_py_older_than_8_1(
    redis_cluster_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis

    from promptstate.stores import redis as redis_store

    stores: list[Any] = []

    def opened(version: str, url: str, *, fresh: bool = True) -> list[str]:
        monkeypatch.setattr(redis, "__version__", version)
        if fresh:  # as in a new process
            redis_store._warn_old_cluster_client.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="promptstate.stores.redis"):
            store = open_store(url, prefix=_prefix())
        stores.append(store)
        return [r.getMessage() for r in caplog.records if "8.1" in r.getMessage()]

    try:
        assert opened("7.4.1", redis_url) == []  # a single Redis is not affected
        (warning,) = opened("7.4.1", redis_cluster_url)
        assert warning.startswith("redis-py 7.4.1 is older than 8.1")
        assert opened("5.0.1", redis_cluster_url, fresh=False) == []  # once per process
        for newer in ("8.1.0", "8.2.0", "9.0.0b1", "10.0", "unknown"):
            assert opened(newer, redis_cluster_url) == [], newer
        (warning,) = opened("8.0.1", redis_cluster_url)
        assert warning.startswith("redis-py 8.0.1 is older")
    finally:
        redis_store._warn_old_cluster_client.cache_clear()
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize(
    ("version", "parsed", "old"),
    [
        ("5.0.1", (5, 0), True),
        ("7.4.1", (7, 4), True),
        ("8.0.1", (8, 0), True),
        ("8.1.0b1", (8, 1), False),
        ("8.1.0", (8, 1), False),
        ("10.0", (10, 0), False),
        ("99.99.99", (99, 99), False),
        ("8", (), False),
        ("", (), False),
    ],
)
def test_redis_py_version_and_the_cluster_threshold(
    monkeypatch: pytest.MonkeyPatch, version: str, parsed: tuple[int, ...], old: bool
) -> None:
    import redis

    from promptstate.stores import redis as redis_store

    monkeypatch.setattr(redis, "__version__", version)
    assert redis_store._redis_py_version() == parsed
    assert redis_store._old_cluster_client() is old


async def test_borrowed_cluster_client_is_not_closed(raw: RedisCluster) -> None:
    prefix = _prefix()
    async with RedisStore(raw, prefix=prefix) as store:
        await store.append("b", [Message("user", "x")])
    assert await raw.exists(*store._keys("b")) == 2
    assert await raw.unlink(*store._keys("b")) == 2
    for shard in range(store._shards):
        await raw.unlink(*store._index_keys(shard))


async def test_scripts_are_reloaded_after_script_flush(
    make: StoreFactory, raw: RedisCluster
) -> None:
    store = await make()
    ids = [f"f{i}" for i in range(12)]
    for sid in ids:
        await store.append(sid, [Message("user", sid)])
    await raw.script_flush()  # our own throwaway cluster: every primary forgets its scripts
    found = await store.get_many(ids)  # pipelined EVALSHA per node: NOSCRIPT, load, again
    assert [s.messages[0].content if s else None for s in found] == ids
    await raw.script_flush()
    assert await store.append("f0", [Message("user", "more")]) == 2
    assert (await store.get("f1")).version == 1


async def test_unreachable_cluster_is_store_unavailable() -> None:
    from tests.servers import free_port

    store = RedisStore.from_url(
        f"redis+cluster://127.0.0.1:{free_port()}", socket_connect_timeout=1
    )
    with pytest.raises(StoreUnavailableError) as info:
        await store.append("x", [Message("user", "x")])
    assert info.value.__cause__ is not None
    with pytest.raises(StoreUnavailableError):
        async with store:
            pass
    await store.aclose()


# -- the session index ------------------------------------------------------------------------


async def _index_size(raw: RedisCluster, store: RedisStore) -> int:
    """Entries in every index structure of the store (all shards, every user's sets)."""
    total = 0
    for shard in range(store._shards):
        base = store._index_base(shard)
        for suffix in (b"z", b"e", b"u", b"c"):
            total += await raw.zcard(base + suffix)
        total += await raw.hlen(base + b"w")
    async for key in raw.scan_iter(match=store.prefix + "{%idx*}:[UC]:*", count=1000):
        total += await raw.zcard(key)
    return total


async def test_the_session_index_does_not_grow_with_expired_or_deleted_sessions(
    make: StoreFactory, raw: RedisCluster
) -> None:
    store = await make(ttl=1.0)
    assert isinstance(store, RedisStore)
    started = time.monotonic()
    for i in range(200):
        await store.set(f"old{i}", State(conversation_id=f"old{i}", user_id=f"u{i % 5}"))
    await store.merge_metadata("old1", {"t": 1})
    if time.monotonic() - started < 0.8:  # else some expired (and left) while writing
        assert await _index_size(raw, store) == 200 * 7
    await anyio.sleep(1.5)
    for i in range(4):
        await store.append("new", [Message("user", str(i))])
    assert [i.conversation_id for i in (await store.list_sessions()).items] == ["new"]
    assert await _index_size(raw, store) == 4
    await store.set("new", State(conversation_id="new", user_id="u1"))
    assert [i.conversation_id for i in (await store.list_sessions(user_id="u1")).items] == ["new"]
    assert await store.delete("new") is True
    assert await _index_size(raw, store) == 0


async def test_listing_repairs_an_index_a_failed_write_left_behind(
    make: StoreFactory, raw: RedisCluster
) -> None:
    """On a Cluster the index is written just before the session: an entry whose write never
    happened, or whose time or user is off, is checked against the header and repaired."""
    store = await make()
    assert isinstance(store, RedisStore)
    for key in ("a", "b", "c"):
        await store.set(key, State(conversation_id=key, user_id="alice"))
    # As if a write of "a" indexed it (newest, for bob) and then failed; and of "ghost" too.
    await store._index_sync(b"a", b"0", 2**52, None, ("s", "bob"))
    await store._index_sync(b"ghost", b"0", 2**52 + 1, None, ("s", "alice"))
    states = [await store.get(k) for k in ("a", "b", "c")]
    expected = [
        s.conversation_id
        for s in sorted(states, key=lambda s: (s.updated_at, s.conversation_id), reverse=True)
    ]
    page = await store.list_sessions(user_id="alice", limit=2)
    assert page.next_cursor is not None
    rest = await store.list_sessions(user_id="alice", limit=2, cursor=page.next_cursor)
    assert rest.next_cursor is None
    assert [i.conversation_id for i in page.items + rest.items] == expected
    assert (await store.list_sessions(user_id="bob")).items == []
    assert [i.conversation_id for i in (await store.list_sessions()).items] == expected
    assert await store.delete_by_prefix("") == 3
    assert await _index_size(raw, store) == 0

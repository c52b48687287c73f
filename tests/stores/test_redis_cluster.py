"""RedisStore on a real three-node Redis Cluster started by the tests (tests/redis_cluster.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import pytest

pytest.importorskip("redis")

from redis.asyncio import RedisCluster
from redis.crc import key_slot

from promptstate import Message, State, StoreUnavailableError, open_store
from promptstate.stores.base import Store
from promptstate.stores.redis import RedisStore
from promptstate.testing import Corruption, StoreConformance, StoreFactory
from tests.redis_cluster import redis_cluster_url
from tests.stores.corruptions import redis_corruptions

__all__ = ["redis_cluster_url"]  # the fixture, imported so that pytest finds it

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
async def make(redis_cluster_url: str, raw: RedisCluster) -> AsyncIterator[StoreFactory]:
    made: list[tuple[Store, str]] = []

    async def factory(**options: object) -> Store:
        prefix = str(options.pop("prefix", _prefix()))
        store = RedisStore.from_url(redis_cluster_url, prefix=prefix, **options)  # type: ignore[arg-type]
        made.append((store, prefix))
        return store

    yield factory
    for store, prefix in made:
        await store.aclose()
        for key in await _all_keys(raw, prefix):
            await raw.unlink(key)


class TestRedisClusterConformance(StoreConformance):
    ttl_seconds = 0.5

    @pytest.fixture
    async def store_factory(self, make: StoreFactory) -> StoreFactory:
        return make

    @pytest.fixture
    def corruptions(self) -> dict[str, Corruption]:
        return redis_corruptions()


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

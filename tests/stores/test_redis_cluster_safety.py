"""RedisStore on a real Redis Cluster under load: calls beyond the pool wait their turn.

redis-py's async ``RedisCluster`` refuses a call at once (``MaxConnectionsError``, no text)
when all ``max_connections`` connections to a node are busy; before the store queued its
calls, 200 concurrent appends to one session stored 64 and raised 136 times.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

pytest.importorskip("redis")

from redis.asyncio import RedisCluster

from promptstate import Message, StoreUnavailableError
from promptstate.stores.redis import RedisStore

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.usefixtures("sweep_orphaned_sockets"),
]


@pytest.fixture
async def raw(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url.replace("redis+cluster", "redis"))
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_cluster_url: str, raw: RedisCluster) -> AsyncIterator[RedisStore]:
    prefix = f"pstest:{uuid.uuid4().hex}:"
    made = RedisStore.from_url(redis_cluster_url, prefix=prefix)
    yield made
    await made.aclose()
    async for key in raw.scan_iter(match=prefix + "*", count=1000):
        await raw.unlink(key)


async def _gather_errors(calls: list[tuple[str, str]], store: RedisStore) -> list[BaseException]:
    errors: list[BaseException] = []

    async def one(session: str, text: str) -> None:
        try:
            await store.append(session, [Message("user", text)])
        except Exception as exc:  # collected and asserted on below
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for session, text in calls:
            tg.start_soon(one, session, text)
    return errors


async def test_500_concurrent_appends_to_one_session_all_land(store: RedisStore) -> None:
    await store.append("warm", [Message("user", "w")])  # connections made, topology known
    texts = [f"m{i}" for i in range(500)]
    errors = await _gather_errors([("one", t) for t in texts], store)
    assert errors == []
    stored = [m.content for m in await store.load("one")]
    assert sorted(stored) == sorted(texts)
    assert (await store.get("one")).version == 500


async def test_2000_appends_over_200_sessions_all_land(store: RedisStore) -> None:
    await store.append("warm", [Message("user", "w")])
    calls = [(f"s{i % 200}", f"m{i}") for i in range(2000)]
    errors = await _gather_errors(calls, store)
    assert errors == []
    found = await store.get_many([f"s{i}" for i in range(200)])
    for i, state in enumerate(found):
        assert state is not None
        assert sorted(m.content for m in state.messages) == sorted(
            f"m{j}" for j in range(i, 2000, 200)
        )
    assert len([k async for k in store.list_keys("s")]) == 200


async def test_a_call_that_waits_past_pool_timeout_says_so(
    redis_cluster_url: str, raw: RedisCluster
) -> None:
    """One connection, two appends, every primary paused for writes: the one that gets no
    connection within pool_timeout fails with a message saying why; the other lands."""
    prefix = f"pstest:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(
        redis_cluster_url, prefix=prefix, max_connections=1, pool_timeout=0.2
    )
    await store.append("p", [Message("user", "first")])
    outcomes: list[BaseException | None] = []
    failed = anyio.Event()

    async def one(text: str) -> None:
        try:
            await store.append("p", [Message("user", text)])
        except StoreUnavailableError as exc:
            outcomes.append(exc)
            failed.set()
        else:
            outcomes.append(None)

    primaries = raw.get_primaries()
    try:
        for node in primaries:  # a cap of 10 s, in case the test dies before unpausing
            await raw.execute_command("CLIENT", "PAUSE", 10_000, "WRITE", target_nodes=node)
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "a")
            tg.start_soon(one, "b")
            await failed.wait()
            for node in primaries:
                await raw.execute_command("CLIENT", "UNPAUSE", target_nodes=node)
    finally:
        for node in primaries:
            await raw.execute_command("CLIENT", "UNPAUSE", target_nodes=node)
    errors = [o for o in outcomes if o is not None]
    assert len(errors) == 1
    assert outcomes.count(None) == 1
    text = str(errors[0])
    assert "appending to key 'p'" in text
    assert "max_connections=1" in text
    assert "0.2 s (pool_timeout)" in text
    assert len(await store.load("p")) == 2
    # The store is not worse for it: the permit came back.
    assert await store.append("p", [Message("user", "c")]) == 3
    await store.aclose()
    async for key in raw.scan_iter(match=prefix + "*", count=1000):
        await raw.unlink(key)


async def test_a_shared_client_out_of_connections_is_explained(
    redis_cluster_url: str,
) -> None:
    """A borrowed client used by other code too can still run out: redis-py's error (no
    text) becomes a StoreUnavailableError that says what happened."""
    client = RedisCluster.from_url(
        redis_cluster_url.replace("redis+cluster", "redis"), max_connections=1
    )
    await client.initialize()
    prefix = f"pstest:{uuid.uuid4().hex}:"
    store = RedisStore(client, prefix=prefix)
    await store.append("q", [Message("user", "x")])
    node = client.get_node_from_key(store._keys("q")[0])
    held = node.acquire_connection()  # other code holds the only connection to that node
    try:
        with pytest.raises(StoreUnavailableError) as info:
            await store.load("q")
    finally:
        if hasattr(node, "release"):
            node.release(held)
        else:  # redis-py < 6.2 has no ClusterNode.release
            node._free.append(held)
    assert "no free connection" in str(info.value)
    assert "max_connections" in str(info.value)
    assert [m.content for m in await store.load("q")] == ["x"]
    async for key in client.scan_iter(match=prefix + "*", count=1000):
        await client.unlink(key)
    await client.aclose()


async def test_cancelled_waiters_leak_no_permit(redis_cluster_url: str, store: RedisStore) -> None:
    """Calls cancelled while they wait for a permit, or while they hold one, give it back:
    afterwards every permit is free and as many calls as there are permits run at once."""
    import asyncio
    import random

    small = RedisStore.from_url(redis_cluster_url, prefix=store.prefix, max_connections=2)
    rng = random.Random(12)
    await small.append("c", [Message("user", "warm")])

    async def one(i: int) -> None:
        await small.append("c", [Message("user", f"m{i}")])

    for _ in range(5):
        tasks = [asyncio.ensure_future(one(i)) for i in range(40)]
        await asyncio.sleep(rng.random() * 0.003)
        for task in rng.sample(tasks, 20):
            task.cancel()
        with anyio.move_on_after(rng.random() * 0.003):
            await one(-1)  # an anyio-scope cancellation among them
        await asyncio.gather(*tasks, return_exceptions=True)
    permits = small._permits
    assert permits is not None
    assert (permits.free, len(permits.waiters)) == (2, 0)
    count = len(await small.load("c"))
    errors = await _gather_errors([("c", f"after{i}") for i in range(50)], small)
    assert errors == []
    assert len(await small.load("c")) == count + 50
    await small.aclose()

"""RedisStore under faults: a server killed and restarted mid-run, and cancelled appends.

The restart test runs its own throwaway ``redis-server`` (with an fsync-always AOF, so data
survives the kill), never the shared one.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

pytest.importorskip("redis")

from redis.asyncio import RedisCluster

from promptstate import Message, NotFoundError, StoreUnavailableError
from promptstate.stores.redis import RedisStore
from tests.servers import RedisProcess
from tests.stores.redis_versions import needs_cluster_redis_py

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.usefixtures("sweep_orphaned_sockets"),
]

SIZE = 4


def _batch(tag: str) -> list[Message]:
    return [Message("user", f"{tag}/{i}") for i in range(SIZE)]


async def _assert_whole(store: RedisStore, session_id: str) -> int:
    """The session holds whole batches only, and its header agrees; returns the batches."""
    try:
        state = await store.get(session_id)
    except NotFoundError:  # every append to it was cancelled before it ran
        assert await store.load(session_id) == []
        return 0
    contents = [m.content for m in state.messages]
    assert len(contents) % SIZE == 0, contents
    tags = []
    for start in range(0, len(contents), SIZE):
        tag = contents[start].split("/")[0]
        assert contents[start : start + SIZE] == [f"{tag}/{i}" for i in range(SIZE)], contents
        tags.append(tag)
    assert len(set(tags)) == len(tags), "a batch was stored twice"
    assert state.version == len(tags)
    assert state.token_count == sum(m.tokens or 0 for m in state.messages)
    return len(tags)


@pytest.mark.slow
async def test_server_killed_and_restarted_mid_run() -> None:
    server = RedisProcess(None, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    store = RedisStore.from_url(
        server.url, prefix="faults:", socket_timeout=2, socket_connect_timeout=1, pool_timeout=2
    )
    errors: list[BaseException] = []
    done = [0] * 16
    all_busy = anyio.Event()
    try:

        async def writer(session_id: str, n: int) -> None:
            for i in range(100_000):
                try:
                    await store.append(session_id, _batch(f"w{n}.{i}"))
                except Exception as exc:  # anything but StoreUnavailableError fails below
                    errors.append(exc)
                    return
                done[n] += 1
                if min(done) >= 3:
                    all_busy.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(8):
                    tg.start_soon(writer, f"own{n}", n)
                    tg.start_soon(writer, "shared", 8 + n)
                await all_busy.wait()  # kill it while every writer is busy
                await anyio.sleep(0.05)
                assert server.proc is not None
                server.proc.kill()  # SIGKILL: no graceful shutdown
                server.proc.wait()
                server.proc = None

            assert len(errors) == 16, errors  # every writer stopped on StoreUnavailableError
            for error in errors:
                assert isinstance(error, StoreUnavailableError), repr(error)
                assert isinstance(error.__cause__, Exception)

            # While it is down, every call fails the same way, with the cause chained.
            calls: list[Any] = [
                lambda: store.get("own0"),
                lambda: store.load("own0", last=5),
                lambda: store.append("own0", _batch("down")),
                lambda: store.get_many(["own0", "own1"]),
                lambda: store.delete("own0"),
                lambda: store.fork("own0", "copy"),
                lambda: store.delete_by_prefix("own"),
                lambda: _drain(store.list_all()),
            ]
            for call in calls:
                with pytest.raises(StoreUnavailableError) as info:
                    await call()
                assert info.value.__cause__ is not None
                assert "redis.exceptions" not in type(info.value).__module__

            server.start()  # same port, same data directory
            sessions = [f"own{n}" for n in range(8)] + ["shared"]
            # The restarted server has no scripts cached: the pipelined read loads them.
            assert None not in await store.get_many(sessions)
            total = 0
            for session_id in sessions:
                total += await _assert_whole(store, session_id)
            assert total > 0
            # And it works again.
            before = len(await store.load("shared"))
            assert await store.append("shared", _batch("after")) == before + SIZE
            assert sorted([k async for k in store.list_keys("")]) == sorted(sessions)
    finally:
        await store.aclose()
        server.stop()
        import shutil

        shutil.rmtree(server.dir, ignore_errors=True)


async def _drain(states: AsyncIterator[Any]) -> None:
    async for _ in states:
        pass


async def _cancel_many(store: RedisStore, session_id: str, rounds: int, scale: float = 1.0) -> None:
    rng = random.Random(99)
    delays = [0, 0, 0.0001, 0.0003, 0.0007, 0.0015, 0.003, 0.01, 0.05]
    for i in range(rounds):
        with anyio.move_on_after(rng.choice(delays) * scale):
            await store.append(session_id, _batch(f"c{i}"))


async def test_cancelled_appends_are_whole_and_leak_no_connection(redis_url: str) -> None:
    prefix = f"pstest:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_url, prefix=prefix, max_connections=3, pool_timeout=2)
    try:
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(_cancel_many, store, f"c{n}", 150)
        done = [await _assert_whole(store, f"c{n}") for n in range(3)]
        assert 0 < sum(done) < 450, done
        own = store._commands  # appends run on the store's own connections
        assert own is not None
        assert 0 < own.made <= 3
        assert own.idle == own.made  # every one given back, cancelled or not
        # Every connection is usable: 3 x 20 concurrent calls through 3 connections.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n in range(60):
                    tg.start_soon(store.append, f"after{n % 3}", _batch(f"a{n}"))
        for n in range(3):
            assert await _assert_whole(store, f"after{n}") == 20
        assert own.made <= 3
    finally:
        await store.delete_by_prefix("")
        await store.aclose()


@needs_cluster_redis_py
async def test_cancelled_appends_on_the_cluster(redis_cluster_url: str) -> None:
    prefix = f"pstest:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_cluster_url, prefix=prefix, max_connections=8)
    try:
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(_cancel_many, store, f"c{n}", 100, 3.0)
        await anyio.sleep(0.05)  # let redis-py finish disconnecting what was cancelled
        done = [await _assert_whole(store, f"c{n}") for n in range(3)]
        assert 0 < sum(done) < 300, done
        client = store.client
        assert isinstance(client, RedisCluster)
        for node in client.get_nodes():
            assert len(node._free) == len(node._connections), node.name
        for n in range(3):
            await store.append(f"c{n}", _batch("last"))
            assert await _assert_whole(store, f"c{n}") == done[n] + 1
        assert sorted([k async for k in store.list_keys("")]) == ["c0", "c1", "c2"]
    finally:
        await store.delete_by_prefix("")
        await store.aclose()

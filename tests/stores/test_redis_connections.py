"""The connections a RedisStore that made its own client keeps for its single commands
(``promptstate.stores._redis_connections``): few, reused, bounded, queued, safe to reuse after
a cancelled or failed call, and after the server closed them."""

from __future__ import annotations

import os
import random
import signal
import uuid

import anyio
import pytest

pytest.importorskip("redis")

from redis.asyncio import Redis

from promptstate import Message, StoreUnavailableError
from promptstate.stores.redis import RedisStore
from tests.servers import RedisProcess

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.usefixtures("sweep_orphaned_sockets"),
]


def _named(redis_url: str, name: str) -> str:
    sep = "&" if "?" in redis_url else "?"
    return f"{redis_url}{sep}client_name={name}"


async def _connections_named(raw: Redis, name: str) -> list[int]:
    """The ids of the server's client connections called ``name``."""
    clients = await raw.client_list()
    return [int(c["id"]) for c in clients if c.get("name") == name]


@pytest.fixture
async def raw(redis_url: str) -> Redis:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_single_commands_reuse_a_few_connections_of_the_stores_own(
    redis_url: str, raw: Redis
) -> None:
    name = f"ps-conn-{uuid.uuid4().hex[:12]}"
    store = RedisStore.from_url(
        _named(redis_url, name), prefix=f"{name}:", max_connections=4, pool_timeout=5
    )
    try:
        async with store:
            own = store._commands
            assert own is not None
            for i in range(50):
                await store.append("s", [Message("user", str(i))])
                assert len(await store.load("s", last=3)) == min(i + 1, 3)
            assert own.made == 1  # one call at a time: one connection, reused

            async def turn(n: int) -> None:
                window = await store.load(f"t{n}", last=50)
                await store.append(f"t{n}", [Message("user", f"{n}/{len(window)}")])

            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(turn, n % 8)
            assert own.made == 4 == own.size  # 40 calls at once queued for 4 connections
            assert own.idle == 4
            assert [len(await store.load(f"t{n}")) for n in range(8)] == [5] * 8
            # On the server: the store's 4, and the client's pool's one (the ping at open).
            assert len(await _connections_named(raw, name)) == 5
            await store.delete_by_prefix("")
        assert await _connections_named(raw, name) == []  # aclose closed them all
    finally:
        async with RedisStore.from_url(redis_url, prefix=f"{name}:") as cleanup:
            await cleanup.delete_by_prefix("")


async def test_a_borrowed_client_serves_every_call_from_its_own_pool(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    prefix = f"ps-conn-{uuid.uuid4().hex[:12]}:"
    try:
        store = RedisStore(client, prefix=prefix)
        assert store._commands is None  # the pool, and its retry policy, are the caller's
        await store.append("s", [Message("user", "hi")])
        assert [m.content for m in await store.load("s")] == ["hi"]
        assert client.connection_pool._available_connections  # type: ignore[union-attr]
        await store.delete_by_prefix("")
        await store.aclose()
    finally:
        await client.aclose()


async def test_connections_the_server_closed_while_idle_are_reconnected_first(
    redis_url: str, raw: Redis
) -> None:
    name = f"ps-conn-{uuid.uuid4().hex[:12]}"
    async with RedisStore.from_url(_named(redis_url, name), prefix=f"{name}:") as store:
        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(store.append, f"s{n}", [Message("user", str(n))])
        own = store._commands
        assert own is not None
        assert own.made == 6
        for _ in range(3):
            ids = await _connections_named(raw, name)
            assert ids
            for client_id in ids:  # only this test's connections: their name is its own
                await raw.client_kill_filter(_id=client_id)
            for _ in range(500):  # until the server has dropped them all
                if not await _connections_named(raw, name):
                    break
                await anyio.sleep(0.01)
            else:
                pytest.fail("CLIENT KILL left connections open")
            await anyio.sleep(0.05)  # the event loop sees each socket's EOF
            # Every call succeeds: none is sent on a connection the server closed.
            async with anyio.create_task_group() as tg:
                for n in range(6):
                    tg.start_soon(store.load, f"s{n}")
            assert [len(await store.load(f"s{n}")) for n in range(6)] == [1] * 6
        assert own.made == 6
        await store.delete_by_prefix("")


async def test_a_call_that_waits_beyond_pool_timeout_is_store_unavailable() -> None:
    with RedisProcess() as server:
        store = RedisStore.from_url(
            server.url, prefix="p:", max_connections=1, pool_timeout=0.1, socket_timeout=10
        )
        async with store:
            await store.append("s", [Message("user", "hi")])
            assert server.proc is not None
            pid = server.proc.pid
            loaded: list[int] = []

            async def slow_load() -> None:
                loaded.append(len(await store.load("s")))

            os.kill(pid, signal.SIGSTOP)  # the server hangs: the one connection stays busy
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow_load)
                    await anyio.sleep(0.05)
                    with pytest.raises(StoreUnavailableError, match="pool_timeout") as info:
                        await store.load("s")
                    assert info.value.__cause__ is not None
                    os.kill(pid, signal.SIGCONT)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert loaded == [1]  # the call that held the connection finished
            assert len(await store.load("s")) == 1


async def test_calls_cancelled_at_random_points_leave_no_reply_for_the_next_caller(
    redis_url: str,
) -> None:
    """Each session holds messages naming it; loads and appends are cancelled at random
    moments (before sending, mid-reply, after); every later read still gets its own
    session's reply, and every connection is back, idle."""
    prefix = f"ps-conn-{uuid.uuid4().hex[:12]}:"
    rng = random.Random(20261204)
    store = RedisStore.from_url(redis_url, prefix=prefix, max_connections=4, pool_timeout=5)
    sessions = [f"s{n}" for n in range(6)]
    try:
        for sid in sessions:
            await store.append(sid, [Message("user", f"{sid}/{i}") for i in range(60)])

        async def load(sid: str) -> None:
            for message in await store.load(sid, last=50):
                assert message.content.startswith(f"{sid}/"), (sid, message.content)

        async def append(sid: str, i: int) -> None:
            await store.append(sid, [Message("user", f"{sid}/x{i}")])

        delays = [0, 0, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005]
        cancelled = 0
        for i in range(150):
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + rng.choice(delays)
                async with anyio.create_task_group() as tg:
                    for sid in rng.sample(sessions, 4):
                        tg.start_soon(load, sid)
                        tg.start_soon(append, sid, i)
            cancelled += scope.cancelled_caught
        assert cancelled > 30  # most rounds were cut short somewhere
        own = store._commands
        assert own is not None
        assert own.idle == own.made <= 4
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    for sid in sessions:
                        tg.start_soon(load, sid)
        for sid in sessions:
            contents = [m.content for m in await store.load(sid)]
            assert contents[:60] == [f"{sid}/{i}" for i in range(60)]
            assert all(c.startswith(f"{sid}/x") for c in contents[60:])
            assert len(set(contents)) == len(contents)  # no append stored twice
    finally:
        await store.delete_by_prefix("")
        await store.aclose()


async def test_a_reply_later_than_socket_timeout_is_store_unavailable_and_never_read() -> None:
    with RedisProcess() as server:
        store = RedisStore.from_url(server.url, prefix="p:", socket_timeout=0.2, max_connections=1)
        async with store:
            await store.append("a", [Message("user", "from a")])
            await store.append("b", [Message("user", "from b")])
            assert server.proc is not None
            pid = server.proc.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                with anyio.fail_after(5):
                    with pytest.raises(StoreUnavailableError, match="socket_timeout") as info:
                        await store.load("a")
                assert info.value.__cause__ is not None
            finally:
                os.kill(pid, signal.SIGCONT)  # the server now answers the abandoned call
            # The one connection was dropped with the late reply: "b" reads its own.
            assert [m.content for m in await store.load("b")] == ["from b"]
            assert [m.content for m in await store.load("a")] == ["from a"]


async def test_a_call_that_outlives_aclose_leaves_no_connection_open() -> None:
    with RedisProcess() as server:
        store = RedisStore.from_url(
            server.url, prefix="p:", socket_timeout=10, max_connections=1, pool_timeout=10
        )
        await store.append("s", [Message("user", "hi")])
        assert server.proc is not None
        pid = server.proc.pid
        own = store._commands
        assert own is not None
        outcome: list[object] = []

        async def straggler() -> None:
            try:
                outcome.append(len(await store.load("s")))
            except StoreUnavailableError as exc:
                outcome.append(exc)

        os.kill(pid, signal.SIGSTOP)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(straggler)  # waits for a reply
                tg.start_soon(straggler)  # waits for the one connection
                await anyio.sleep(0.05)
                await store.aclose(timeout=0.1)  # gives up waiting for the straggler
                os.kill(pid, signal.SIGCONT)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert len(outcome) == 2  # both ended, one way or the other
        assert own.made == 1
        assert not any(c.is_connected for c in own._made)

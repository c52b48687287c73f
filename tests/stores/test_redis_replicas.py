"""RedisStore against servers with replicas: ``wait_replicas`` and a Cluster failover.

The Cluster here has three primaries and one replica each (six ``redis-server`` processes on
spare loopback ports, ``cluster-node-timeout`` 1 s, tests/redis_cluster.py); the single-Redis
tests start a primary and, where they need one, a replica (tests/servers.py). Replicas are
made to fall behind with SIGSTOP, and a primary is killed with SIGKILL, as in a crash.
"""

from __future__ import annotations

import os
import random
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest

pytest.importorskip("redis")

from redis.asyncio import Redis, RedisCluster

from promptstate import Message, State, StoreUnavailableError, ValidationError, open_store
from promptstate.stores.base import TURN_ID_KEY
from promptstate.stores.redis import RedisStore
from tests.redis_cluster import RedisClusterProcess
from tests.servers import RedisProcess, missing
from tests.stores.redis_versions import needs_cluster_redis_py

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.usefixtures("sweep_orphaned_sockets"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcess]:
    """Three primaries with a replica each, for this module only (the failover test, which
    runs last, kills one of them)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        missing("redis-py is not installed: pip install 'promptstate[redis]'")
    with RedisClusterProcess(replicas=1, node_timeout=1000) as made:
        yield made


@pytest.fixture
async def raw(cluster: RedisClusterProcess) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis"))
    await client.initialize()
    yield client
    await client.aclose()


def _prefix() -> str:
    return f"pstest:{uuid.uuid4().hex}:"


class _Stopped:
    """SIGSTOP a server process for the duration of a ``with``: it keeps its connections but
    answers nothing, so a primary's replica falls behind (its ``WAIT`` gets no ack)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


async def _on_replica(port: int, key: bytes, *, cluster: bool = True) -> int:
    """``LLEN`` of ``key`` read from the replica on ``port`` (in a Cluster with ``READONLY``,
    so that the replica answers instead of redirecting)."""
    client = Redis(host="127.0.0.1", port=port)
    try:
        if cluster:
            await client.execute_command("READONLY")
        return int(await client.llen(key))
    finally:
        await client.aclose()


async def _header_version(port: int, key: bytes) -> int:
    """The version field of a session header, read from the replica on ``port``."""
    client = Redis(host="127.0.0.1", port=port)
    try:
        await client.execute_command("READONLY")
        return int(await client.hget(key, "v"))  # type: ignore[arg-type]
    finally:
        await client.aclose()


def _replica_of(cluster: RedisClusterProcess, primary: int) -> int:
    for port in cluster.replica_ports():
        out = cluster.cli(port, "info", "replication")
        if f"master_port:{primary}" in out:
            return port
    raise AssertionError(f"no replica of the primary on port {primary}")


# -- wait_replicas ----------------------------------------------------------------------------


async def test_wait_replicas_writes_are_on_the_replica_when_they_return(
    cluster: RedisClusterProcess, raw: RedisCluster
) -> None:
    prefix = _prefix()
    store = RedisStore.from_url(cluster.url, prefix=prefix, wait_replicas=1)
    try:
        assert await store.append("a", [Message("user", "one")]) == 1
        assert await store.append_turn("a", [Message("user", "two")], turn_id="t2") == 2
        await store.save("a", [Message("user", "three")])
        state = await store.set("b", State(conversation_id="b", messages=[Message("user", "x")]))
        assert state.version == 1
        await store.fork("b", "c")
        await store.append("c", [Message("user", "y"), Message("user", "z")])
        assert await store.truncate("c", 2) == 2
        await store.merge_metadata("b", {"k": 1})
        # save replaced a's history; c was forked from b, grew to 3 and was cut to 2
        for session, length in (("a", 1), ("b", 1), ("c", 2)):
            key = store._keys(session)[1]
            replica = _replica_of(cluster, cluster.primary_of(key))
            assert await _on_replica(replica, key) == length
        header = store._keys("b")[0]
        replica = _replica_of(cluster, cluster.primary_of(header))
        assert await _header_version(replica, header) == 2  # the metadata merge is there too
        assert await store.delete("c")
        key = store._keys("c")[1]
        assert await _on_replica(_replica_of(cluster, cluster.primary_of(key)), key) == 0
    finally:
        await store.aclose()
        async for key in raw.scan_iter(match=prefix + "*", count=1000):
            await raw.unlink(key)


async def test_a_write_its_replica_did_not_acknowledge_says_so(
    cluster: RedisClusterProcess, raw: RedisCluster
) -> None:
    prefix = _prefix()
    store = RedisStore.from_url(cluster.url, prefix=prefix, wait_replicas=1, wait_timeout=0.2)
    try:
        key = store._keys("s")[1]
        replica = _replica_of(cluster, cluster.primary_of(key))
        with _Stopped(cluster.procs[replica].pid), pytest.raises(StoreUnavailableError) as info:
            await store.append("s", [Message("user", "two")])
        text = str(info.value)
        assert "0 of 1 replica" in text
        assert "appending to key 's'" in text
        assert "happened on the primary" in text
        assert "wait_timeout=0.2" in text
        # The write was made (and reached the replica once it ran again).
        assert [m.content for m in await store.load("s")] == ["two"]
        # Two replicas asked of a primary that has one: never enough.
        greedy = RedisStore.from_url(cluster.url, prefix=prefix, wait_replicas=2, wait_timeout=0.1)
        with pytest.raises(StoreUnavailableError, match=r"[01] of 2 replicas"):
            await greedy.append("s", [Message("user", "three")])
        await greedy.aclose()
    finally:
        await store.aclose()
        async for k in raw.scan_iter(match=prefix + "*", count=1000):
            await raw.unlink(k)


async def test_single_redis_without_replicas_and_wait_replicas_errors_clearly() -> None:
    with RedisProcess() as server:
        store = open_store(server.url + "?wait_replicas=1&wait_timeout=0.1")
        assert isinstance(store, RedisStore)
        with pytest.raises(StoreUnavailableError) as info:
            await store.append("x", [Message("user", "hi")])
        text = str(info.value)
        assert "0 of 1 replica" in text
        assert "happened on the primary" in text
        assert "connected replicas" in text
        assert [m.content for m in await store.load("x")] == ["hi"]
        await store.aclose()


async def test_single_redis_with_a_replica_waits_for_it() -> None:
    with (
        RedisProcess(None, "--repl-diskless-sync-delay", "0") as primary,
        RedisProcess() as replica,
    ):
        await _replicate(replica.port, primary.port)
        store = RedisStore.from_url(primary.url, wait_replicas=1, wait_timeout=2.0)
        assert await store.append("x", [Message("user", "hi")]) == 1
        assert await _on_replica(replica.port, store._keys("x")[1], cluster=False) == 1
        assert replica.proc is not None
        short = RedisStore.from_url(primary.url, wait_replicas=1, wait_timeout=0.2)
        with (
            _Stopped(replica.proc.pid),
            pytest.raises(StoreUnavailableError, match="0 of 1 replica"),
        ):
            await short.append("x", [Message("user", "again")])
        assert len(await store.load("x")) == 2
        await short.aclose()
        await store.aclose()


async def test_a_retried_turn_found_stored_is_waited_for_again() -> None:
    """``append_turn`` that finds its turn stored already (a retried save) writes nothing, and
    still returns only once a replica has the turn, on a connection whose own last write a
    replica did acknowledge. (Redis 7.2+ counts a ``WAIT`` from a connection's last *write*,
    so the store writes something harmless first; Redis 7.0, tested here, counts from the
    connection's last command of any kind, so this passes there without that write too.)"""
    with (
        RedisProcess(None, "--repl-diskless-sync-delay", "0") as primary,
        RedisProcess() as replica,
    ):
        await _replicate(replica.port, primary.port)
        assert replica.proc is not None
        turn = [Message("user", "q"), Message("assistant", "a")]
        retrier = RedisStore.from_url(
            primary.url, wait_replicas=1, wait_timeout=1.0, max_connections=1
        )
        await retrier.append_turn("t", [Message("user", "hello")], turn_id="t0")
        short = RedisStore.from_url(primary.url, wait_replicas=1, wait_timeout=0.2)
        with _Stopped(replica.proc.pid):
            with pytest.raises(StoreUnavailableError, match="0 of 1 replica"):
                await short.append_turn("t", turn, turn_id="t1")
            with pytest.raises(StoreUnavailableError, match="0 of 1 replica"):
                await retrier.append_turn("t", turn, turn_id="t1")
        assert await retrier.append_turn("t", turn, turn_id="t1") == 3
        assert [m.content for m in await retrier.load("t")] == ["hello", "q", "a"]
        for store in (retrier, short):
            await store.aclose()


async def _replicate(replica: int, primary: int) -> None:
    """Make the server on ``replica`` a replica of the one on ``primary``; wait until the
    primary counts it as online (only then does its ``WAIT`` ask it for acknowledgements)."""
    client = Redis(host="127.0.0.1", port=replica)
    source = Redis(host="127.0.0.1", port=primary)
    try:
        await client.execute_command("REPLICAOF", "127.0.0.1", primary)
        with anyio.fail_after(20):
            while (await source.info("replication")).get("slave0", {}).get("state") != "online":  # noqa: ASYNC110
                await anyio.sleep(0.05)
    finally:
        await client.aclose()
        await source.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait_replicas": -1}, "wait_replicas"),
        ({"wait_replicas": True}, "wait_replicas"),
        ({"wait_replicas": 1, "wait_timeout": 0}, "wait_timeout"),
        ({"wait_replicas": 1, "wait_timeout": 6.0}, "socket_timeout"),
    ],
)
def test_bad_wait_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RedisStore.from_url("redis://127.0.0.1:1/0", **options)  # type: ignore[arg-type]


# -- failover ---------------------------------------------------------------------------------


@needs_cluster_redis_py
async def test_failover_mid_run(cluster: RedisClusterProcess) -> None:
    """Writers keep writing turns (retrying a failed one with the same turn id, as the
    pipeline's save does) while the primary of some of their sessions is killed: calls raise
    StoreUnavailableError until the cluster has failed over, then the same store objects
    carry on against the promoted replica. No session holds half a turn or a turn twice;
    with ``wait_replicas=1`` no acknowledged turn is lost either, and while the promoted
    replica has no replica of its own, its writes are not confirmed."""
    prefix = _prefix()
    plain = RedisStore.from_url(cluster.url, prefix=prefix + "p:", socket_timeout=1.0)
    waited = RedisStore.from_url(
        cluster.url, prefix=prefix + "w:", socket_timeout=1.0, wait_replicas=1, wait_timeout=0.3
    )
    stores = {"plain": plain, "waited": waited}
    sessions = [f"s{i}" for i in range(12)]
    # The slot depends on the session id only (the prefix is outside the hash tag), so s0 is
    # on the victim for both stores.
    victim = cluster.primary_of(plain._keys("s0")[0])
    on_victim = [s for s in sessions if cluster.primary_of(plain._keys(s)[0]) == victim]
    acked: dict[tuple[str, str], list[str]] = {(n, s): [] for n in stores for s in sessions}
    errors: list[tuple[str, str, BaseException]] = []
    stop = anyio.Event()

    async def writer(name: str, session: str) -> None:
        store = stores[name]
        rng = random.Random(f"{name}{session}")
        turn = 0
        while not stop.is_set():
            turn_id = f"{session}-{turn}"
            messages = [Message("user", f"{turn_id} q"), Message("assistant", f"{turn_id} a")]
            while True:
                try:
                    await store.append_turn(session, messages, turn_id=turn_id)
                except StoreUnavailableError as exc:
                    errors.append((name, session, exc))
                    if stop.is_set():
                        return
                    await anyio.sleep(0.02 + rng.random() * 0.03)
                else:
                    acked[name, session].append(turn_id)
                    break
            turn += 1
            await anyio.sleep(rng.random() * 0.005)

    async def until(check: Callable[[], bool]) -> None:
        with anyio.fail_after(30):
            while not check():  # noqa: ASYNC110 (the writers' progress, polled)
                await anyio.sleep(0.02)

    def progressed(names: tuple[str, ...], mark: dict[tuple[str, str], int]) -> bool:
        return all(len(acked[n, s]) >= mark[n, s] + 3 for n in names for s in sessions)

    async with anyio.create_task_group() as tg:
        for name in stores:
            for session in sessions:
                tg.start_soon(writer, name, session)
        await until(lambda: all(len(v) >= 5 for v in acked.values()))
        cluster.kill(victim)
        promoted = await anyio.to_thread.run_sync(cluster.wait_for_failover, victim)
        # The same store object writes to the victim's sessions on the promoted replica.
        mark = after_failover = {k: len(v) for k, v in acked.items()}
        await until(lambda: progressed(("plain",), mark))
        # ... but with wait_replicas=1 it cannot confirm them until that has a replica again.
        seen = len(errors)
        await until(
            lambda: any(
                n == "waited" and s in on_victim and "0 of 1 replicas" in str(e)
                for n, s, e in errors[seen:]
            )
        )
        await anyio.to_thread.run_sync(cluster.restart, victim)
        await anyio.to_thread.run_sync(cluster.wait_for_replica, victim)
        mark = {k: len(v) for k, v in acked.items()}
        await until(lambda: progressed(("plain", "waited"), mark))
        stop.set()

    assert cluster.primary_of(plain._keys("s0")[0]) == promoted
    # Calls failed while the cluster failed over, with StoreUnavailableError only (anything
    # else would have ended the task group).
    assert any(n == "plain" and s in on_victim for n, s, _ in errors)
    for name, store in stores.items():
        lost: list[str] = []
        for session in sessions:
            stored = await store.load(session)
            # Whole turns only: every turn is its question and its answer, in order.
            assert len(stored) % 2 == 0
            ids = [str(m.metadata.get(TURN_ID_KEY)) for m in stored[::2]]
            for turn_id, q, a in zip(ids, stored[::2], stored[1::2], strict=True):
                assert (q.content, a.content) == (f"{turn_id} q", f"{turn_id} a")
            # No turn twice, and the turns in the order they were written.
            assert len(set(ids)) == len(ids)
            assert ids == sorted(ids, key=lambda t: int(t.rsplit("-", 1)[1]))
            lost += [t for t in acked[name, session] if t not in ids]
            # What the promoted replica acknowledged is all there, with or without WAIT.
            assert set(acked[name, session][after_failover[name, session] :]) <= set(ids)
        if name == "waited":
            # A replica had every acknowledged turn before it was promoted.
            assert lost == []
    for store in stores.values():
        await store.delete_by_prefix("")
        await store.aclose()

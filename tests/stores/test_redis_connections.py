"""The connections a RedisStore that made its own client keeps for its single commands
(``promptstate.stores._redis_connections``): few, reused, bounded, queued, safe to reuse after
a cancelled or failed call, and after the server closed them."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest

pytest.importorskip("redis")

import redis.exceptions as redis_errors
from redis.asyncio import Redis

from promptstate import Message, StoreUnavailableError
from promptstate.stores._redis_connections import CommandConnections
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


@contextlib.contextmanager
def _hung(server: RedisProcess) -> Iterator[Callable[[], None]]:
    """The throwaway server stopped (SIGSTOP: it accepts connections, answers nothing) for
    the block; yields ``resume``, to let it answer before the block ends (it resumes then in
    any case)."""
    assert server.proc is not None
    pid = server.proc.pid

    def resume() -> None:
        os.kill(pid, signal.SIGCONT)

    os.kill(pid, signal.SIGSTOP)
    try:
        yield resume
    finally:
        resume()


async def _until_gone(raw: Redis, name: str) -> None:
    """Wait until the server lists no connection called ``name`` (it frees a closed client
    a moment after seeing its EOF, so CLIENT LIST may show it briefly)."""
    for _ in range(500):
        if not await _connections_named(raw, name):
            return
        await anyio.sleep(0.01)
    pytest.fail(f"connections named {name!r} stayed open: {await _connections_named(raw, name)}")


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
        await _until_gone(raw, name)  # aclose closed them all
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
            await _until_gone(raw, name)
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
            loaded: list[int] = []

            async def slow_load() -> None:
                loaded.append(len(await store.load("s")))

            with _hung(server) as resume:  # the one connection stays busy
                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow_load)
                    await anyio.sleep(0.05)
                    with pytest.raises(StoreUnavailableError, match="pool_timeout") as info:
                        await store.load("s")
                    assert info.value.__cause__ is not None
                    resume()
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
            with _hung(server):  # then answers the abandoned call
                with anyio.fail_after(5):
                    with pytest.raises(StoreUnavailableError, match="socket_timeout") as info:
                        await store.load("a")
                assert info.value.__cause__ is not None
            # The one connection was dropped with the late reply: "b" reads its own.
            assert [m.content for m in await store.load("b")] == ["from b"]
            assert [m.content for m in await store.load("a")] == ["from a"]


async def test_a_call_that_outlives_aclose_leaves_no_connection_open() -> None:
    with RedisProcess() as server:
        store = RedisStore.from_url(
            server.url, prefix="p:", socket_timeout=10, max_connections=1, pool_timeout=10
        )
        await store.append("s", [Message("user", "hi")])
        own = store._commands
        assert own is not None
        outcome: list[object] = []

        async def straggler() -> None:
            try:
                outcome.append(len(await store.load("s")))
            except StoreUnavailableError as exc:
                outcome.append(exc)

        with _hung(server) as resume:
            async with anyio.create_task_group() as tg:
                tg.start_soon(straggler)  # waits for a reply
                tg.start_soon(straggler)  # waits for the one connection
                await anyio.sleep(0.05)
                await store.aclose(timeout=0.1)  # gives up waiting for the straggler
                resume()
        assert len(outcome) == 2  # both ended, one way or the other
        assert own.made == 1
        assert not any(c.is_connected for c in own._made)


async def test_opening_a_connection_has_its_own_deadline() -> None:
    with RedisProcess() as server:
        store = RedisStore.from_url(
            server.url, prefix="p:", socket_connect_timeout=0.1, socket_timeout=0.2
        )
        with _hung(server):  # TCP still connects (the backlog); the handshake hangs
            with anyio.fail_after(5):
                with pytest.raises(StoreUnavailableError, match="could not connect") as info:
                    await store.load("s")
            assert info.value.__cause__ is not None
        assert await store.load("s") == []  # and the next call connects
        await store.aclose()


@pytest.mark.parametrize("how", ["password and database 3", "unix socket"])
async def test_own_connections_open_as_the_pool_would(how: str) -> None:
    """AUTH, SELECT and a unix socket come from the client's settings."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "redis.sock")
        with RedisProcess(None, "--unixsocket", sock, "--unixsocketperm", "700") as server:
            if how.startswith("password"):
                admin = Redis.from_url(server.url)  # the throwaway server's own settings
                await admin.config_set("requirepass", "s3cret")
                await admin.aclose()
                url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
            else:
                url = f"unix://{sock}?db=0"
            async with RedisStore.from_url(url, prefix="p:") as store:
                assert store._commands is not None
                await store.append("s", [Message("user", "hi")])
                assert [m.content for m in await store.load("s")] == ["hi"]
                assert store._commands.made == 1
            probe = Redis.from_url(url)
            try:
                assert await probe.exists(b"p:{s}:m") == 1  # in the database asked for
            finally:
                await probe.aclose()


async def test_a_resp3_client_serves_every_call_from_its_pool(redis_url: str) -> None:
    sep = "&" if "?" in redis_url else "?"
    prefix = f"ps-conn-{uuid.uuid4().hex[:12]}:"
    async with RedisStore.from_url(f"{redis_url}{sep}protocol=3", prefix=prefix) as store:
        assert store._commands is None  # push messages need redis-py's pool
        await store.append("s", [Message("user", "hi")])
        assert [m.content for m in await store.load("s")] == ["hi"]
        await store.delete_by_prefix("")


class _Conn:
    """A connection whose reply comes when the test says (``reply``), and, as redis-py 5-7
    may leave one, that does not disconnect itself when a read is cancelled. Only the
    methods CommandConnections calls; ``fail_disconnect`` makes closing it fail, as a TLS
    shutdown that times out does."""

    fail_disconnect = False

    def __init__(self, **options: object) -> None:
        self.is_connected = False
        self.reading = anyio.Event()
        self.reply = anyio.Event()
        self.replies = 0
        self.closed = 0

    async def connect(self) -> None:
        self.is_connected = True

    async def can_read(self) -> bool:
        return False

    can_read_destructive = can_read

    def pack_command(self, *args: object) -> list[bytes]:
        return [repr(args).encode()]

    async def send_packed_command(self, command: object, check_health: bool = True) -> None:
        pass

    async def read_response(self, disconnect_on_error: bool = True) -> bytes:
        self.reading.set()
        await self.reply.wait()
        self.replies += 1
        return b"OK"

    async def disconnect(self, nowait: bool = False) -> None:
        self.closed += 1
        if self.fail_disconnect:
            raise OSError("closing timed out")
        self.is_connected = False


class _Pool:
    def __init__(self, cls: type[_Conn]) -> None:
        self.connection_class = cls
        self.connection_kwargs = {"socket_timeout": 0.2, "socket_connect_timeout": 0.1}


async def _cancel_while_reading(own: CommandConnections, *, reply: bool) -> _Conn:
    scope = anyio.CancelScope()

    async def call() -> None:
        with scope:
            await own.execute("SET", "k", "v")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        conn: _Conn = own._made[0]  # type: ignore[assignment]
        await conn.reading.wait()
        scope.cancel()
        if reply:
            await anyio.sleep(0.01)  # the cancelled call waits for the reply...
            conn.reply.set()  # ...which comes
    return conn


async def test_a_call_cancelled_after_sending_waits_for_its_reply_and_keeps_its_connection() -> (
    None
):
    own = CommandConnections(_Pool(_Conn), 2, 1.0)  # type: ignore[arg-type]
    conn = await _cancel_while_reading(own, reply=True)
    # The command had gone out: the call left only once its reply was read, so the command
    # ran before the caller learnt of the cancellation, and nothing unread is left.
    assert conn.replies == 1
    assert conn.closed == 0
    assert own.made == own.idle == 1
    assert own._permits.free == 2
    await own.aclose()


@pytest.mark.parametrize("fail_disconnect", [False, True])
async def test_a_reply_that_never_comes_costs_the_connection(fail_disconnect: bool) -> None:
    kind = type("Conn", (_Conn,), {"fail_disconnect": fail_disconnect})
    own = CommandConnections(_Pool(kind), 2, 1.0)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        conn = await _cancel_while_reading(own, reply=False)  # gives up after socket_timeout
    assert conn.replies == 0
    assert conn.closed == 1
    if fail_disconnect:  # still connected, a reply maybe on its way: never lent again
        assert own.made == 0
        assert own.idle == 0
    else:  # closed: lent again, and reconnected by the next call
        assert own.made == own.idle == 1
    assert own._permits.free == 2  # the permit came back either way
    await own.aclose()  # a failing close does not stop it


async def test_aclose_closes_every_connection_even_when_one_fails() -> None:
    kinds = [type("Conn", (_Conn,), {"fail_disconnect": f}) for f in (True, False, True)]
    own = CommandConnections(_Pool(_Conn), 3, 1.0)  # type: ignore[arg-type]
    conns = [kind() for kind in kinds]
    for conn in conns:
        await conn.connect()
    own._made.extend(conns)  # type: ignore[arg-type]
    await own.aclose()
    # each was asked to close: the failing ones twice (wait, then no wait)
    assert [c.closed for c in conns] == [2, 1, 2]
    with pytest.raises(redis_errors.ConnectionError, match="closed"):
        await own.execute("GET", "k")


async def test_a_call_in_a_cancelled_scope_does_not_start(redis_url: str) -> None:
    prefix = f"ps-conn-{uuid.uuid4().hex[:12]}:"
    async with RedisStore.from_url(redis_url, prefix=prefix) as store:
        assert await store.load("s") == []  # its connection is open: sending need not wait
        for _ in range(20):
            with anyio.move_on_after(0) as scope:  # its deadline has passed on entry
                await store.append("s", [Message("user", "never")])
            assert scope.cancelled_caught
        assert await store.load("s") == []

"""PostgresStore on a real PostgreSQL: the conformance suite plus what only it has."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from promptstate import (
    ClosedError,
    ConflictError,
    CorruptStateError,
    Message,
    PostgresStore,
    State,
    StoreUnavailableError,
    ValidationError,
    open_store,
)
from promptstate.locks import SupportsLease
from promptstate.stores._postgres_sql import page_sql
from promptstate.stores.base import SessionQuery
from promptstate.stores.postgres import MIGRATIONS
from tests.servers import PostgresProcess, drop_postgres_tables, free_port

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]


def unique_table() -> str:
    return f"ps_test_{uuid.uuid4().hex[:16]}"


drop_tables = drop_postgres_tables


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[Any]:
    """An admin connection of the test's own (never one of a store's pool)."""
    conn = await asyncpg.connect(postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def table(postgres_dsn: str) -> AsyncIterator[str]:
    name = unique_table()
    yield name
    await drop_tables(postgres_dsn, name)


async def wait_for(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll the server until ``check()`` holds (10 s at most): server state has no events."""
    with anyio.fail_after(10):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


def msgs(tag: str, n: int) -> list[Message]:
    return [Message("user", f"{tag}{i}") for i in range(n)]


# -- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        'x"; DROP TABLE users; --',
        "a-b",
        "1abc",
        "a b",
        "tab$le",
        "x" * 49,
        "a.b.c",
        ".x",
        "x.",
        'sch"ema.x',
        "ümlaut",
        None,
        3,
    ],
)
def test_table_name_is_validated(bad: object) -> None:
    with pytest.raises(ValidationError, match="table_name"):
        PostgresStore.from_dsn("postgresql://h/db", table_name=bad)  # type: ignore[arg-type]


def test_sqlalchemy_dsn_is_refused_with_a_hint() -> None:
    with pytest.raises(ValidationError) as info:
        PostgresStore.from_dsn("postgresql+asyncpg://me:hunter2@db.example/app")
    message = str(info.value)
    assert "postgresql://me:***@db.example/app" in message
    assert "hunter2" not in message
    with pytest.raises(ValidationError, match="postgresql://"):
        open_store("postgres+asyncpg://me:hunter2@db.example/app")
    with pytest.raises(ValidationError, match="postgresql://"):
        PostgresStore.from_dsn("mysql://me:hunter2@db.example/app")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("min_size", -1),
        ("max_size", 0),
        ("max_size", True),
        ("acquire_timeout", 0),
        ("acquire_timeout", "1"),
        ("connect_timeout", -1.0),
        ("max_inactive_connection_lifetime", -1),
    ],
)
def test_pool_options_are_validated(option: str, value: object) -> None:
    with pytest.raises(ValidationError, match=option):
        PostgresStore.from_dsn("postgresql://h/db", **{option: value})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="min_size"):
        PostgresStore.from_dsn("postgresql://h/db", min_size=5, max_size=2)


def test_a_single_connection_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"asyncpg\.Pool"):
        PostgresStore(object())


async def test_refused_connection_is_store_unavailable_without_password() -> None:
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/test"
    store = PostgresStore.from_dsn(dsn, connect_timeout=2)
    assert "hunter2" not in repr(store)
    with pytest.raises(StoreUnavailableError) as info:
        await store.append("k", [Message("user", "x")])
    assert "hunter2" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(StoreUnavailableError):
        await store.get("k")
    await store.aclose()


async def test_open_store_url(postgres_dsn: str, table: str) -> None:
    store = open_store(f"{postgres_dsn}?table_name={table}&max_size=2", ttl=60)
    assert isinstance(store, PostgresStore)
    assert store.table_name == table
    assert store.ttl == 60
    async with store:
        assert await store.append("u", msgs("m", 2)) == 2
    assert store.closed


async def test_schema_qualified_table_name(postgres_dsn: str, table: str) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=f"public.{table}") as store:
        await store.append("q", msgs("m", 3))
        assert [m.content for m in await store.load("q", last=2)] == ["m1", "m2"]


async def test_borrowed_pool_stays_open_and_acquire_timeout(postgres_dsn: str, table: str) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
    try:
        store = PostgresStore(pool, table_name=table, acquire_timeout=0.2)
        await store.append("b", msgs("m", 1))
        async with pool.acquire():  # the pool's only connection is busy
            with pytest.raises(StoreUnavailableError, match="no PostgreSQL connection"):
                await store.append("b", msgs("n", 1))
        assert [m.content for m in await store.load("b")] == ["m0"]
        await store.aclose()
        assert await pool.fetchval("SELECT 1") == 1  # borrowed: not closed by the store
    finally:
        await pool.close()


async def test_pgbouncer_mode_keeps_no_prepared_statements(postgres_dsn: str, table: str) -> None:
    for pgbouncer, expect_cached in ((True, False), (False, True)):
        async with PostgresStore.from_dsn(
            postgres_dsn, table_name=table, pgbouncer=pgbouncer, min_size=1, max_size=1
        ) as store:
            await store.append("p", msgs("m", 2))
            assert len(await store.load("p", last=1)) == 1
            async with store._pool.acquire() as conn:
                named = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
            assert (named > 0) is expect_cached


# -- schema, plans ----------------------------------------------------------------------------


async def test_load_last_reads_only_the_rows_asked_for(
    postgres_dsn: str, table: str, pg: Any
) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        for start in range(0, 10_000, 2_000):
            batch = [Message("user", f"m{i}") for i in range(start, start + 2_000)]
            await store.append("long", batch)
        assert (await store.get("long")).version == 5
        last = await store.load("long", last=20)
        assert [m.content for m in last] == [f"m{i}" for i in range(9_980, 10_000)]
        await pg.execute(f'ANALYZE "{table}"; ANALYZE "{table}_messages"')
        for mode in ("force_custom_plan", "force_generic_plan"):
            await pg.execute(f"SET plan_cache_mode = {mode}")
            stmt = await pg.prepare("EXPLAIN (ANALYZE, COSTS OFF) " + store._sql.load_last)
            plan = "\n".join(row[0] for row in await stmt.fetch("long", 20))
            scan = next(line for line in plan.splitlines() if f"{table}_messages" in line)
            assert "Index Scan Backward" in scan, plan
            assert "rows=20 " in scan, plan


async def test_prefix_listing_is_served_by_the_primary_key(
    postgres_dsn: str, table: str, pg: Any
) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        await store.append("a%_\\b:1", msgs("m", 1))
        from promptstate.stores._postgres_sql import key_range

        where, args = key_range("a%_\\", None, 1)
        await pg.execute("SET enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in await pg.fetch(
                f'EXPLAIN SELECT s.key FROM "{table}" s WHERE {where} ORDER BY s.key', *args
            )
        )
        assert f"Index Only Scan using {table}_pkey" in plan or "Index Scan" in plan, plan
        assert "Index Cond: ((key >= " in plan, plan
        assert [k async for k in store.list_keys("a%_\\")] == ["a%_\\b:1"]


@pytest.mark.slow
async def test_concurrent_setup_in_four_processes_migrates_once(
    postgres_dsn: str, table: str, pg: Any
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_setup_in_process, args=(postgres_dsn, table, barrier, results))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        await anyio.to_thread.run_sync(proc.join, 60)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert all(proc.exitcode == 0 for proc in procs), outcomes
    applied = sorted(v for outcome in outcomes for v in outcome)
    assert applied == [v for v, _, _ in MIGRATIONS], outcomes
    rows = await pg.fetch(f'SELECT version FROM "{table}_migrations" ORDER BY version')
    assert [r[0] for r in rows] == [v for v, _, _ in MIGRATIONS]
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        assert await store.setup() == []  # idempotent
        assert await store.append("after", msgs("m", 1)) == 1


def _setup_in_process(dsn: str, table: str, barrier: Any, results: Any) -> None:
    async def run() -> list[int]:
        store = PostgresStore.from_dsn(dsn, table_name=table, min_size=1, max_size=1)
        try:
            await store._get_pool()  # connect first, so the race is on setup() itself
            barrier.wait(timeout=30)
            return await store.setup()
        finally:
            await store.aclose()

    try:
        results.put(asyncio.run(run()))
    except BaseException as exc:
        results.put(["error", repr(exc)])
        raise


async def test_setup_refuses_a_foreign_table(postgres_dsn: str, table: str, pg: Any) -> None:
    await pg.execute(f'CREATE TABLE "{table}" (id int)')
    store = PostgresStore.from_dsn(postgres_dsn, table_name=table)
    with pytest.raises(ValidationError, match="table_name"):
        await store.setup()
    await store.aclose()
    assert await pg.fetchval(f'SELECT count(*) FROM "{table}"') == 0  # left alone


# -- faults -----------------------------------------------------------------------------------


async def _backends(pg: Any, app: str, *, waiting: bool = False) -> list[int]:
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
    if waiting:
        sql += " AND wait_event_type = 'Lock'"
    # Inside a transaction pg_stat_activity is a snapshot taken once: take a fresh one.
    await pg.execute("SELECT pg_stat_clear_snapshot()")
    return [row[0] for row in await pg.fetch(sql, app)]


async def test_backend_killed_mid_append(postgres_dsn: str, table: str, pg: Any) -> None:
    app = f"ps-kill-{uuid.uuid4().hex[:12]}"
    async with PostgresStore.from_dsn(
        postgres_dsn, table_name=table, application_name=app, min_size=1, max_size=2
    ) as store:
        await store.append("victim", msgs("before", 3))
        # Hold the session's row lock, so the next append is inside the server when we strike.
        async with pg.transaction():
            await pg.execute(f'SELECT 1 FROM "{table}" WHERE key = $1 FOR UPDATE', "victim")
            failure: list[BaseException] = []

            async def doomed() -> None:
                try:
                    await store.append("victim", msgs("lost", 4))
                except BaseException as exc:
                    failure.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(doomed)

                async def blocked() -> bool:
                    return bool(await _backends(pg, app, waiting=True))

                await wait_for(blocked, "the append to block on the row lock")
                pids = await _backends(pg, app, waiting=True)
                assert len(pids) == 1
                # Only our store's own backend, found by its application_name.
                await pg.execute("SELECT pg_terminate_backend($1)", pids[0])
        assert len(failure) == 1
        assert isinstance(failure[0], StoreUnavailableError), repr(failure[0])
        assert "victim" in str(failure[0])
        assert type(failure[0].__cause__).__module__.startswith("asyncpg")
        # Nothing half-written, and the pool recovers.
        state = await store.get("victim")
        assert [m.content for m in state.messages] == ["before0", "before1", "before2"]
        assert state.version == 1
        assert await store.append("victim", msgs("after", 2)) == 5
        assert [m.content for m in await store.load("victim", last=2)] == ["after0", "after1"]


async def test_idle_connections_killed_are_replaced(postgres_dsn: str, table: str, pg: Any) -> None:
    app = f"ps-idle-{uuid.uuid4().hex[:12]}"
    async with PostgresStore.from_dsn(
        postgres_dsn, table_name=table, application_name=app, min_size=2, max_size=2
    ) as store:
        await store.append("s", msgs("a", 1))
        pids = await _backends(pg, app)
        assert pids
        for pid in pids:
            await pg.execute("SELECT pg_terminate_backend($1)", pid)
        await anyio.sleep(0.2)  # let the client see the sockets close
        ok = 0
        for _ in range(4):  # at most the connections killed can fail, then it works again
            try:
                await store.append("s", msgs("b", 1))
                ok += 1
            except StoreUnavailableError:
                assert ok == 0
        assert ok >= 2
        assert len(await store.load("s")) == 1 + ok


async def test_sessions_run_in_parallel(postgres_dsn: str, table: str, pg: Any) -> None:
    """No store-wide lock: eight appends to eight locked rows all wait in the server at once."""
    app = f"ps-par-{uuid.uuid4().hex[:12]}"
    keys = [f"par:{i}" for i in range(8)]
    async with PostgresStore.from_dsn(
        postgres_dsn, table_name=table, application_name=app, min_size=1, max_size=8
    ) as store:
        for key in keys:
            await store.append(key, msgs("x", 1))
        async with anyio.create_task_group() as tg, pg.transaction():
            await pg.execute(
                f'SELECT 1 FROM "{table}" WHERE key = ANY($1::text[]) FOR UPDATE', keys
            )
            for key in keys:
                tg.start_soon(store.append, key, msgs("y", 1))

            async def all_waiting() -> bool:
                return len(await _backends(pg, app, waiting=True)) == len(keys)

            await wait_for(all_waiting, "all appends to wait on their rows together")
        for key in keys:
            assert [m.content for m in await store.load(key)] == ["x0", "y0"]


# -- TTL --------------------------------------------------------------------------------------


async def _rows(pg: Any, table: str) -> tuple[int, int]:
    sessions = await pg.fetchval(f'SELECT count(*) FROM "{table}"')
    messages = await pg.fetchval(f'SELECT count(*) FROM "{table}_messages"')
    return int(sessions), int(messages)


async def test_purge_expired(postgres_dsn: str, table: str, pg: Any) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table, ttl=0.3) as store:
        for i in range(3):
            await store.append(f"old:{i}", msgs("m", 2))
        await anyio.sleep(0.45)
        async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as keeper:
            await keeper.append("kept", msgs("m", 1))  # no TTL: never purged
        assert await _rows(pg, table) == (4, 7)
        assert await store.purge_expired() == 3
        assert await _rows(pg, table) == (1, 1)
        assert await store.purge_expired() == 0


async def test_writes_purge_expired_sessions_now_and_then(
    postgres_dsn: str, table: str, pg: Any
) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table, ttl=1.0) as store:
        for i in range(3):
            await store.append(f"old:{i}", msgs("m", 2))
        await anyio.sleep(1.1)
        assert await _rows(pg, table) == (3, 6)  # invisible, not yet removed
        await store.append("fresh", msgs("m", 1))
        assert await _rows(pg, table) == (1, 1)


async def test_expired_session_revived_by_set_starts_afresh(postgres_dsn: str, table: str) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table, ttl=0.3) as store:
        await store.append("r", msgs("old", 3))
        await anyio.sleep(0.45)
        stored = await store.set("r", State(conversation_id="r", messages=msgs("new", 1)))
        assert stored.version == 1
        assert [m.content for m in await store.load("r")] == ["new0"]
        await store.save("r", msgs("saved", 2))
        assert [m.content for m in await store.load("r", last=5)] == ["saved0", "saved1"]


# -- bad data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"user_id": "nul\x00inside"},
        {"user_id": 42},
        {"user_id": "\ud800"},
        {"total_cost": "free"},
        {"total_cost": float("nan")},
        {"created_at": "yesterday"},
        {"metadata": {"obj": object()}},
        {"messages": [Message("user", "x", metadata={"obj": object()})]},
    ],
)
async def test_unstorable_state_fields_raise_validation_error_and_store_nothing(
    postgres_dsn: str, table: str, change: dict[str, Any]
) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        await store.set("v", State(conversation_id="v", user_id="keep"))
        bad = msgspec.structs.replace(State(conversation_id="v"), **change)
        with pytest.raises(ValidationError):
            await store.set("v", bad)
        got = await store.get("v")
        assert (got.user_id, got.version) == ("keep", 1)


async def test_corrupt_rows_raise_corrupt_state_error(
    postgres_dsn: str, table: str, pg: Any
) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        await store.append("c", msgs("m", 2))
        await pg.execute(f'UPDATE "{table}_messages" SET data = $1 WHERE seq = 2', b"\xc1")
        with pytest.raises(CorruptStateError, match="'c'"):
            await store.get("c")
        with pytest.raises(CorruptStateError):
            await store.load("c", last=1)
        assert [m.content for m in await store.load("c", last=0)] == []


async def test_get_many_gives_each_position_its_own_state(postgres_dsn: str, table: str) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        await store.set("d", State(conversation_id="d", metadata={"raw": b"\x00\x01"}))
        first, second = await store.get_many(["d", "d"])
        assert first is not None
        assert second is not None
        assert first is not second
        assert first.metadata == {"raw": b"\x00\x01"}
        first.metadata["raw"] = b""
        assert second.metadata == {"raw": b"\x00\x01"}


async def test_dropped_tables_are_recreated(postgres_dsn: str, table: str, pg: Any) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        await store.append("x", msgs("m", 1))
        await pg.execute(
            f'DROP TABLE "{table}_messages", "{table}", "{table}_migrations", "{table}_leases"'
        )
        with pytest.raises(StoreUnavailableError, match="missing"):
            await store.append("x", msgs("m", 1))
        assert await store.append("x", msgs("m", 1)) == 1


# -- append_turn ------------------------------------------------------------------------------


async def test_append_turn_concurrent_and_retried(postgres_dsn: str, table: str) -> None:
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table, max_size=8) as store:

        def pair(i: int) -> list[Message]:
            return [Message("user", f"q{i}"), Message("assistant", f"a{i}")]

        async def turn(i: int) -> None:
            await store.append_turn("t", pair(i), cost=0.25, turn_id=f"turn-{i}")

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(turn, i)
        state = await store.get("t")
        contents = [m.content for m in state.messages]
        questions = contents[::2]
        assert sorted(questions) == sorted(f"q{i}" for i in range(16))
        assert [f"a{q[1:]}" for q in questions] == contents[1::2]  # pairs stay whole
        assert state.total_cost == pytest.approx(16 * 0.25)
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        # The retry of the last turn (its reply was lost) stores nothing and costs nothing.
        last = int(questions[-1][1:])
        assert await store.append_turn("t", pair(last), cost=0.25, turn_id=f"turn-{last}") == 32
        assert (await store.get("t")).total_cost == pytest.approx(16 * 0.25)
        with pytest.raises(ConflictError, match="holds 32 messages, expected 30"):
            await store.append_turn("t", pair(99), expected_count=30)
        assert await store.append_turn("t", pair(99), expected_count=32) == 34


# -- turn leases ------------------------------------------------------------------------------


async def test_leases_are_shared_by_stores_on_one_table(postgres_dsn: str, table: str) -> None:
    one = PostgresStore.from_dsn(postgres_dsn, table_name=table)
    two = PostgresStore.from_dsn(postgres_dsn, table_name=table)
    async with one, two:
        assert isinstance(one, SupportsLease)
        assert await one.acquire_lease("s", "owner-1", 0.4) is True
        assert await two.acquire_lease("s", "owner-2", 0.4) is False
        assert await two.renew_lease("s", "owner-2", 0.4) is False
        assert await one.renew_lease("s", "owner-1", 0.4) is True
        assert await two.release_lease("s", "owner-2") is False
        assert await one.release_lease("s", "owner-1") is True
        assert await two.acquire_lease("s", "owner-2", 0.3) is True
        await anyio.sleep(0.45)  # owner-2 died: its lease expires
        assert await two.renew_lease("s", "owner-2", 0.3) is False
        assert await one.acquire_lease("s", "owner-1", 5) is True
        assert await one.acquire_lease("other", "owner-1", 5) is True  # per session


async def test_acquire_and_load_never_takes_the_lease_over_an_older_snapshot(
    postgres_dsn: str, table: str, pg: Any
) -> None:
    """acquire_and_load reads in the statement that takes the lease, so its read sees the
    snapshot the statement started with. Here another process's turn takes the free lease,
    appends and releases, and commits while that statement waits for the lease row: the
    lease must then be refused (the turn retries with a new snapshot), not taken over a read
    that misses the other turn's message."""
    app = f"ps-race-{uuid.uuid4().hex[:12]}"
    async with PostgresStore.from_dsn(
        postgres_dsn, table_name=table, application_name=app
    ) as store:
        await store.append("s", msgs("old", 2))
        first = await store.acquire_and_load("s", "a", 30.0, last=5)
        assert [m.content for m in first or []] == ["old0", "old1"]
        assert await store.acquire_and_load("s", "b", 30.0, last=5) is None  # a holds it
        assert await store.release_lease("s", "a") is True
        other = await asyncpg.connect(postgres_dsn)
        try:
            async with other.transaction():
                took = await other.fetchval(
                    f"UPDATE \"{table}_leases\" SET owner = 'c',"
                    " expires_at = now() + interval '30 seconds'"
                    " WHERE key = 's' AND expires_at <= now() RETURNING true"
                )
                assert took
                seq = await other.fetchval(
                    f'UPDATE "{table}" SET version = version + 1,'
                    " message_count = message_count + 1, last_seq = last_seq + 1"
                    " WHERE key = 's' RETURNING last_seq"
                )
                await other.execute(
                    f'INSERT INTO "{table}_messages" (session_key, seq, data) VALUES ($1, $2, $3)',
                    "s",
                    seq,
                    msgspec.msgpack.encode(Message("user", "c's turn")),
                )
                await other.execute(
                    f"UPDATE \"{table}_leases\" SET owner = '', expires_at = now()"
                    " WHERE key = 's' AND owner = 'c'"
                )
                attempt = asyncio.ensure_future(store.acquire_and_load("s", "b", 30.0, last=5))

                async def waiting() -> bool:
                    return bool(await _backends(pg, app, waiting=True))

                await wait_for(waiting, "acquire_and_load to wait for the lease row")
            assert await attempt is None, "took the lease over a snapshot older than the lease"
        finally:
            await other.close()
        again = await store.acquire_and_load("s", "b", 30.0, last=5)
        assert [m.content for m in again or []] == ["old0", "old1", "c's turn"]
        assert await store.acquire_and_load("s", "d", 30.0, last=5) is None  # b holds it
        # Its asynchronous commit was for that statement only, not for the pool's connection.
        for _ in range(4):
            assert await store._pool.fetchval("SHOW synchronous_commit") == "on"


def test_import_promptstate_does_not_import_asyncpg() -> None:
    code = "import sys, promptstate; promptstate.PostgresStore; print('asyncpg' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


@pytest.mark.slow
async def test_server_restart_fails_calls_then_recovers() -> None:
    """A throwaway server of our own, stopped and started again under a running store."""
    server = await anyio.to_thread.run_sync(PostgresProcess)
    try:
        await anyio.to_thread.run_sync(server.start)
        async with PostgresStore.from_dsn(
            server.dsn, table_name="restart", min_size=2, max_size=2, connect_timeout=2
        ) as store:
            await store.append("r", msgs("before", 2))
            await anyio.to_thread.run_sync(server.stop)
            with pytest.raises(StoreUnavailableError):
                await store.append("r", msgs("during", 1))
            with pytest.raises(StoreUnavailableError):
                await store.load("r", last=1)
            await anyio.to_thread.run_sync(server.start)
            for _ in range(3):  # a connection that died with the server fails once at most
                try:
                    assert await store.append("r", msgs("after", 1)) == 3
                    break
                except StoreUnavailableError:
                    continue
            assert [m.content for m in await store.load("r")] == ["before0", "before1", "after0"]
    finally:
        await anyio.to_thread.run_sync(server.__exit__, None, None, None)


async def test_every_read_restarts_the_ttl_with_touch_on_read(
    postgres_dsn: str, table: str, pg: Any
) -> None:
    async with PostgresStore.from_dsn(
        postgres_dsn, table_name=table, ttl=60, touch_on_read=True
    ) as store:
        await store.append("t:1", msgs("m", 3))

        async def expiry() -> Any:
            return await pg.fetchval(f'SELECT expires_at FROM "{table}" WHERE key = $1', "t:1")

        reads = [
            lambda: store.get("t:1"),
            lambda: store.get_many(["t:1", "nope"]),
            lambda: store.load("t:1"),
            lambda: store.load("t:1", last=2),
            lambda: anext(aiter(store.list_by_prefix("t:"))),
        ]
        for read in reads:
            before = await expiry()
            await anyio.sleep(0.01)
            result = await read()
            assert result
            assert await expiry() > before
        state = await store.get("t:1")
        assert (state.version, len(state.messages)) == (1, 3)  # reads wrote nothing else


async def test_bad_dsn_parts_are_validation_errors_without_password() -> None:
    with pytest.raises(ValidationError, match="port") as info:
        PostgresStore.from_dsn("postgresql://u:hunter2@127.0.0.1:abc/db")
    assert "hunter2" not in str(info.value)
    store = PostgresStore.from_dsn("postgresql://u:hunter2@127.0.0.1:5432/db?sslmode=bogus")
    with pytest.raises(ValidationError, match="sslmode") as info:
        await store.append("k", msgs("m", 1))
    assert "hunter2" not in str(info.value)
    await store.aclose()
    # Several hosts are asyncpg's to parse; the store accepts the form.
    await PostgresStore.from_dsn("postgresql://u:hunter2@h1:5432,h2:5433/db").aclose()


async def test_aclose_while_the_pool_is_opening_leaves_no_pool(
    postgres_dsn: str, table: str
) -> None:
    store = PostgresStore.from_dsn(postgres_dsn, table_name=table, min_size=1, max_size=2)
    calls = [asyncio.ensure_future(store.append("a", [Message("user", "x")])) for _ in range(3)]
    await asyncio.sleep(0)  # the calls are now opening the pool
    await store.aclose()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ClosedError) for r in results), results
    # The pool that finished opening after aclose() was closed, not kept (it used to be kept,
    # open for ever, with min_size connections).
    assert store._pool is None


# -- the session index (migration 3) ----------------------------------------------------------

_INDEX_SUFFIXES = ("upd_idx", "crt_idx", "uupd_idx", "ucrt_idx")


async def test_migration_3_indexes_a_0_1_table(postgres_dsn: str, table: str, pg: Any) -> None:
    """Tables as 0.1 left them (migrations 1 and 2, no session index), holding 3,000 sessions,
    get the indexes on first use; pages come out in order and are index scans, no sort."""
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        await store.setup()
    for suffix in _INDEX_SUFFIXES:
        await pg.execute(f'DROP INDEX "{table}_{suffix}"')
    await pg.execute(f'DELETE FROM "{table}_migrations" WHERE version = 3')
    await pg.execute(
        f'INSERT INTO "{table}" (key, user_id, version, token_count, total_cost, metadata,'
        " message_count, last_seq, created_at, updated_at)"
        " SELECT 's' || lpad(i::text, 5, '0'), 'u' || (i % 7), 1, 0, 0, '\\x80'::bytea, 0, 0,"
        " timestamptz '2025-01-01' + i * interval '1 second',"
        " timestamptz '2025-06-01' - (i % 100) * interval '1 minute'"
        " FROM generate_series(1, 3000) AS i"
    )
    async with PostgresStore.from_dsn(postgres_dsn, table_name=table) as store:
        got = []
        cursor = None
        while True:
            page = await store.list_sessions(user_id="u3", limit=100, cursor=cursor)
            got += [(i.updated_at, i.conversation_id) for i in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert got == sorted(got, reverse=True)
        assert len(got) == len(set(got)) == len([i for i in range(1, 3001) if i % 7 == 3])
        first = await store.list_sessions(order="created_asc", limit=2)
        assert [i.conversation_id for i in first.items] == ["s00001", "s00002"]
    names = {r[0] for r in await pg.fetch("SELECT indexname FROM pg_indexes")}
    assert {f"{table}_{suffix}" for suffix in _INDEX_SUFFIXES} <= names
    versions = await pg.fetch(f'SELECT version FROM "{table}_migrations" ORDER BY version')
    assert [r[0] for r in versions] == [1, 2, 3]
    await pg.execute(f'ANALYZE "{table}"')
    cases = {
        "upd_idx": SessionQuery(after=(1_750_000_000_000_000, "s01000")),
        "uupd_idx": SessionQuery(user_id="u3", limit=20),
        "crt_idx": SessionQuery(order="created_asc"),
        "ucrt_idx": SessionQuery(user_id="u1", order="created_desc"),
    }
    for suffix, query in cases.items():
        sql, args = page_sql(f'"{table}"', "(s.expires_at IS NULL OR s.expires_at > now())", query)
        plan = "\n".join(r[0] for r in await pg.fetch("EXPLAIN " + sql, *args))
        assert f"{table}_{suffix}" in plan, plan
        assert "Sort" not in plan, plan

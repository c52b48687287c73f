"""SQLiteStore: the conformance suite on a real file, plus what only SQLite has."""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from promptstate import (
    ConflictError,
    CorruptStateError,
    Message,
    MockProvider,
    NotFoundError,
    Pipeline,
    PromptStateError,
    SQLiteStore,
    State,
    StoreUnavailableError,
    ValidationError,
    open_store,
)
from promptstate.stores.base import SessionQuery
from promptstate.stores.sqlite import _SQL_LOAD, SCHEMA_VERSION, _page_sql, _successor

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


# -- files, folders and bad paths -------------------------------------------------------------


async def test_creates_file_and_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    async with SQLiteStore(path) as store:
        assert path.is_file()
        await store.append("s", [Message("user", "hi")])
    async with SQLiteStore(str(path)) as again:  # persists across stores (and processes)
        assert [m.content for m in await again.load("s")] == ["hi"]


async def test_nothing_is_created_before_first_use(tmp_path: Path) -> None:
    path = tmp_path / "lazy" / "state.db"
    store = SQLiteStore(path)
    assert not path.parent.exists()
    assert await store.load("x") == []
    assert path.is_file()
    await store.aclose()


async def test_path_that_is_a_directory(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    with pytest.raises(StoreUnavailableError, match="is a directory") as info:
        await store.append("k", [Message("user", "x")])
    assert str(tmp_path) in str(info.value)
    await store.aclose()


async def test_folder_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = SQLiteStore(blocker / "state.db")
    with pytest.raises(StoreUnavailableError, match="cannot be opened") as info:
        await store.get("k")
    assert isinstance(info.value.__cause__, OSError)
    await store.aclose()


@pytest.mark.parametrize("content", [b"this is not a database at all" * 200, b"\x00" * 100])
async def test_garbage_file_is_a_clear_error_and_stays_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(content)
    store = SQLiteStore(path)
    for call in (
        lambda: store.get("k"),
        lambda: store.append("k", [Message("user", "x")]),
        lambda: store.load("k"),
        store.setup,
    ):
        with pytest.raises(PromptStateError) as info:
            await call()
        assert isinstance(info.value, (CorruptStateError, StoreUnavailableError))
        assert str(path) in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.Error)
    await store.aclose()
    assert path.read_bytes() == content


async def test_garbage_file_is_corrupt_state(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"garbage " * 1000)
    store = SQLiteStore(path)
    with pytest.raises(CorruptStateError, match="not a promptstate database"):
        async with store:
            pass
    await store.aclose()


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root reads all")
async def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as store:
        await store.append("k", [Message("user", "x")])
    path.chmod(0)
    try:
        store = SQLiteStore(path)
        with pytest.raises(StoreUnavailableError, match=str(path)):
            await store.get("k")
        await store.aclose()
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("bad", ["", ":memory:", 42, None])
def test_bad_paths(bad: object) -> None:
    with pytest.raises(ValidationError):
        SQLiteStore(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [("busy_timeout", -1), ("busy_timeout", "5"), ("synchronous", "sometimes"), ("max_readers", 0)],
)
def test_bad_options(tmp_path: Path, option: str, value: object) -> None:
    with pytest.raises(ValidationError, match=option):
        SQLiteStore(tmp_path / "x.db", **{option: value})  # type: ignore[arg-type]


# -- schema and migrations --------------------------------------------------------------------


async def test_setup_is_idempotent_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    for _ in range(3):
        store = SQLiteStore(path)
        await store.setup()
        await store.setup()
        await store.aclose()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT version FROM promptstate_migrations").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert mode == "wal"


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as store:
        await store.append("k", [Message("user", "x")])
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO promptstate_migrations VALUES (999, 'future', 0)")
    conn.close()
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailableError, match="newer"):
        await store.get("k")
    await store.aclose()


async def test_corrupt_message_rows_raise_corrupt_state(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as store:
        await store.append("k", [Message("user", "x"), Message("user", "y")])
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("UPDATE promptstate_messages SET data = x'c1' WHERE seq = 1")
        conn.close()
        with pytest.raises(CorruptStateError, match="'k'"):
            await store.get("k")
        with pytest.raises(CorruptStateError, match="'k'"):
            await store.load("k", last=1)
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("DELETE FROM promptstate_messages WHERE seq = 1")
        conn.close()
        with pytest.raises(CorruptStateError, match="should have 2 messages"):
            await store.get("k")


# -- locking, processes, cancellation ---------------------------------------------------------


async def test_locked_database_becomes_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path, busy_timeout=0.1) as store:
        await store.append("k", [Message("user", "before")])
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailableError, match="locked") as info:
                await store.append("k", [Message("user", "while locked")])
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            # WAL: reads still work while another connection holds the write lock.
            assert [m.content for m in await store.load("k")] == ["before"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await store.append("k", [Message("user", "after")]) == 2
        assert [m.content for m in await store.load("k")] == ["before", "after"]


_WRITER = textwrap.dedent(
    """
    import sys
    import anyio
    from promptstate import Message, SQLiteStore

    async def main(path, tag, rounds, size):
        async with SQLiteStore(path, busy_timeout=30) as store:
            print("ready", flush=True)
            sys.stdin.readline()  # start together
            for r in range(rounds):
                batch = [
                    Message("user", f"{tag}/{r}/{i}", metadata={"w": tag, "r": r, "i": i})
                    for i in range(size)
                ]
                await store.append("shared", batch)

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    """
)


async def test_two_processes_append_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    rounds, size = 150, 3
    async with SQLiteStore(path) as store:
        procs = [
            await anyio.open_process(
                [sys.executable, "-c", _WRITER, str(path), tag, str(rounds), str(size)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stderr=None,
            )
            for tag in ("p1", "p2")
        ]
        with anyio.fail_after(60):
            for proc in procs:  # both have opened the file and wait for the start signal
                assert proc.stdout is not None
                line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 100)
                assert line == b"ready"
        for proc in procs:
            assert proc.stdin is not None
            await proc.stdin.send(b"go\n")
        for r in range(rounds):  # this process appends too, at the same time
            batch = [Message("user", f"me/{r}/{i}", metadata={"w": "me", "r": r, "i": i})
                     for i in range(size)]  # fmt: skip
            await store.append("shared", batch)
        for proc in procs:
            assert await proc.wait() == 0
            await proc.aclose()
        messages = await store.load("shared")
        state = await store.get("shared")
    assert len(messages) == 3 * rounds * size
    assert state.version == 3 * rounds
    order: list[str] = []
    seen: dict[str, list[int]] = {"p1": [], "p2": [], "me": []}
    for start in range(0, len(messages), size):
        chunk = messages[start : start + size]
        writer, rnd = chunk[0].metadata["w"], chunk[0].metadata["r"]
        assert [m.metadata for m in chunk] == [{"w": writer, "r": rnd, "i": i} for i in range(size)]
        seen[writer].append(rnd)
        order.append(writer)
    for writer, rounds_seen in seen.items():
        assert rounds_seen == list(range(rounds)), f"{writer}'s appends lost or reordered"
    switches = sum(a != b for a, b in itertools.pairwise(order))
    assert switches > 10, f"the writers did not run concurrently ({switches} switches)"


async def test_many_concurrent_sessions(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "state.db") as store:

        async def session(i: int) -> None:
            for turn in range(5):
                await store.load(f"s{i}", last=10)
                await store.append(
                    f"s{i}", [Message("user", f"{turn}"), Message("assistant", "ok")]
                )

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(session, i)
        for state in await store.get_many([f"s{i}" for i in range(100)]):
            assert state is not None
            assert [m.content for m in state.messages[::2]] == ["0", "1", "2", "3", "4"]
            assert state.version == 5


async def test_cancelled_set_and_fork_are_all_or_nothing(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "state.db") as store:
        big = [Message("user", f"m{i}") for i in range(300)]
        await store.set("src", State(conversation_id="src", messages=big))
        for i in range(30):
            with anyio.move_on_after(0.0005 * (i % 5)):
                await store.set("t", State(conversation_id="t", messages=big[: 10 * i + 1]))
            state = await store.get("t") if await store.load("t", last=1) else None
            if state is not None:
                assert [m.content for m in state.messages] == [
                    f"m{j}" for j in range(len(state.messages))
                ]
                assert state.token_count == sum(m.tokens or 0 for m in state.messages)
            with anyio.move_on_after(0.0005 * (i % 5)):
                await store.fork("src", f"f{i}")
            forked = await store.get_many([f"f{i}"])
            assert forked[0] is None or len(forked[0].messages) == 300


# -- cost: load(last=n) and append follow n, not the history ----------------------------------


async def test_load_last_reads_n_rows_by_index(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as store:
        batch = [Message("user", f"m{i}") for i in range(10_000)]
        await store.save("long", batch)
        assert await store.append("long", [Message("user", "new")]) == 10_001
        last = await store.load("long", last=20)
        assert [m.content for m in last] == [f"m{i}" for i in range(9_981, 10_000)] + ["new"]

    conn = sqlite3.connect(path)
    plan = " | ".join(
        row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {_SQL_LOAD}", ("long", 20, "long", 0))
    )
    assert "SEARCH promptstate_messages USING" in plan, plan
    assert "(session_key=? AND seq>?)" in plan, plan
    assert "SCAN" not in plan, plan
    # Count the rows the statement visits: the VM steps with load(last=20) stay far below
    # the steps of a full load; SQLite's progress handler counts virtual-machine instructions.
    steps = {"n": 0}

    def tick() -> int:
        steps["n"] += 1
        return 0

    conn.set_progress_handler(tick, 1)

    def steps_for(n: int) -> int:
        steps["n"] = 0
        assert len(conn.execute(_SQL_LOAD, ("long", n, "long", 0)).fetchall()) == n
        return steps["n"]

    small, large = steps_for(20), steps_for(10_001)
    conn.close()
    assert small * 100 < large, (small, large)


# -- prefix ranges and URLs -------------------------------------------------------------------


def test_successor_bounds() -> None:
    assert _successor("a") == "b"
    assert _successor("ab") == "ac"
    assert _successor("a\U0010ffff") == "b"
    assert _successor("\U0010ffff") is None
    assert _successor("\ud7ff") == "\ue000"
    assert _successor("") is None


async def test_prefix_at_code_point_edges(tmp_path: Path) -> None:
    keys = ["\U0010ffff", "\U0010ffffa", "a\U0010ffff", "b", "\ud7ff", "\ud7ffx", "\ue000"]
    async with SQLiteStore(tmp_path / "state.db") as store:
        for key in keys:
            await store.set(key, State(conversation_id=key))
        for prefix in ("\U0010ffff", "a\U0010ffff", "\ud7ff", "a", ""):
            expected = sorted(k for k in keys if k.startswith(prefix))
            assert sorted([k async for k in store.list_keys(prefix)]) == expected, prefix
        assert await store.delete_by_prefix("\U0010ffff") == 2
        assert await store.delete_by_prefix("\ud7ff") == 2


async def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///rel/dir/state.db", ttl=60)
    assert isinstance(relative, SQLiteStore)
    assert relative.ttl == 60
    await relative.append("k", [Message("user", "x")])
    assert (tmp_path / "rel" / "dir" / "state.db").is_file()
    await relative.aclose()
    absolute = open_store(f"sqlite:///{tmp_path}/abs%20dir/state.db")
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == f"{tmp_path}/abs dir/state.db"
    await absolute.aclose()


@pytest.mark.parametrize(
    "url",
    ["sqlite://host/x.db", "sqlite:///:memory:", "sqlite://", "sqlite:///", "sqlite:///x.db?a=1"],
)
def test_bad_sqlite_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        open_store(url)


# -- TTL purge --------------------------------------------------------------------------------


async def test_purge_expired_removes_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path, ttl=0.2) as store:
        for i in range(300):
            await store.append(f"old{i}", [Message("user", "x"), Message("user", "y")])
        await anyio.sleep(0.3)
        await store.append("fresh", [Message("user", "z")])
        # Writes also purge now and then (at most once a second): on a loaded machine the 300
        # writes take longer than that and some expired rows are gone already.
        expired = _counted(path) - 1  # 300 unless the machine was that busy
        assert await store.purge_expired() == expired
        assert await store.purge_expired() == 0
        with pytest.raises(NotFoundError):
            await store.get("old1")
        assert [k async for k in store.list_keys("")] == ["fresh"]
    assert _counted(path) == 1
    conn = sqlite3.connect(path)
    (messages,) = conn.execute("SELECT count(*) FROM promptstate_messages").fetchone()
    conn.close()
    assert messages == 1


def _counted(path: Path) -> int:
    conn = sqlite3.connect(path)
    (n,) = conn.execute("SELECT count(*) FROM promptstate_sessions").fetchone()
    conn.close()
    return int(n)


async def test_writes_purge_expired_sessions_opportunistically(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path, ttl=0.2) as store:
        for i in range(20):
            await store.append(f"old{i}", [Message("user", "x")])
        assert _counted(path) == 20
        await anyio.sleep(1.1)  # past the TTL and the purge interval (at least 1 s)
        await store.append("fresh", [Message("user", "z")])
    assert _counted(path) == 1


# -- batching and group commit ----------------------------------------------------------------


async def test_a_failing_write_in_a_group_leaves_the_others(tmp_path: Path) -> None:
    """Concurrent writes share a transaction; conflicts and errors stay in their savepoint."""
    async with SQLiteStore(tmp_path / "state.db") as store:
        await store.set("cas", State(conversation_id="cas"))
        await store.set("a", State(conversation_id="a"))
        outcomes: dict[str, str | int] = {}

        async def cas(i: int) -> None:
            try:
                await store.set(
                    "cas", State(conversation_id="cas", user_id=str(i)), expected_version=1
                )
                outcomes[f"cas{i}"] = "ok"
            except ConflictError:
                outcomes[f"cas{i}"] = "conflict"

        async def fork_missing(i: int) -> None:
            try:
                await store.fork("missing", f"t{i}")
            except NotFoundError:
                outcomes[f"fork{i}"] = "not found"

        async def append(i: int) -> None:
            outcomes[f"append{i}"] = await store.append("a", [Message("user", str(i))])

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(cas, i)
                tg.start_soon(fork_missing, i)
                tg.start_soon(append, i)
        assert sorted(v for k, v in outcomes.items() if k.startswith("cas")) == [
            "conflict"
        ] * 19 + ["ok"]
        assert all(outcomes[f"fork{i}"] == "not found" for i in range(20))
        assert sorted(outcomes[f"append{i}"] for i in range(20)) == list(range(1, 21))
        state = await store.get("cas")
        assert state.version == 2
        assert outcomes[f"cas{state.user_id}"] == "ok"
        assert sorted(m.content for m in await store.load("a")) == sorted(str(i) for i in range(20))
        assert [k async for k in store.list_keys("t")] == []


async def test_a_failed_commit_fails_every_write_of_its_group(tmp_path: Path) -> None:
    """When another process holds the write lock, queued writes all fail, and none is stored."""
    path = tmp_path / "state.db"
    async with SQLiteStore(path, busy_timeout=0.2) as store:
        await store.append("k", [Message("user", "before")])
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        errors: list[BaseException] = []

        async def append(i: int) -> None:
            try:
                await store.append("k", [Message("user", str(i))])
            except StoreUnavailableError as exc:
                errors.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(append, i)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert len(errors) == 10
        assert [m.content for m in await store.load("k")] == ["before"]
        assert await store.append("k", [Message("user", "after")]) == 2


async def test_cancelling_queued_calls_under_load(tmp_path: Path) -> None:
    """Many tasks, random cancellations: every append is whole, the store keeps working."""
    async with SQLiteStore(tmp_path / "state.db") as store:

        async def worker(w: int) -> None:
            for r in range(15):
                with anyio.move_on_after(0.0003 * ((w + r) % 4)):
                    await store.append(
                        f"s{w % 4}", [Message("user", f"{w}/{r}/{i}") for i in range(3)]
                    )
                with anyio.move_on_after(0.0003 * ((w * r) % 3)):
                    await store.load(f"s{w % 4}", last=5)

        async with anyio.create_task_group() as tg:
            for w in range(32):
                tg.start_soon(worker, w)
        stored = 0
        for s in range(4):
            try:
                state = await store.get(f"s{s}")
            except NotFoundError:  # every append to it was cancelled: nothing, which is whole
                continue
            contents = [m.content for m in state.messages]
            stored += len(contents)
            assert len(contents) % 3 == 0
            for start in range(0, len(contents), 3):
                head = contents[start].rsplit("/", 1)[0]
                assert contents[start : start + 3] == [f"{head}/{i}" for i in range(3)]
            assert state.version == len(contents) // 3
            assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        assert stored > 0, "every append was cancelled: the test exercised nothing"
        assert await store.append("s0", [Message("user", "x")]) == len(
            (await store.get("s0")).messages
        )


async def test_numbers_sqlite_cannot_store_are_validation_errors(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "state.db") as store:
        await store.append("k", [Message("user", "keep")])
        with pytest.raises(ValidationError, match="finite"):
            await store.set("k", State(conversation_id="k", total_cost=float("nan")))
        with pytest.raises(ValidationError, match="64-bit") as info:
            await store.append("k", [Message("user", "x", tokens=2**63)])
        assert isinstance(info.value.__cause__, OverflowError)
        with pytest.raises(ValidationError, match="64-bit"):  # the sum overflows
            await store.append("k", [Message("user", "x", tokens=2**62)] * 2)
        state = await store.get("k")
        assert ([m.content for m in state.messages], state.version) == (["keep"], 1)
        assert [m.content for m in await store.load("k", last=10**30)] == ["keep"]
        # The JSON wire format (export, backup) has no infinity: refused like NaN, on every store.
        with pytest.raises(ValidationError, match="finite"):
            await store.set("inf", State(conversation_id="inf", total_cost=float("inf")))


async def test_listing_pages_through_large_sessions(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "state.db") as store:
        for s in range(5):
            await store.save(f"big:{s}", [Message("user", f"{s}/{i}") for i in range(2_000)])
        for s in range(450):
            await store.append(f"small:{s:03d}", [Message("user", str(s))])
        big = [st async for st in store.list_by_prefix("big:")]
        assert [st.conversation_id for st in big] == [f"big:{s}" for s in range(5)]
        assert all(len(st.messages) == 2_000 for st in big)
        small = [st.conversation_id async for st in store.list_all() if st.user_id is None]
        assert len(small) == 455
        assert len([k async for k in store.list_keys("small:")]) == 450


async def test_disk_full_fails_cleanly_and_keeps_data_consistent(tmp_path: Path) -> None:
    """SQLITE_FULL mid-group (via max_page_count): failed writes store nothing, others stay."""
    async with SQLiteStore(tmp_path / "state.db") as store:
        await store.append("warm", [Message("user", "x")])
        conn = store._pool.acquire()  # the connection the write lane will use
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages + 12}")
        store._pool.release(conn)
        ok: dict[str, list[str]] = {}
        failed: list[BaseException] = []

        async def writer(w: int) -> None:
            for r in range(6):
                text = f"{w}/{r}:" + "x" * 3000  # about one page per message
                try:
                    await store.append(f"s{w}", [Message("user", text)])
                except StoreUnavailableError as exc:
                    failed.append(exc)
                else:
                    ok.setdefault(f"s{w}", []).append(text)

        async with anyio.create_task_group() as tg:
            for w in range(8):
                tg.start_soon(writer, w)
        assert failed, "the file never filled up"
        assert all("full" in str(exc) for exc in failed), failed[0]
        assert all(isinstance(exc.__cause__, sqlite3.OperationalError) for exc in failed)
        for w in range(8):
            messages = await store.load(f"s{w}")
            assert [m.content for m in messages] == ok.get(f"s{w}", [])
            if messages:
                state = await store.get(f"s{w}")  # message_count agrees with the rows
                assert state.version == len(messages)


async def test_touch_on_read_covers_every_read(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "state.db", ttl=0.3, touch_on_read=True) as store:
        for key in ("get", "many", "list"):
            await store.append(key, [Message("user", key)])
        for _ in range(3):
            await anyio.sleep(0.18)
            await store.get("get")
            await store.get_many(["many"])
            assert [s.conversation_id async for s in store.list_by_prefix("list")] == ["list"]
        assert [k async for k in store.list_keys("")] == ["get", "list", "many"]


async def test_file_that_cannot_be_opened(tmp_path: Path) -> None:
    """A symlink loop cannot be opened even by root: a clear StoreUnavailableError."""
    path = tmp_path / "loop.db"
    path.symlink_to(path)
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailableError) as info:
        await store.append("k", [Message("user", "x")])
    assert str(path) in str(info.value)
    assert "'k'" in str(info.value)
    assert isinstance(info.value.__cause__, (sqlite3.Error, OSError))
    await store.aclose()


async def test_migration_2_is_applied_to_a_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as store:
        await store.append("k", [Message("user", "kept")])
    conn = sqlite3.connect(path)
    with conn:  # make it a file as release 1 of the schema left it
        conn.execute("DROP TABLE promptstate_leases")
        conn.execute("DELETE FROM promptstate_migrations WHERE version = 2")
    conn.close()
    async with SQLiteStore(path) as store:
        assert [m.content for m in await store.load("k")] == ["kept"]
        assert await store.acquire_lease("k", "me", 5)
    conn = sqlite3.connect(path)
    versions = [row[0] for row in conn.execute("SELECT version FROM promptstate_migrations")]
    conn.close()
    assert versions == [1, 2, 3]


_INDEXES = (
    "promptstate_sessions_updated",
    "promptstate_sessions_created",
    "promptstate_sessions_user_updated",
    "promptstate_sessions_user_created",
)


def _plan(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> str:
    return " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


async def test_migration_3_indexes_a_0_1_file(tmp_path: Path) -> None:
    """A file as 0.1 left it (schema versions 1 and 2, no session index) gets the indexes on
    first open, its sessions are listed in order, and the pages are index range reads."""
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as store:
        for i in range(30):
            await store.set(f"s{i:02d}", State(conversation_id=f"s{i:02d}", user_id=f"u{i % 3}"))
    conn = sqlite3.connect(path)
    with conn:  # back to the 0.1 schema
        for name in _INDEXES:
            conn.execute(f"DROP INDEX {name}")
        conn.execute("DELETE FROM promptstate_migrations WHERE version = 3")
    conn.close()
    async with SQLiteStore(path) as store:
        page = await store.list_sessions(user_id="u1", limit=4)
        expected = sorted(
            [await store.get(f"s{i:02d}") for i in range(1, 30, 3)],
            key=lambda s: (s.updated_at, s.conversation_id),
            reverse=True,
        )
        assert [i.conversation_id for i in page.items] == [s.conversation_id for s in expected[:4]]
        assert len((await store.list_sessions(limit=1000)).items) == 30
    conn = sqlite3.connect(path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert set(_INDEXES) <= names
    versions = [row[0] for row in conn.execute("SELECT version FROM promptstate_migrations")]
    assert versions == [1, 2, 3]
    cases = {
        "promptstate_sessions_updated": SessionQuery(after=(10**16, "z")),
        "promptstate_sessions_user_updated": SessionQuery(user_id="u1", after=(10**16, "z")),
        "promptstate_sessions_created": SessionQuery(order="created_asc"),
        "promptstate_sessions_user_created": SessionQuery(user_id="u1", order="created_desc"),
    }
    queries = {}
    for name, query in cases.items():
        sql, params = _page_sql(query)
        queries[name] = (sql, (*params, 0, 21))
    for index, (sql, args) in queries.items():
        plan = _plan(conn, sql, args)
        assert index in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # no sort: the index order is the page order
    conn.close()


# -- append_turn and leases (what the pipeline uses) ------------------------------------------


async def test_append_turn_is_idempotent_checks_count_and_adds_cost(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "state.db") as store:
        turn = [Message("user", "q"), Message("assistant", "a")]
        assert await store.append_turn("s", turn, cost=0.25, turn_id="t1", expected_count=0) == 2
        # The reply was lost and the turn is retried: nothing is written twice.
        assert await store.append_turn("s", turn, cost=0.25, turn_id="t1", expected_count=0) == 2
        with pytest.raises(ConflictError, match="holds 2 messages, expected 0"):
            await store.append_turn("s", turn, turn_id="t2", expected_count=0)
        assert await store.append_turn("s", turn, cost=0.5, turn_id="t2", expected_count=2) == 4
        state = await store.get("s")
        assert [m.content for m in state.messages] == ["q", "a", "q", "a"]
        assert [m.metadata.get("turn_id") for m in state.messages] == ["t1", None, "t2", None]
        assert state.total_cost == 0.75
        assert state.version == 2
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)


async def test_leases(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as one, SQLiteStore(path) as two:
        assert await one.acquire_lease("conv", "p1", 0.3)
        assert not await two.acquire_lease("conv", "p2", 5)
        assert await one.acquire_lease("conv", "p1", 0.3)  # its own: taken again (a retry)
        assert await one.renew_lease("conv", "p1", 0.3)
        assert not await two.renew_lease("conv", "p2", 5)
        assert not await two.release_lease("conv", "p2")
        await anyio.sleep(0.4)  # p1 died: its lease expires
        assert not await one.renew_lease("conv", "p1", 5)
        assert await two.acquire_lease("conv", "p2", 5)
        assert not await one.release_lease("conv", "p1")  # never releases someone else's
        assert await two.release_lease("conv", "p2")
        assert await one.acquire_lease("conv", "p1", 5)


async def test_pipelines_on_separate_store_objects_share_one_file_safely(tmp_path: Path) -> None:
    """Two SQLiteStore objects on one file have separate in-process locks, like two
    processes; the lease in the file keeps their turns on one session apart."""
    path = tmp_path / "state.db"

    async def answer(messages: list[Message]) -> str:
        await anyio.sleep(0.001)
        return f"a:{messages[-1].content}"

    async with SQLiteStore(path) as first, SQLiteStore(path) as second:
        pipes = [Pipeline(MockProvider(answer), store=s, lease_ttl=5) for s in (first, second)]
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(pipes[i % 2].execute, "conv", "user", f"q{i}")
        messages = await first.load("conv")
        for pipe in pipes:
            await pipe.aclose()
    assert len(messages) == 32
    for user, reply in zip(messages[::2], messages[1::2], strict=True):
        assert (user.role, reply.role, reply.content) == ("user", "assistant", f"a:{user.content}")
    assert sorted(m.content for m in messages[::2]) == sorted(f"q{i}" for i in range(16))
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM promptstate_leases").fetchone() == (0,)
    conn.close()


_TURNS = textwrap.dedent(
    """
    import sys
    import anyio
    from promptstate import MockProvider, Pipeline, SQLiteStore

    async def answer(messages):
        await anyio.sleep(0.001)
        return "a:" + messages[-1].content

    async def main(path, tag, turns):
        async with SQLiteStore(path, busy_timeout=30) as store:
            print("ready", flush=True)
            sys.stdin.readline()
            async with Pipeline(MockProvider(answer), store=store, lock_timeout=60) as pipe:
                for i in range(turns):
                    await pipe.execute("conv", "user", f"{tag}/{i}")

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


async def test_pipelines_in_two_processes_share_one_session(tmp_path: Path) -> None:
    path, turns = tmp_path / "shared.db", 15
    async with SQLiteStore(path) as store:
        await store.setup()
        procs = [
            await anyio.open_process(
                [sys.executable, "-c", _TURNS, str(path), tag, str(turns)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stderr=None,
            )
            for tag in ("p1", "p2")
        ]
        with anyio.fail_after(60):
            for proc in procs:
                assert proc.stdout is not None
                line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 100)
                assert line == b"ready"
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.send(b"go\n")
            for proc in procs:
                assert await proc.wait() == 0
                await proc.aclose()
        messages = await store.load("conv")
    assert len(messages) == 4 * turns
    for user, reply in zip(messages[::2], messages[1::2], strict=True):
        assert (user.role, reply.content) == ("user", f"a:{user.content}")
    questions = [m.content for m in messages[::2]]
    for tag in ("p1", "p2"):
        assert [q for q in questions if q.startswith(tag)] == [f"{tag}/{i}" for i in range(turns)]


_OPENER = """
import sys, anyio
sys.path.insert(0, sys.argv[3])
from promptstate import Message
from promptstate.stores.sqlite import SQLiteStore

async def main() -> None:
    async with SQLiteStore(sys.argv[1]) as store:
        for i in range(WRITES):
            await store.append("s", [Message("user", sys.argv[2])])

WRITES = int(sys.argv[4])
anyio.run(main)
"""


ROUNDS, PROCS, WRITES = 3, 3, 10


@pytest.mark.slow
def test_processes_setting_up_one_new_file_at_once(tmp_path: Path) -> None:
    """Several processes creating the same new file: none fails (WAL switch under contention)."""
    root = str(Path(__file__).resolve().parents[2])
    for round_ in range(ROUNDS):
        path = tmp_path / f"fresh-{round_}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPENER, str(path), f"p{i}", root, str(WRITES)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(PROCS)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()[-2000:]
        count = (
            sqlite3.connect(path).execute("SELECT COUNT(*) FROM promptstate_messages").fetchone()
        )
        assert count == (PROCS * WRITES,)

"""The two-round-trip turn through the pipeline: ``acquire_and_load`` and
``append_turn(..., release_lease=owner)``.

These run on the real stores that have the capabilities (SQLite, Redis, PostgreSQL for the
release), plus the in-process leasing store for the fallback paths. What each store must do
on its own (the lease semantics of both calls) is the leasing section of the conformance
suite (promptstate/testing/conformance.py), run on every leasing store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from promptstate import (
    LeasingStore,
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    ProviderError,
    Store,
    TokenBudget,
    ValidationError,
)
from promptstate.locks import (
    LeaseLostError,
    supports_lease,
)
from promptstate.stages import CallProvider, LoadState, SaveState
from promptstate.testing._backends import StoreMaker
from tests.backends import params
from tests.pipeline_support import LeasingMemoryStore

pytestmark = pytest.mark.anyio


def _turn(question: str, answer: str) -> list[Message]:
    return [Message("user", question), Message("assistant", answer)]


@pytest.fixture(params=params("sqlite", "redis", "postgres"))
async def leased_store(request: pytest.FixtureRequest, stores: StoreMaker) -> Store:
    """A store of each backend that releases the lease in its turn write."""
    return await stores.open(request.param)


@pytest.fixture(params=params("sqlite", "redis", "postgres"))
async def loading_store(request: pytest.FixtureRequest, stores: StoreMaker) -> Store:
    """A store of each backend that takes the lease and reads in one round trip."""
    return await stores.open(request.param)


def test_capabilities_of_the_bundled_stores(tmp_path: Path) -> None:
    from promptstate.stores.postgres import PostgresStore
    from promptstate.stores.redis import RedisStore
    from promptstate.stores.sqlite import SQLiteStore

    # Declared in the type: the three server-backed stores are LeasingStores, each with its
    # own _append_turn that releases the lease in the write and its own _acquire_and_load
    # that takes the lease and reads in one step (PostgreSQL's refuses the lease when its
    # snapshot is older than the lease row it would take: see its docstring). The public
    # methods are the base class's (they check, then call these).
    for cls in (RedisStore, SQLiteStore, PostgresStore):
        assert issubclass(cls, LeasingStore), cls
        assert "_append_turn" in cls.__dict__, cls
        assert cls.append_turn is LeasingStore.append_turn, cls
    assert "_acquire_and_load" in RedisStore.__dict__
    assert "_acquire_and_load" in SQLiteStore.__dict__
    assert "_acquire_and_load" in PostgresStore.__dict__
    assert not supports_lease(MemoryStore())
    assert supports_lease(LeasingMemoryStore())


def test_lease_methods_without_the_declaration_are_refused() -> None:
    class Undeclared(MemoryStore):
        async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
            return True

    with pytest.raises(ValidationError, match="not a LeasingStore"):
        Pipeline(MockProvider(["hi"]), store=Undeclared())


async def test_release_lease_keyword_on_stores_without_native_support() -> None:
    leasing = LeasingMemoryStore()
    assert await leasing.acquire_lease("conv", "me", 30.0)
    # Not native: the base class appends, then releases (two steps).
    assert await leasing.append_turn("conv", _turn("q", "a"), release_lease="me") == 2  # type: ignore[call-arg]
    assert leasing.table.leases == {}


async def test_a_failed_turn_still_releases_the_lease_at_once(leased_store: Store) -> None:
    store: Any = leased_store
    provider = MockProvider([ProviderError("the model is down"), "fine"])
    async with Pipeline(provider, store=store, lease_ttl=30, lock_timeout=2) as pipe:
        with pytest.raises(ProviderError):
            await pipe.execute("conv", "user", "hello?")
        assert await store.load("conv") == []
        # Another process's view: the lease is free right away, not after lease_ttl.
        assert await store.acquire_lease("conv", "other-process", 30.0)
        assert await store.release_lease("conv", "other-process")
        started = time.monotonic()
        result = await pipe.execute("conv", "user", "hello again")
        assert time.monotonic() - started < 1.0
    assert result.response.content == "fine"
    assert [m.content for m in await store.load("conv")] == ["hello again", "fine"]
    assert await store.acquire_lease("conv", "after", 30.0)  # released by the save


async def test_a_cancelled_turn_releases_the_lease(leased_store: Store) -> None:
    store: Any = leased_store
    started = anyio.Event()

    async def stall(messages: list[Message]) -> str:
        started.set()
        await anyio.sleep(30)
        return "never"

    async with (
        Pipeline(MockProvider(stall), store=store, lease_ttl=30) as pipe,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(pipe.execute, "conv", "user", "hi")
        await started.wait()
        assert not await store.acquire_lease("conv", "other", 30.0)  # held by the turn
        tg.cancel_scope.cancel()
    assert await store.load("conv") == []
    assert await store.acquire_lease("conv", "other", 30.0)


async def test_a_lease_lost_before_the_save_stores_nothing(leased_store: Store) -> None:
    store: Any = leased_store

    async def steal(messages: list[Message]) -> str:
        # The lease "expired" and another process took it while the model ran.
        assert await store.release_lease("conv", owner_of_turn[0])
        assert await store.acquire_lease("conv", "thief", 30.0)
        return "late answer"

    owner_of_turn: list[str] = []

    class Spy(LoadState):  # a bundled stage type, so the save still releases the lease
        async def load(self, ctx: Any) -> list[Message]:
            owner_of_turn.append(ctx.lease.owner)
            return await super().load(ctx)

    stages = [Spy(), CallProvider(), SaveState()]
    async with Pipeline(MockProvider(steal), store=store, middleware=stages) as pipe:
        with pytest.raises(LeaseLostError):
            await pipe.execute("conv", "user", "hi")
    assert await store.load("conv") == []
    assert not await store.acquire_lease("conv", "third", 30.0)  # the thief's, not released
    assert await store.release_lease("conv", "thief")


class _Counter:
    def __init__(self) -> None:
        self.calls: list[str] = []


class _CountingConnection:
    """An asyncpg connection whose statements are counted (each is one round trip once
    prepared: the warm-up turn prepares them)."""

    def __init__(self, conn: Any, counter: _Counter) -> None:
        self._conn = conn
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._conn, name)
        if name not in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
            return found

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self._counter.calls.append(f"{name}: {str(args[0])[:40]}")
            return await found(*args, **kwargs)

        return counted


class _CountingOp:
    def __init__(self, op: Any, counter: _Counter) -> None:
        self._op = op
        self._counter = counter

    async def __aenter__(self) -> _CountingConnection:
        return _CountingConnection(await self._op.__aenter__(), self._counter)

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._op.__aexit__(*exc_info)


class _CountingCommands:
    """A RedisStore's own command connections, each command (one round trip) counted."""

    def __init__(self, inner: Any, counter: _Counter) -> None:
        self._inner = inner
        self._counter = counter

    async def execute(self, *args: Any) -> Any:
        self._counter.calls.append(str(args[0]))
        return await self._inner.execute(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _count_round_trips(store: Any) -> _Counter:
    """Count the store's round trips: Redis commands, PostgreSQL statements, or SQLite trips
    to a worker thread."""
    counter = _Counter()
    if type(store).__name__ == "PostgresStore":
        original_conn = store._conn

        def conn(*args: Any, **kwargs: Any) -> _CountingOp:
            return _CountingOp(original_conn(*args, **kwargs), counter)

        store._conn = conn
    elif type(store).__name__ == "RedisStore" and store._commands is not None:
        # A store that made its client runs single commands on connections of its own.
        store._commands = _CountingCommands(store._commands, counter)
    elif type(store).__name__ == "RedisStore":
        client = store._client
        original = client.execute_command

        async def execute_command(*args: Any, **kwargs: Any) -> Any:
            counter.calls.append(str(args[0]))
            return await original(*args, **kwargs)

        client.execute_command = execute_command
    else:
        original_run = store._run

        async def run(fn: Any, mode: Any, what: str) -> Any:
            counter.calls.append(what)
            return await original_run(fn, mode, what)

        store._run = run
    return counter


@pytest.mark.parametrize("how", ["execute", "stream"])
async def test_a_turn_is_two_round_trips(loading_store: Store, how: str) -> None:
    store: Any = loading_store
    await store.append("conv", [*_turn("q1", "a1"), *_turn("q2", "a2")])
    provider = MockProvider(lambda messages: f"seen {len(messages)}", cycle=True)
    async with Pipeline(provider, store=store, max_tokens=500) as pipe:
        await pipe.execute("conv", "user", "warm up")  # loads scripts, opens connections
        counter = _count_round_trips(store)
        if how == "execute":
            result = await pipe.execute("conv", "user", "q3")
            response, sent = result.response, result.messages
        else:  # the same turn runner: a streamed turn costs what a plain one does
            chunks = [chunk async for chunk in pipe.stream("conv", "user", "q3")]
            assert chunks[-1].message is not None
            response, sent = chunks[-1].message, None
    assert len(counter.calls) == 2, counter.calls
    assert response.content == "seen 7"
    if sent is not None:
        assert [m.content for m in sent] == [
            "q1", "a1", "q2", "a2", "warm up", "seen 5", "q3",
        ]  # fmt: skip
    assert [m.content for m in await store.load("conv")][-2:] == ["q3", "seen 7"]
    assert await store.acquire_lease("conv", "next", 30.0)


async def test_an_outer_stage_first_falls_back_to_separate_acquire_and_load(
    loading_store: Store,
) -> None:
    store: Any = loading_store
    await store.append("conv", _turn("q1", "a1"))
    seen: list[int] = []

    async def outer(ctx: Any, call_next: Any) -> None:
        # Writes before the load stage must be seen by it: no read was done ahead of time.
        await store.append(ctx.session_id, _turn("outer-q", "outer-a"))
        await call_next(ctx)
        seen.append(len(ctx.history))

    stages = [outer, LoadState(), TokenBudget(500), CallProvider(), SaveState()]
    async with Pipeline(MockProvider(["ok"]), store=store, middleware=stages) as pipe:
        result = await pipe.execute("conv", "user", "q2")
    assert seen == [4]
    assert [m.content for m in result.messages] == ["q1", "a1", "outer-q", "outer-a", "q2"]
    assert await store.acquire_lease("conv", "next", 30.0)


async def test_the_window_still_grows_past_the_first_read(loading_store: Store) -> None:
    store: Any = loading_store
    history = [m for i in range(150) for m in _turn(f"q{i}", f"a{i}")]
    await store.append("conv", history)
    provider = MockProvider(lambda messages: f"seen {len(messages)}")
    # A budget far larger than the history: the first window (64) is too short, so the load
    # stage reads 256, then 1024, and the model sees everything.
    async with Pipeline(provider, store=store, max_tokens=1_000_000) as pipe:
        result = await pipe.execute("conv", "user", "last")
    assert result.response.content == "seen 301"
    assert [m.content for m in result.messages][:2] == ["q0", "a0"]


@pytest.mark.parametrize("kind", ["memory", "custom", "cached-memory"])
async def test_load_last_longer_than_the_history_returns_it_all(
    kind: str, stores: StoreMaker
) -> None:
    # Regression: load(last=n) with n > the history returned only its last 2*len - n
    # messages (a negative slice start), so a pipeline sent the model a truncated history.
    store = await stores.open(kind)
    messages = [m for i in range(6) for m in _turn(f"q{i}", f"a{i}")]
    await store.append("conv", messages)
    await store.get("conv")  # CachedStore: the reads below are served from its LRU
    assert [m.content for m in await store.load("conv", last=16)] == [m.content for m in messages]
    assert len(await store.load("conv", last=12)) == 12
    assert [m.content for m in await store.load("conv", last=3)] == ["a4", "q5", "a5"]
    provider = MockProvider(lambda sent: f"seen {len(sent)}")
    async with Pipeline(provider, store=store, max_tokens=500) as pipe:
        for expected in (13, 15, 17):
            result = await pipe.execute("conv", "user", "next")
            assert result.response.content == f"seen {expected}"


@pytest.mark.parametrize("timer", [True, False], ids=["timer", "task-group"])
async def test_long_turns_renew_the_lease_with_either_keeper(
    timer: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptstate import locks

    if not timer:  # what an event loop other than asyncio's gets
        monkeypatch.setattr(locks._Renewals, "on_this_loop", staticmethod(lambda runner: None))
    store = LeasingMemoryStore()

    async def slow(messages: list[Message]) -> str:
        await anyio.sleep(1.0)
        return "done"

    # A TTL of 0.6 s, renewed from 0.2 s on (within 4/9 of it), then every 0.2 s: long enough
    # that a loaded machine's stalls (the suite runs beside other jobs) do not let it lapse
    # (0.15 s did, once in a random run).
    async with Pipeline(MockProvider(slow), store=store, lease_ttl=0.6) as pipe:
        result = await pipe.execute("conv", "user", "take your time")
        stream = [c async for c in pipe.stream("conv", "user", "again")]
    assert result.response.content == "done"
    assert stream[-1].message.content == "done"
    assert store.table.renewed >= 4  # about every ttl/3 while the model ran, both turns
    assert store.table.leases == {}
    assert [m.content for m in await store.load("conv")] == [
        "take your time", "done", "again", "done",
    ]  # fmt: skip


async def test_a_cached_store_has_leases_exactly_when_its_inner_store_has(
    tmp_path: Path,
) -> None:
    # Regression: lease support was cached per class, so the first CachedStore seen (over a
    # MemoryStore) decided for every later one (over SQLite), which then ran without a lease.
    from promptstate import CachedStore
    from promptstate.stores.sqlite import SQLiteStore

    over_memory = CachedStore(MemoryStore())
    assert not supports_lease(over_memory)
    async with CachedStore(SQLiteStore(tmp_path / "cached.db"), close_inner=True) as over_sqlite:
        assert supports_lease(over_sqlite)
        async with Pipeline(MockProvider(["hi"]), store=over_sqlite) as pipe:
            await pipe.execute("conv", "user", "hello")
        assert [m.content for m in await over_sqlite.load("conv")] == ["hello", "hi"]
        assert await over_sqlite.acquire_lease("conv", "next", 30.0)  # released
    assert not supports_lease(over_memory)


def _lost_reply_sqlite(path: Path, interloper: bool) -> Any:
    from promptstate import StoreUnavailableError
    from promptstate.stores.sqlite import SQLiteStore

    class LostReply(SQLiteStore):
        failures = 1

        async def append_turn(self, session_id: str, messages: Any, **kw: Any) -> int:
            count = await super().append_turn(session_id, messages, **kw)
            if self.failures:
                self.failures -= 1
                if interloper:  # another process takes the freed lease and saves a turn
                    assert await self.acquire_lease(session_id, "other", 30.0)
                    await super().append_turn(
                        session_id, _turn("other-q", "other-a"), release_lease="other"
                    )
                raise StoreUnavailableError("the reply was lost")
            return count

    return LostReply(path)


async def test_a_save_retried_after_a_lost_reply_is_stored_once(tmp_path: Path) -> None:
    async with _lost_reply_sqlite(tmp_path / "lost.db", interloper=False) as store:
        async with Pipeline(MockProvider(["answer"]), store=store) as pipe:
            result = await pipe.execute("conv", "user", "question")
        assert result.message_count == 2
        assert [m.content for m in await store.load("conv")] == ["question", "answer"]
        assert await store.acquire_lease("conv", "next", 30.0)


async def test_a_retry_that_finds_the_lease_taken_reports_an_unknown_outcome(
    tmp_path: Path,
) -> None:
    from promptstate import StoreUnavailableError

    async with _lost_reply_sqlite(tmp_path / "lost.db", interloper=True) as store:
        async with Pipeline(MockProvider(["answer"]), store=store) as pipe:
            with pytest.raises(StoreUnavailableError, match="may or may not be stored") as info:
                await pipe.execute("conv", "user", "question")
        assert isinstance(info.value.__cause__, LeaseLostError)
        # Stored once (by the first attempt), never twice, and the other turn is intact.
        contents = [m.content for m in await store.load("conv")]
        assert contents == ["question", "answer", "other-q", "other-a"]
        assert await store.acquire_lease("conv", "next", 30.0)


async def test_a_tool_loop_keeps_the_lease_between_its_rounds(leased_store: Store) -> None:
    store: Any = leased_store
    checks: list[bool] = []

    async def lookup(order_id: str) -> str:
        # Runs between two saves of the same turn: nobody else may take the session now.
        checks.append(await store.acquire_lease("conv", "other-process", 30.0))
        return f"order {order_id} shipped"

    from promptstate import ToolCall

    replies: list[Any] = [
        Message("assistant", "", tool_calls=(ToolCall("c1", "lookup", '{"order_id": "7"}'),)),
        Message("assistant", "", tool_calls=(ToolCall("c2", "lookup", '{"order_id": "8"}'),)),
        "Both shipped.",
    ]
    async with Pipeline(MockProvider(replies), store=store, tools=[lookup]) as pipe:
        result = await pipe.execute("conv", "user", "Where are 7 and 8?")
    assert result.response.content == "Both shipped."
    assert checks == [False, False]
    stored = await store.load("conv")
    assert [m.role for m in stored] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert await store.acquire_lease("conv", "after", 30.0)  # released at the end


async def test_a_stage_of_your_own_that_saves_twice_keeps_the_lease(leased_store: Store) -> None:
    store: Any = leased_store
    checks: list[bool] = []

    async def twice(ctx: Any, call_next: Any) -> None:
        await call_next(ctx)
        checks.append(await store.acquire_lease("conv", "other-process", 30.0))
        ctx.input = Message("user", "and again")
        ctx.turn_id = ctx.turn_id + ".2"
        await call_next(ctx)

    stages = [LoadState(), twice, CallProvider(), SaveState()]
    async with Pipeline(MockProvider(["one", "two"]), store=store, middleware=stages) as pipe:
        await pipe.execute("conv", "user", "first")
    assert checks == [False]
    assert [m.content for m in await store.load("conv")] == ["first", "one", "and again", "two"]
    assert await store.acquire_lease("conv", "after", 30.0)


@pytest.mark.slow
@pytest.mark.redis
async def test_two_round_trip_turns_on_a_redis_cluster(stores: StoreMaker) -> None:
    store: Any = await stores.open("redis-cluster")
    provider = MockProvider(lambda messages: f"seen {len(messages)}", cycle=True)
    async with Pipeline(provider, store=store, max_tokens=500) as pipe:
        for session in ("a", "b{x}", "c%d", "long-session-name"):  # different slots
            for expected in (1, 3):
                result = await pipe.execute(session, "user", "hi")
                assert result.response.content == f"seen {expected}"
            assert await store.acquire_lease(session, "other", 30.0)  # released
            assert await store.acquire_and_load(session, "third", 30.0, last=2) is None
            with pytest.raises(LeaseLostError):
                await store.append_turn(
                    session, _turn("q", "a"), turn_id="t", release_lease="third"
                )
            assert await store.release_lease(session, "other")
            assert len(await store.load(session)) == 4


class _Logger:
    """A stage of your own in front of the chain."""

    def __init__(self, *, single_pass: bool | None) -> None:
        if single_pass is not None:
            self.single_pass = single_pass
        self.seen = 0

    async def __call__(self, ctx: Any, call_next: Any) -> None:
        self.seen += 1
        await call_next(ctx)


@pytest.mark.parametrize(("declared", "trips"), [(True, 2), (None, 3), (False, 3)])
async def test_a_stage_that_declares_single_pass_keeps_the_turn_at_two_round_trips(
    loading_store: Store, declared: bool | None, trips: int
) -> None:
    store: Any = loading_store
    await store.append("conv", _turn("q1", "a1"))
    logger = _Logger(single_pass=declared)
    # After the load stage, so the lease still brings the first window.
    stages = [LoadState(), logger, TokenBudget(500), CallProvider(), SaveState()]
    async with Pipeline(MockProvider(["a2", "a3"]), store=store, middleware=stages) as pipe:
        await pipe.execute("conv", "user", "warm up")
        counter = _count_round_trips(store)
        await pipe.execute("conv", "user", "q3")
    assert len(counter.calls) == trips, counter.calls
    assert logger.seen == 2
    assert [m.content for m in await store.load("conv")][-2:] == ["q3", "a3"]
    assert await store.acquire_lease("conv", "next", 30.0), "the lease was released"

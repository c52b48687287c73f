"""Turn safety: serialized turns, all-or-nothing saves, cancellation, leases, retries."""

from __future__ import annotations

import random
import time
from contextlib import aclosing

import anyio
import pytest

from promptstate import (
    ConflictError,
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    ProviderError,
    SessionBusyError,
    Store,
    StoreUnavailableError,
    SupportsLease,
    ValidationError,
)
from promptstate.locks import LeaseLostError, local_locks
from promptstate.stages import CallProvider, LoadState, SaveState
from tests.backends import params
from tests.pipeline_support import (
    STORE_KINDS,
    LeaseTable,
    LeasingMemoryStore,
    LostReplyStore,
    SlowStore,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=params(*STORE_KINDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def turn_store(store: Store) -> Store:
    """A store of each kind the turn-safety tests run on (tests/pipeline_support.py)."""
    return store


def assert_whole_turns(messages: list[Message], questions: set[str]) -> list[str]:
    """Every stored turn is a contiguous user/answer pair; returns the questions in order."""
    assert len(messages) % 2 == 0, [m.content for m in messages]
    order = []
    for user, answer in zip(messages[::2], messages[1::2], strict=False):
        assert user.role == "user"
        assert answer.role == "assistant"
        assert answer.content == f"a:{user.content}", (user.content, answer.content)
        order.append(user.content)
    assert set(order) == questions
    assert len(order) == len(questions)
    return order


async def test_twenty_concurrent_turns_on_one_session_are_serialized(turn_store: Store) -> None:
    seen_lengths: list[int] = []

    async def answer(messages: list[Message]) -> str:
        seen_lengths.append(len(messages))
        await anyio.sleep(random.random() * 0.002)
        return f"a:{messages[-1].content}"

    async with (
        Pipeline(MockProvider(answer), store=turn_store, lock_timeout=30) as pipe,
        anyio.create_task_group() as tg,
    ):
        for i in range(20):
            tg.start_soon(pipe.execute, "conv", "user", f"q{i}")
    messages = await turn_store.load("conv")
    assert len(messages) == 40
    assert_whole_turns(messages, {f"q{i}" for i in range(20)})
    # Each turn saw every turn before it: the model was sent 1, 3, 5, ... messages.
    assert seen_lengths == [2 * k + 1 for k in range(20)]
    assert len(local_locks(turn_store)) == 0


async def test_two_pipelines_on_separate_store_objects_are_kept_apart_by_the_lease() -> None:
    """Two store objects over one data set and one lease table: like two processes."""
    table = LeaseTable()
    first = LeasingMemoryStore(table=table)
    second = LeasingMemoryStore(table=table, share_with=first)

    async def answer(messages: list[Message]) -> str:
        await anyio.sleep(random.random() * 0.003)
        return f"a:{messages[-1].content}"

    pipes = [Pipeline(MockProvider(answer), store=store, lease_ttl=5) for store in (first, second)]
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(pipes[i % 2].execute, "conv", "user", f"q{i}")
    assert_whole_turns(await first.load("conv"), {f"q{i}" for i in range(20)})
    assert table.acquired == 20
    assert table.released == 20
    assert table.leases == {}


async def test_without_the_lease_separate_store_objects_would_interleave() -> None:
    """The control for the test above: the same race without leases does lose turns."""
    first = MemoryStore()
    second = MemoryStore()
    second._data = first._data

    seen: list[int] = []

    async def answer(messages: list[Message]) -> str:
        seen.append(len(messages))
        await anyio.sleep(0.01)
        return f"a:{messages[-1].content}"

    pipes = [Pipeline(MockProvider(answer), store=store) for store in (first, second)]
    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(pipes[i].execute, "conv", "user", f"q{i}")
    # Both turns ran at once: each model call saw only its own message.
    assert seen == [1, 1]


@pytest.mark.parametrize("seed", range(3))
async def test_provider_failures_and_cancellations_never_leave_half_a_turn(seed: int) -> None:
    rng = random.Random(seed)
    store = SlowStore(seed=seed, pause=0.002)

    async def answer(messages: list[Message]) -> str:
        await anyio.sleep(rng.random() * 0.002)
        if rng.random() < 0.2:
            raise ProviderError("flaky model")
        return f"a:{messages[-1].content}"

    saved: set[str] = set()
    async with Pipeline(MockProvider(answer), store=store, lock_timeout=1) as pipe:
        cancelled = failed = 0
        for i in range(60):
            before = await store.load("conv")
            # A third of the turns run free; the rest are cancelled after 0 to 6 ms, which
            # lands in the lock, the load, the model call or the save.
            deadline = None if rng.random() < 0.33 else rng.random() * 0.006
            with anyio.move_on_after(deadline) as scope:
                try:
                    await pipe.execute("conv", "user", f"q{i}")
                except ProviderError:
                    failed += 1
            cancelled += scope.cancelled_caught
            after = await store.load("conv")
            if len(after) == len(before) + 2:
                saved.add(f"q{i}")
                assert after[:-2] == before
            else:
                assert after == before, f"turn q{i} left {len(after) - len(before)} messages"
            # Nothing is left held: the next turn starts at once.
            assert len(local_locks(store)) == 0
            assert store.table.leases == {}
        assert_whole_turns(await store.load("conv"), saved)
        assert saved, "no turn was saved: the test exercised nothing"
        assert cancelled, "no turn was cancelled: the test exercised nothing"
        assert failed, "the provider never failed: the test exercised nothing"
    state = await store.get("conv")
    assert state.token_count == sum(m.tokens or 0 for m in state.messages)


async def test_cancellation_during_the_save_still_saves_the_whole_turn() -> None:
    class SlowSave(MemoryStore):
        async def append_turn(self, session_id, messages, **kw):  # type: ignore[no-untyped-def]
            await anyio.sleep(0.05)
            return await super().append_turn(session_id, messages, **kw)

    store = SlowSave()
    async with Pipeline(MockProvider(["answer", "second"]), store=store) as pipe:
        # The deadline passes mid-save: the save completes (and the turn returns normally).
        with anyio.move_on_after(0.02):
            await pipe.execute("conv", "user", "q")
        assert [m.content for m in await store.load("conv")] == ["q", "answer"]
        # Cancelling the task explicitly while it saves: the same.
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipe.execute, "conv", "user", "q2")
            await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        assert [m.content for m in await store.load("conv")] == ["q", "answer", "q2", "second"]


async def test_cancelled_streams_save_nothing_and_free_the_session() -> None:
    rng = random.Random(7)
    store = SlowStore(seed=7)
    provider = MockProvider(lambda m: "one two three four five six", delay=0.001)
    outcomes = {"complete": 0, "cut short": 0}
    async with Pipeline(provider, store=store, lock_timeout=1) as pipe:
        for i in range(30):
            before = await store.load("conv")
            got: list[str] = []
            deadline = None if rng.random() < 0.33 else rng.random() * 0.01
            with anyio.move_on_after(deadline) as scope:
                async with aclosing(pipe.stream("conv", "user", f"q{i}")) as chunks:
                    async for chunk in chunks:
                        got.append(chunk.text)
            after = await store.load("conv")
            turn = [m.content for m in after[len(before) :]]
            if not scope.cancelled_caught:
                outcomes["complete"] += 1
                assert turn == [f"q{i}", "one two three four five six"]
            elif len(got) < 6:
                # Cut short before the last text chunk: nothing stored.
                outcomes["cut short"] += 1
                assert after == before
            else:
                # Every text chunk was read; the save may have been under way (then whole).
                assert turn in ([], [f"q{i}", "one two three four five six"])
            assert after[: len(before)] == before
            assert len(local_locks(store)) == 0
            assert store.table.leases == {}
    assert all(outcomes.values()), outcomes


async def test_a_busy_session_raises_session_busy_after_lock_timeout(turn_store: Store) -> None:
    gate = anyio.Event()

    async def blocked(messages: list[Message]) -> str:
        await gate.wait()
        return "late"

    async with (
        Pipeline(MockProvider(blocked), store=turn_store, lock_timeout=0.2) as pipe,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(pipe.execute, "conv", "user", "first")
        await anyio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(SessionBusyError, match="conv"):
            await pipe.execute("conv", "user", "second")
        assert 0.1 < time.monotonic() - started < 2
        gate.set()
    assert [m.content for m in await turn_store.load("conv")] == ["first", "late"]


async def test_lease_of_a_dead_holder_is_taken_over_after_it_expires() -> None:
    store = LeasingMemoryStore()
    # A "process" took the lease and died without renewing or releasing it.
    assert await store.acquire_lease("conv", "dead-process", 0.3)
    async with Pipeline(MockProvider(["ok"]), store=store, lock_timeout=5) as pipe:
        started = time.monotonic()
        result = await pipe.execute("conv", "user", "hi")
        waited = time.monotonic() - started
    assert result.response.content == "ok"
    assert 0.2 < waited < 2
    assert store.table.leases == {}


async def test_lease_held_by_a_live_process_gives_session_busy() -> None:
    store = LeasingMemoryStore()
    assert await store.acquire_lease("conv", "other-process", 10)
    async with Pipeline(MockProvider(["ok"]), store=store, lock_timeout=0.2) as pipe:
        with pytest.raises(SessionBusyError, match="another process"):
            await pipe.execute("conv", "user", "hi")
    assert await store.load("conv") == []
    assert store.table.leases["conv"][0] == "other-process"


async def test_the_lease_is_renewed_while_a_long_turn_runs() -> None:
    store = LeasingMemoryStore()

    async def slow(messages: list[Message]) -> str:
        await anyio.sleep(0.5)
        return "done"

    async with Pipeline(MockProvider(slow), store=store, lease_ttl=0.15) as pipe:
        result = await pipe.execute("conv", "user", "hi")
    assert result.response.content == "done"
    assert store.table.renewed >= 2
    assert [m.content for m in await store.load("conv")] == ["hi", "done"]


async def test_a_lost_lease_stores_nothing() -> None:
    store = LeasingMemoryStore()

    async def steal(messages: list[Message]) -> str:
        # Another process takes over (our lease "expired" while we were stalled).
        store.table.leases["conv"] = ("thief", time.monotonic() + 60)
        await anyio.sleep(0.25)  # the renewal (every ttl/3) finds the lease gone
        return "too late"

    async with Pipeline(MockProvider(steal), store=store, lease_ttl=0.3) as pipe:
        with pytest.raises(LeaseLostError):
            await pipe.execute("conv", "user", "hi")
    assert await store.load("conv") == []
    assert store.table.leases["conv"][0] == "thief"  # ours was not released over theirs


async def test_lost_reply_on_save_is_retried_without_storing_the_turn_twice() -> None:
    store = LostReplyStore(failures=2)
    async with Pipeline(MockProvider(["a1", "a2"]), store=store) as pipe:
        result = await pipe.execute("conv", "user", "q1")
        assert result.message_count == 2
        assert store.calls == 3
        await pipe.execute("conv", "user", "q2")
    assert [m.content for m in await store.load("conv")] == ["q1", "a1", "q2", "a2"]
    assert (await store.get("conv")).total_cost == 0.0


async def test_failed_write_is_retried_and_then_reported() -> None:
    store = LostReplyStore(failures=2, before=True)
    async with Pipeline(MockProvider(["a1"]), store=store) as pipe:
        await pipe.execute("conv", "user", "q1")
    assert [m.content for m in await store.load("conv")] == ["q1", "a1"]

    store = LostReplyStore(failures=5, before=True)
    async with Pipeline(MockProvider(["a1"]), store=store) as pipe:
        with pytest.raises(StoreUnavailableError):
            await pipe.execute("conv", "user", "q1")
    assert await store.load("conv") == []
    assert store.calls == 3


# -- append_turn: the store method the save stage uses --------------------------------------


async def test_append_turn_contract(turn_store: Store) -> None:
    turn = [Message("user", "q"), Message("assistant", "a")]
    assert await turn_store.append_turn("s", turn, cost=0.5, turn_id="t1") == 2
    # A retry of the same turn is a no-op.
    assert await turn_store.append_turn("s", turn, cost=0.5, turn_id="t1") == 2
    stored = await turn_store.load("s")
    assert [m.content for m in stored] == ["q", "a"]
    assert stored[0].metadata == {"turn_id": "t1"}
    state = await turn_store.get("s")
    assert state.total_cost == 0.5
    assert state.token_count == sum(m.tokens or 0 for m in state.messages)
    # expected_count guards against interleaving writers.
    with pytest.raises(ConflictError, match="expected 0"):
        await turn_store.append_turn("s", turn, expected_count=0)
    assert await turn_store.append_turn("s", turn, turn_id="t2", expected_count=2) == 4
    assert await turn_store.append_turn("s", turn, turn_id="t2", expected_count=2) == 4
    assert await turn_store.append_turn("s", [], cost=1.0) == 4
    assert (await turn_store.get("s")).total_cost == 0.5
    assert await turn_store.append_turn("new", [Message("user", "x")], expected_count=0) == 1
    # Without cost or expected_count (the pipeline's common case), retries are no-ops too.
    assert await turn_store.append_turn("s", turn, turn_id="t3") == 6
    assert await turn_store.append_turn("s", turn, turn_id="t3") == 6
    assert await turn_store.append_turn("s", turn, turn_id="t4") == 8
    stored = await turn_store.load("s")
    assert [m.metadata.get("turn_id") for m in stored[::2]] == ["t1", "t2", "t3", "t4"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cost": -1.0},
        {"cost": float("nan")},
        {"cost": "1"},
        {"turn_id": ""},
        {"turn_id": 5},
        {"expected_count": -1},
        {"expected_count": True},
    ],
)
async def test_append_turn_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    store = MemoryStore()
    with pytest.raises(ValidationError):
        await store.append_turn("s", [Message("user", "q")], **kwargs)  # type: ignore[arg-type]
    assert await store.load("s") == []


async def test_memory_store_has_no_lease_and_the_leasing_store_has() -> None:
    assert not isinstance(MemoryStore(), SupportsLease)
    assert isinstance(LeasingMemoryStore(), SupportsLease)


async def test_a_hung_save_gives_up_after_the_save_timeout() -> None:
    class Hung(MemoryStore):
        async def append_turn(self, session_id, messages, **kw):  # type: ignore[no-untyped-def]
            await anyio.sleep(10)
            raise AssertionError("unreachable")

    stages = [LoadState(), CallProvider(), SaveState(timeout=0.1, retries=0)]
    async with Pipeline(MockProvider(["x"]), store=Hung(), middleware=stages) as pipe:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="may or may not be stored"):
            await pipe.execute("conv", "user", "q")
        assert time.monotonic() - started < 2
        assert len(local_locks(pipe.store)) == 0

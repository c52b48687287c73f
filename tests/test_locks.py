"""The turn runner's lease renewal (promptstate.locks): one timer renews the leases of all the
turns a runner holds on an asyncio loop; each lease is renewed well before it expires, and a
turn that ends leaves nothing behind.

The pipeline-level renewal tests (a long turn, a lost lease, both keepers) are in
tests/test_pipeline_safety.py and tests/test_pipeline_lease_fastpath.py.
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from promptstate.locks import TurnLease, TurnRunner
from tests.pipeline_support import LeasingMemoryStore

pytestmark = pytest.mark.anyio


def _runner(store: LeasingMemoryStore, ttl: float) -> TurnRunner:
    return TurnRunner(store, max_wait=5.0, lease_ttl=ttl)


async def test_concurrent_long_turns_all_keep_their_leases() -> None:
    # 0.6 s leases renewed from one timer ticking every ttl/9: each must be renewed at most
    # 4/9 of its ttl after it was taken, long before it lapses, whatever the others do. (Not
    # shorter: a loaded machine's stalls let a 0.15 s lease lapse once in another test.)
    store = LeasingMemoryStore()
    runner = _runner(store, ttl=0.6)
    kept: list[bool] = []

    async def body(lease: TurnLease | None) -> None:
        assert lease is not None
        await anyio.sleep(1.3)
        kept.append(not lease.lost and lease.remaining() > 0)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(runner.run, f"s{i}", body)
    assert kept == [True] * 20
    assert store.table.renewed >= 20 * 2  # 1.3 s of a 0.6 s lease: at least twice each
    assert store.table.leases == {}  # every lease released at the end


async def test_short_turns_start_no_renewal_and_leave_nothing_registered() -> None:
    store = LeasingMemoryStore()
    runner = _runner(store, ttl=30.0)

    async def body(lease: TurnLease | None) -> None:
        await anyio.lowlevel.checkpoint()

    for _ in range(3):
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(runner.run, f"s{i}", body)
    assert store.table.renewed == 0
    # Nothing kept per turn once it ended: the runner's table does not grow with turns.
    renewals = runner._renewals
    assert renewals is not None
    assert renewals._due == {}
    assert renewals._tasks == {}


async def test_a_cancelled_turn_stops_its_renewal() -> None:
    store = LeasingMemoryStore()
    runner = _runner(store, ttl=0.3)
    started = anyio.Event()

    async def body(lease: TurnLease | None) -> None:
        started.set()
        await anyio.sleep(10)

    with anyio.move_on_after(0.8):  # well past a third of the ttl: its renewal task runs
        await runner.run("s", body)
    assert started.is_set()
    renewed = store.table.renewed
    assert renewed >= 1
    await anyio.sleep(0.4)  # more than the renewal period: a task still running would renew
    assert store.table.renewed == renewed
    renewals = runner._renewals
    assert renewals is not None
    assert renewals._due == {}
    assert renewals._tasks == {}
    assert store.table.leases == {}


def test_a_runner_renews_on_every_event_loop_it_runs_on() -> None:
    # One runner, two event loops one after the other (as a worker that restarts its loop, or
    # test suites with a loop per test): the second loop's turns are renewed too.
    store = LeasingMemoryStore()
    runner = _runner(store, ttl=0.6)

    async def body(lease: TurnLease | None) -> None:
        assert lease is not None
        await asyncio.sleep(1.0)
        assert not lease.lost
        assert lease.remaining() > 0

    asyncio.run(runner.run("s", body))
    first = store.table.renewed
    assert first >= 1
    asyncio.run(runner.run("s", body))
    assert store.table.renewed >= first + 1

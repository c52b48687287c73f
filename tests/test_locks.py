"""The turn runner's lease renewal (promptstate.locks): one timer renews the leases of all the
turns a runner holds on an asyncio loop; each lease is renewed well before it expires, and a
turn that ends leaves nothing behind.

The pipeline-level renewal tests (a long turn, a lost lease, both keepers) are in
tests/test_pipeline_safety.py and tests/test_pipeline_lease_fastpath.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from promptstate.locks import TurnLease, TurnRunner
from tests.pipeline_support import LeasingMemoryStore

pytestmark = pytest.mark.anyio


def _runner(store: LeasingMemoryStore, ttl: float) -> TurnRunner:
    return TurnRunner(store, max_wait=5.0, lease_ttl=ttl)


def _long_turn(seconds: float, kept: list[bool]) -> Callable[[TurnLease | None], Awaitable[None]]:
    """A turn body that runs ``seconds`` and then notes whether its lease is still held."""

    async def body(lease: TurnLease | None) -> None:
        assert lease is not None
        await anyio.sleep(seconds)
        kept.append(not lease.lost and lease.remaining() > 0)

    return body


async def test_concurrent_long_turns_all_keep_their_leases() -> None:
    # 1.2 s leases renewed from one timer ticking every ttl/9: each must be renewed at most
    # 4/9 of its ttl after it was taken, long before it lapses, whatever the others do. (The
    # TTL leaves room for a loaded machine's stalls: 0.15 s let a lease lapse once elsewhere.)
    store = LeasingMemoryStore()
    runner = _runner(store, ttl=1.2)
    kept: list[bool] = []
    body = _long_turn(2.0, kept)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(runner.run, f"s{i}", body)
    assert kept == [True] * 20
    assert store.table.renewed >= 20 * 2  # 2.0 s of a 1.2 s lease: at least twice each
    assert store.table.leases == {}  # every lease released at the end


async def test_a_shorter_ttl_is_renewed_in_time_beside_a_longer_one() -> None:
    # The timer ticks for the shortest TTL among the turns it renews: a runner whose
    # lease_ttl was lowered while a turn with the old one runs renews the new turns in time.
    store = LeasingMemoryStore()
    runner = _runner(store, ttl=30.0)
    kept: list[bool] = []
    body = _long_turn(2.0, kept)

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, "long-ttl", body)
        await anyio.sleep(0.05)
        runner.lease_ttl = 1.2
        tg.start_soon(runner.run, "short-ttl", body)
    assert kept == [True, True]
    assert store.table.renewed >= 2  # the short one, twice; the 30 s one needs none


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
    renewing: list[asyncio.Task[None]] = []

    async def body(lease: TurnLease | None) -> None:
        assert lease is not None
        await anyio.sleep(0.3)  # past a third of the ttl plus a tick: its renewal task runs
        renewals = runner._renewals
        assert renewals is not None
        renewing.append(renewals._tasks[lease])
        await anyio.sleep(10)

    with anyio.move_on_after(0.8):
        await runner.run("s", body)
    # The runner stopped the renewal task before it returned (it would otherwise sleep on
    # until its next renewal, then find the lease released).
    assert len(renewing) == 1
    assert renewing[0].done()
    assert store.table.renewed >= 1
    renewals = runner._renewals
    assert renewals is not None
    assert renewals._due == {}
    assert renewals._tasks == {}
    assert store.table.leases == {}


def test_a_runner_renews_on_every_event_loop_it_runs_on() -> None:
    # One runner, two event loops one after the other (as a worker that restarts its loop, or
    # test suites with a loop per test): the second loop's turns are renewed too.
    store = LeasingMemoryStore()
    runner = _runner(store, ttl=1.2)

    async def body(lease: TurnLease | None) -> None:
        assert lease is not None
        await asyncio.sleep(1.2)
        assert not lease.lost
        assert lease.remaining() > 0

    asyncio.run(runner.run("s", body))
    first = store.table.renewed
    assert first >= 1
    asyncio.run(runner.run("s", body))
    assert store.table.renewed >= first + 1

"""A turn started by a caller whose cancel scope is already cancelled does not run.

A turn on a leasing store with a provider that answers at once never suspends outside its
shielded steps (lease, save), so a cancelled caller that runs turns in a loop never saw its
cancellation: ``promptstate demo`` ran 30,000 turns after Ctrl-C.
"""

from __future__ import annotations

import anyio
import pytest

from promptstate import MockProvider, Pipeline, Store
from tests.backends import params

pytestmark = pytest.mark.anyio


@pytest.fixture(params=params("memory", "sqlite"))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_cancelled_caller_runs_no_turn(store: Store) -> None:
    async with Pipeline(MockProvider(["ok"], cycle=True), store=store) as pipe:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pipe.execute("s", "user", "never sent")
        assert scope.cancelled_caught
        assert await store.load("s") == []


async def test_a_loop_of_turns_stops_when_its_scope_is_cancelled(store: Store) -> None:
    done = 0
    async with Pipeline(MockProvider(["ok"], cycle=True), store=store) as pipe:
        with anyio.CancelScope() as scope:
            for turn in range(1_000):
                await pipe.execute("s", "user", f"turn {turn}")
                done += 1
                if done == 5:
                    scope.cancel()  # as a signal handler or a deadline would
    assert done == 5
    assert len(await store.load("s")) == 10

"""A cancelled write is settled when the call returns (issue 12, points 1 and 2).

Plain ``task.cancel()`` at random moments, many times: right after the call raised
``CancelledError`` the stored state is read, and read again a while later; the two must be
equal (nothing of the cancelled write lands later), and the caller's next write lands after
it, never before. A pipeline turn cancelled the same way leaves no lease behind: the next
turn on the session proceeds at once.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from promptstate import (
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    PostgresStore,
    SQLiteStore,
    State,
    Store,
)
from promptstate.stores.redis import RedisStore
from tests.servers import drop_postgres_tables

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("sweep_orphaned_sockets")]

TRIALS = 60


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, postgres_dsn: str
) -> AsyncIterator[Store]:
    kind = request.param
    table = f"settle_{uuid.uuid4().hex[:10]}"
    made: Store
    if kind == "memory":
        made = MemoryStore()
    elif kind == "sqlite":
        made = SQLiteStore(tmp_path / "s.db")
    elif kind == "redis":
        made = RedisStore.from_url(redis_url, prefix=f"settle{uuid.uuid4().hex[:8]}:")
    else:
        made = PostgresStore.from_dsn(postgres_dsn, table_name=table)
    try:
        async with made:
            yield made
            if kind == "redis":
                await made.delete_by_prefix("")
    finally:
        if kind == "postgres":
            await drop_postgres_tables(postgres_dsn, table)


async def _cancel_soon(coro: object, delay: float) -> bool:
    """Run ``coro`` as a task and ``task.cancel()`` it after ``delay``; True if cancelled."""
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    if delay:  # else: cancelled before it even started
        await asyncio.sleep(delay)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


async def test_a_cancelled_append_is_settled_and_in_order(store: Store) -> None:
    rng = random.Random(1204)
    await store.set("s", State(conversation_id="s"))
    cancelled = 0
    for trial in range(TRIALS):
        delay = rng.choice((0, 0, rng.uniform(0, 0.004)))
        was_cancelled = await _cancel_soon(store.append("s", [Message("user", f"A{trial}")]), delay)
        cancelled += was_cancelled
        right_after = [m.content for m in await store.load("s")]
        await store.append("s", [Message("user", f"B{trial}")])  # the caller's next write
        await asyncio.sleep(0.02)
        later = [m.content for m in await store.load("s")]
        assert later[: len(right_after)] == right_after  # nothing appeared in between
        assert later[len(right_after) :] == [f"B{trial}"]  # A never lands after B
    assert cancelled > TRIALS // 4  # the test did cancel writes in flight


async def test_a_cancelled_set_with_expected_version_is_settled(store: Store) -> None:
    rng = random.Random(412)
    state = await store.set("v", State(conversation_id="v"))
    for trial in range(TRIALS):
        update = State(conversation_id="v", messages=[Message("user", f"v{trial}")])
        await _cancel_soon(
            store.set("v", update, expected_version=state.version),
            rng.choice((0, rng.uniform(0, 0.004))),
        )
        state = await store.get("v")
        await asyncio.sleep(0.02)
        assert (await store.get("v")).version == state.version


async def test_a_cancelled_turn_leaves_no_lease_behind(store: Store) -> None:
    rng = random.Random(99)
    async with Pipeline(
        MockProvider(["ok"], cycle=True, delay=0.001), store=store, lock_timeout=0.5
    ) as pipe:
        for trial in range(TRIALS // 2):
            await _cancel_soon(pipe.execute("t", "user", f"q{trial}"), rng.uniform(0, 0.006))
            # The next turn proceeds at once: no lease of the cancelled one is left over.
            await pipe.execute("t", "user", f"next {trial}")

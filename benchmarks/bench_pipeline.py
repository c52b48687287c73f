"""Pipeline.execute against the bare store calls a turn needs, at short and long histories.

For each store and each history length the benchmark times, in the same run:

* ``pipeline``: ``await pipe.execute(session, "user", text)`` with a :class:`MockProvider`
  and the default stages with ``max_tokens`` (load -> TokenBudget -> provider -> save), so
  the turn takes the session lock (and lease), loads the tail the budget can use, truncates,
  counts tokens, calls the mock model and appends the turn atomically;
* ``bare``: what the turn needs from the store and nothing else: build the two messages,
  ``await store.load(session, last=W)`` with the same window ``W`` the pipeline read, and
  ``await store.append(session, [user, assistant])``.

The two run in interleaved batches of 10 turns (pipeline, bare, bare, pipeline, ...) on one
store object, and ``pipeline/bare`` is the median of the per-round ratios, so load from other
jobs on the machine hits both sides alike.

Targets: ``pipeline / bare`` at most 1.5, and the pipeline at 10,000 messages at most 1.3x
the pipeline at 10.

Stores: MemoryStore, SQLiteStore (a file in a temporary folder) when it is available, and
Redis when ``REDIS_URL`` is set and the RedisStore is available.

Run: ``python -m benchmarks.bench_pipeline`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio

from benchmarks._timing import fmt_us, machine
from benchmarks.workload import WindowSpy
from promptstate import MemoryStore, Message, MockProvider, Pipeline, Store
from promptstate.pipeline import default_stages

HISTORIES = (10, 10_000)
MAX_TOKENS = 500
USER_TEXT = "What did we decide about the launch date?"
REPLY = "We agreed on the second week of March."


def _history(count: int) -> list[Message]:
    return [
        Message("user", USER_TEXT) if i % 2 == 0 else Message("assistant", REPLY)
        for i in range(count)
    ]


async def _fill(store: Store, session: str, messages: list[Message]) -> None:
    await store.delete(session)
    for i in range(0, len(messages), 500):
        await store.append(session, messages[i : i + 500])


async def _time_pair(
    fns: tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]],
    resets: tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]],
    budget: float,
) -> tuple[float, float, float]:
    """Interleaved batches of 10 turns of each of two workloads, for about ``budget`` seconds.

    Batches alternate (A, B, B, A, ...), so both see the same machine load; returns the median
    seconds per turn of each and the median of the per-round ratios A/B. ``reset`` (not
    timed) puts a history back to its starting length before each batch, so a 10-message
    history stays between 10 and 30 messages while it is measured.
    """

    async def batch(i: int) -> float:
        await resets[i]()
        start = time.perf_counter()
        for _ in range(10):
            await fns[i]()
        return (time.perf_counter() - start) / 10

    await batch(0)
    await batch(1)
    means: tuple[list[float], list[float]] = ([], [])
    ratios: list[float] = []
    deadline = time.perf_counter() + 2 * budget
    rounds = 0
    while rounds < 15 or time.perf_counter() < deadline:
        order = (0, 1) if rounds % 2 == 0 else (1, 0)
        got = {i: await batch(i) for i in order}
        means[0].append(got[0])
        means[1].append(got[1])
        ratios.append(got[0] / got[1])
        rounds += 1
    return statistics.median(means[0]), statistics.median(means[1]), statistics.median(ratios)


async def _measure(store: Store, history: int, budget: float) -> tuple[float, float, float, int]:
    tag = uuid.uuid4().hex[:8]
    piped, bare = f"bench-{tag}-pipe", f"bench-{tag}-bare"
    start = _history(history)
    stages = default_stages(MAX_TOKENS)
    stages[0] = WindowSpy()
    pipe = Pipeline(MockProvider([REPLY], cycle=True), store=store, middleware=stages)
    filled: set[str] = set()

    def resetter(session: str) -> Callable[[], Awaitable[None]]:
        async def reset() -> None:
            # Long histories grow by a negligible fraction; refill only the short ones.
            if session not in filled or history < 1000:
                await _fill(store, session, start)
                filled.add(session)

        return reset

    async def turn() -> object:
        return await pipe.execute(piped, "user", USER_TEXT)

    # The window the pipeline reads (the budget's hint settles after a turn or two).
    await resetter(piped)()
    for _ in range(3):
        await turn()

    async def bare_turn() -> object:
        window = WindowSpy.window or history
        user = Message("user", USER_TEXT)
        held = await store.load(bare, last=window)  # kept until the turn ends, as a turn does
        count = await store.append(bare, [user, Message("assistant", REPLY)])
        del held
        return count

    pipe_time, bare_time, ratio = await _time_pair(
        (turn, bare_turn), (resetter(piped), resetter(bare)), budget
    )
    return pipe_time, bare_time, ratio, WindowSpy.window or history


async def bench_store(name: str, make: Callable[[], Store], budget: float) -> list[list[str]]:
    rows = []
    results: dict[int, float] = {}
    for history in HISTORIES:
        store = make()
        try:
            pipe_time, bare_time, ratio, window = await _measure(store, history, budget)
        finally:
            await store.delete_by_prefix("bench-")
            await store.aclose()
        results[history] = pipe_time
        rows.append(
            [
                name,
                f"{history:,}",
                str(window),
                fmt_us(bare_time),
                fmt_us(pipe_time),
                f"{ratio:.2f}x",
            ]
        )
    rows[0].append("")
    rows[-1].append(f"{results[HISTORIES[-1]] / results[HISTORIES[0]]:.2f}x")
    return rows


async def main(quick: bool) -> None:
    budget = 0.5 if quick else 2.0
    stores: list[tuple[str, Callable[[], Store]]] = [("memory", MemoryStore)]
    try:
        from promptstate.stores.sqlite import SQLiteStore
    except ImportError:
        pass
    else:
        folder = tempfile.mkdtemp(prefix="ps-bench-")
        stores.append(("sqlite", lambda: SQLiteStore(f"{folder}/{uuid.uuid4().hex}.db")))
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        try:
            from promptstate.stores.redis import RedisStore  # type: ignore[import-not-found]
        except ImportError:
            print("REDIS_URL is set but RedisStore is not available on this branch: skipped")
        else:
            prefix = f"ps-bench-{uuid.uuid4().hex[:8]}:"
            stores.append(("redis", lambda: RedisStore.from_url(redis_url, prefix=prefix)))
    header = [
        "store",
        "history",
        "window",
        "bare load+append (us)",
        "Pipeline.execute (us)",
        "pipeline/bare",
        "10k/10 turn",
    ]
    rows = [header]
    for name, make in stores:
        rows.extend(await bench_store(name, make, budget))
    print(f"Pipeline.execute vs bare store calls, max_tokens={MAX_TOKENS} ({machine()})\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    anyio.run(main, parser.parse_args().quick)

"""``list_by_prefix`` returning 10 sessions among few and among many, per store.

Run: ``python -m benchmarks.bench_listing`` (``--quick``), or everything: ``python -m benchmarks``.

Sessions are named ``t<group>:<n>`` (ten per group), each holding a user and an assistant
message, so the prefix ``t<group>:`` matches exactly ten of them. The store is filled to the
smaller size through its own API (``append`` from 64 concurrent tasks), measured, filled up to
the larger size and measured again: the same ten-session answer, found among 1,000 and among
100,000 sessions (10,000 in quick mode). Each measurement lists a different random group and
reads the whole answer; a wrong count is reported as a failure.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

from benchmarks.bench_turns import StoreTurn
from benchmarks.workload import Env, Skip, turn_messages


def key(i: int) -> str:
    return f"t{i // 10:06d}:{i % 10}"


async def fill(store: Any, start: int, stop: int, concurrency: int = 64) -> None:
    messages = turn_messages(0)
    queue = iter(range(start, stop))

    async def worker() -> None:
        for i in queue:
            await store.append(key(i), messages)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(store: Any, size: int, repeats: int, rng: random.Random) -> list[float]:
    times: list[float] = []
    for _ in range(3):  # warm-up: connections, prepared statements, scripts
        [s async for s in store.list_by_prefix(f"t{rng.randrange(size // 10):06d}:")]
    for _ in range(repeats):
        prefix = f"t{rng.randrange(size // 10):06d}:"
        start = time.perf_counter()
        found = [s.conversation_id async for s in store.list_by_prefix(prefix)]
        times.append(time.perf_counter() - start)
        if len(found) != 10 or not all(k.startswith(prefix) for k in found):
            raise AssertionError(
                f"list_by_prefix({prefix!r}) returned {len(found)} sessions, not 10"
            )
    return times


def steps(config: Any, backends: set[str]) -> int:
    """Progress steps of :func:`run`."""
    return (
        2
        * len(config.listing_sizes)
        * len(set(backends) & {"memory", "redis", "postgres", "sqlite"})
    )


async def run(
    env: Env, config: Any, progress: Any, backends: set[str]
) -> tuple[list[Any], list[str]]:
    from benchmarks.runner import Record

    sizes = sorted(config.listing_sizes)
    order = [b for b in ("memory", "redis", "postgres", "sqlite") if b in backends]
    records: list[Any] = []
    notes: list[str] = []
    rng = random.Random(8)
    for backend in order:
        contender = StoreTurn(env, backend)
        try:
            await contender.open()
        except Skip as exc:
            notes.append(f"listing, {contender.name}: skipped: {exc}")
            for _ in range(len(sizes) * 2):
                progress.step()
            await contender.aclose()
            continue
        store = contender.store
        try:
            filled = 0
            base: float | None = None
            for size in sizes:
                progress.step(f"listing: filling {contender.name} to {size:,} sessions")
                started = time.perf_counter()
                await fill(store, filled, size)
                await contender.settle()
                # let the server finish what the burst of writes started (Redis rehashes its
                # key space incrementally after growing it; PostgreSQL autovacuum)
                await asyncio.sleep(config.listing_settle_seconds)
                fill_rate = (size - filled) / (time.perf_counter() - started)
                filled = size
                progress.step(f"listing: {contender.name} among {size:,}")
                times = sorted(await measure(store, size, config.listing_repeats, rng))
                p50 = statistics.median(times)
                base = base or p50
                records.append(
                    Record(
                        scenario="listing",
                        store=contender.name,
                        backend=backend,
                        kind="promptstate",
                        p50_ms=p50 * 1e3,
                        p99_ms=times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3,
                        value=p50 * 1e3,
                        unit="ms per list_by_prefix (10 matches)",
                        extra={
                            "sessions": size,
                            "x_smallest": p50 / base,
                            "fill_sessions_per_s": fill_rate,
                        },
                    )
                )
        except Exception as exc:
            notes.append(f"listing, {contender.name}: failed: {type(exc).__name__}: {exc}")
        finally:
            await contender.aclose()
    return records, notes


if __name__ == "__main__":
    from benchmarks.runner import main

    main(default_only="listing")

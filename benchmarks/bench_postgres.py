"""PostgresStore against raw asyncpg running the same statements, in the same run.

One turn is what a chat server does per request: ``load(last=50)`` and then ``append`` of two
messages (the user's and the assistant's). The raw floor sends the very same SQL through an
asyncpg pool of the same size and settings; it encodes the two new messages and counts their
tokens as any code storing them must, but leaves the 50 loaded rows as undecoded bytes. So the
difference is what promptstate adds: argument validation, decoding rows into ``Message``
objects, connection handling and error translation.

Run (against the server in POSTGRES_DSN, default postgresql://postgres@127.0.0.1:5432/test)::

    python -m benchmarks.bench_postgres [--turns 200] [--pool-size 16] [--repeat 5]

It creates tables named ``ps_bench_<random>`` and drops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import asyncpg

from promptstate import Message, PostgresStore
from promptstate.serialization import pack
from promptstate.stores.postgres import _no_reset

DSN = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
HISTORIES = (10, 1_000, 10_000)
CONCURRENCY = (1, 64)


def _turn_messages(i: int) -> list[Message]:
    return [
        Message("user", f"Question {i}: what did we decide about the schema?"),
        Message("assistant", f"Answer {i}: one row per message, keyed by session and seq."),
    ]


async def _populate(store: PostgresStore, keys: list[str], history: int) -> None:
    filler = [
        Message("user" if i % 2 == 0 else "assistant", f"history message number {i} " * 3)
        for i in range(min(history, 2_000))
    ]

    async def fill(key: str) -> None:
        left = history
        while left > 0:
            batch = filler[: min(left, len(filler))]
            await store.append(key, batch)
            left -= len(batch)

    sem = asyncio.Semaphore(8)

    async def guarded(key: str) -> None:
        async with sem:
            await fill(key)

    await asyncio.gather(*(guarded(k) for k in keys))


async def _run(turn: Callable[[str, int], Awaitable[None]], keys: list[str], turns: int) -> float:
    """Run ``turns`` turns spread over ``keys`` (one task per key); returns seconds taken.

    The client process's CPU seconds are added to ``_CPU[turn]``."""
    per_key = max(1, turns // len(keys))

    async def worker(key: str) -> None:
        for i in range(per_key):
            await turn(key, i)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(k) for k in keys))
    _CPU[turn] = _CPU.get(turn, 0.0) + time.process_time() - cpu
    return time.perf_counter() - start


_CPU: dict[Any, float] = {}


async def main(
    turns: int,
    pool_size: int,
    repeat: int,
    histories: tuple[int, ...] = HISTORIES,
    concurrency: tuple[int, ...] = CONCURRENCY,
) -> None:
    table = f"ps_bench_{uuid.uuid4().hex[:10]}"
    store = PostgresStore.from_dsn(DSN, table_name=table, min_size=pool_size, max_size=pool_size)
    raw = await asyncpg.create_pool(DSN, min_size=pool_size, max_size=pool_size, reset=_no_reset)
    await store.setup()
    load_sql, append_sql = store._sql.load_last, store._sql.append
    counter = store._counter
    rows: list[tuple[Any, ...]] = []
    growth: dict[int, float] = {}

    async def store_turn(key: str, i: int) -> None:
        await store.load(key, last=50)
        await store.append(key, _turn_messages(i))

    try:
        cases = [(h, c) for h in histories for c in concurrency]
        keys = {
            (h, c, side): [f"{side}:{h}:{c}:{i}" for i in range(c)]
            for h, c in cases
            for side in ("store", "raw")
        }
        started = time.perf_counter()
        for h, c in cases:
            await _populate(store, keys[h, c, "store"] + keys[h, c, "raw"], h)
        async with raw.acquire() as conn:  # settle the tables before timing anything
            await conn.execute(f'VACUUM ANALYZE "{table}", "{table}_messages"')
        print(f"populated in {time.perf_counter() - started:.1f} s", flush=True)

        for history, conc in cases:
            store_keys, raw_keys = keys[history, conc, "store"], keys[history, conc, "raw"]
            n = turns if conc == 1 else max(turns, conc * 10)

            async def raw_turn(key: str, i: int) -> None:
                async with raw.acquire() as conn:
                    await conn.fetch(load_sql, key, 50)
                msgs = _turn_messages(i)
                tokens = sum(counter.count(m) for m in msgs)
                data = [pack(m) for m in msgs]
                async with raw.acquire() as conn:
                    await conn.fetchval(
                        append_sql, key, data, 2, tokens, datetime.now(timezone.utc), 0.0
                    )

            # Warm both up (statement caches, buffers), then alternate between the two, so
            # that load from elsewhere on the machine hits both alike.
            await _run(store_turn, store_keys, conc * 5)
            await _run(raw_turn, raw_keys, conc * 5)
            if conc == 1:
                raw_samples, store_samples = [], []
                cpu = {"raw": 0.0, "store": 0.0}
                for i in range(n * repeat):
                    for side in ("raw", "store") if i % 2 else ("store", "raw"):
                        start, cpu_start = time.perf_counter(), time.process_time()
                        if side == "raw":
                            await raw_turn(raw_keys[0], i)
                            raw_samples.append(time.perf_counter() - start)
                        else:
                            await store_turn(store_keys[0], i)
                            store_samples.append(time.perf_counter() - start)
                        cpu[side] += time.process_time() - cpu_start
                raw_cpu, store_cpu = cpu["raw"] / (n * repeat), cpu["store"] / (n * repeat)
                # The lower quartile: on a shared machine the upper half of the turns mostly
                # measures the scheduler, not the code.
                raw_s, store_s, done = (
                    statistics.quantiles(raw_samples, n=4)[0],
                    statistics.quantiles(store_samples, n=4)[0],
                    1,
                )
                paired = statistics.median(
                    st / rt for st, rt in zip(store_samples, raw_samples, strict=True)
                )
            else:
                store_times, raw_times = [], []
                _CPU.clear()
                for _ in range(repeat):
                    raw_times.append(await _run(raw_turn, raw_keys, n))
                    store_times.append(await _run(store_turn, store_keys, n))
                done = max(1, n // conc) * conc
                raw_s, store_s = min(raw_times), min(store_times)  # the least disturbed round
                raw_cpu = _CPU[raw_turn] / (done * repeat)
                store_cpu = _CPU[store_turn] / (done * repeat)
                paired = statistics.median(
                    st / rt for st, rt in zip(store_times, raw_times, strict=True)
                )
            row = (
                history,
                conc,
                raw_s / done,
                store_s / done,
                done / raw_s,
                done / store_s,
                paired,
                raw_cpu,
                store_cpu,
            )
            rows.append(row)
            print(
                f"history {history:>6}  concurrency {conc:>3}: raw {row[2] * 1e6:8.0f} us/turn"
                f"  store {row[3] * 1e6:8.0f} us/turn  (paired ratio {paired:.2f}x)",
                flush=True,
            )
        # Does a turn cost more on a long conversation? Alternate the two histories, paired.
        for conc in concurrency if {10, 10_000} <= set(histories) else ():
            short, long = keys[10, conc, "store"], keys[10_000, conc, "store"]
            n = turns if conc == 1 else max(turns, conc * 10)
            ratios = []
            for i in range(n * repeat if conc == 1 else repeat):
                if conc == 1:
                    start = time.perf_counter()
                    await store_turn(short[0], i)
                    mid = time.perf_counter()
                    await store_turn(long[0], i)
                    ratios.append((time.perf_counter() - mid) / (mid - start))
                else:
                    a = await _run(store_turn, short, n)
                    b = await _run(store_turn, long, n)
                    ratios.append(b / a)
            growth[conc] = statistics.median(ratios)
    finally:
        await raw.close()
        await store.aclose()
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(
                f'DROP TABLE IF EXISTS "{table}_messages", "{table}", '
                f'"{table}_migrations", "{table}_leases"'
            )
        finally:
            await conn.close()

    print()
    print(
        "| history | sessions | raw asyncpg µs/turn | PostgresStore µs/turn "
        "| raw turns/s | store turns/s | store/raw time (paired) | store/raw throughput "
        "| client CPU µs/turn raw / store |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for history, conc, raw_t, store_t, raw_tp, store_tp, paired, raw_c, store_c in rows:
        print(
            f"| {history:,} | {conc} | {raw_t * 1e6:,.0f} | {store_t * 1e6:,.0f} "
            f"| {raw_tp:,.0f} | {store_tp:,.0f} | {paired:.2f}x | {1 / paired:.2f}x "
            f"| {raw_c * 1e6:,.0f} / {store_c * 1e6:,.0f} |"
        )
    print()
    for conc, ratio in growth.items():
        print(
            f"PostgresStore turn at history 10,000 / turn at history 10, {conc} session(s), "
            f"paired: {ratio:.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200, help="turns per timed round")
    parser.add_argument("--pool-size", type=int, default=16, help="connections per pool")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds each")
    parser.add_argument("--histories", type=int, nargs="+", default=list(HISTORIES))
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args()
    asyncio.run(
        main(
            args.turns,
            args.pool_size,
            args.repeat,
            tuple(args.histories),
            tuple(args.concurrency),
        )
    )

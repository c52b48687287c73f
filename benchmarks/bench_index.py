"""The session index: cheap session facts and paged listing, per store, as ratios in one run.

Run: ``python -m benchmarks.bench_index`` (``--quick`` for 10,000 sessions instead of 100,000,
``--stores memory,sqlite,redis,postgres`` for some of them).

Two tables, every number a median of many alternating measurements on the same store:

1. **Facts vs history.** On one session of 10,000 messages: ``merge_metadata`` of one key
   against ``append`` of one message (target: at most 1.5x); ``count`` and ``get_metadata`` on
   a session of 10,000 messages against one of 10 (target: flat, about 1x).
2. **Listing vs store size.** The store is filled to 1,000 sessions, measured, filled to
   100,000 and measured again, through its own API: a page of the 20 newest sessions of the
   whole store, of one user (50 users, so each holds 20 sessions at 1,000 and 2,000 at
   100,000), and ``list_by_prefix`` with 10 matches (ids ``t<group>:<n>``, ten per group).
   Each measurement asks a different random user or group. Target: at most 2x.

Servers come from ``REDIS_URL`` and ``POSTGRES_DSN`` (defaults as in ``benchmarks.workload``);
an absent one is skipped with a note. Everything written is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks import _servers
from benchmarks._timing import machine
from benchmarks.workload import Env, Skip, history_messages, postgres_dsn, redis_url

BACKENDS = ("memory", "sqlite", "redis", "postgres")
USERS = 50
PAGE = 20


def key(i: int) -> str:
    return f"t{i // 10:06d}:{i % 10}"


async def open_store(env: Env, backend: str) -> tuple[Any, str]:
    """A fresh, empty store of ``backend`` (its own prefix, schema or file)."""
    from promptstate import open_store as open_url

    if backend == "memory":
        store = open_url("memory://")
    elif backend == "sqlite":
        store = open_url(f"sqlite:///{Path(env.tmpdir) / env.unique('idx')}.db")
    elif backend == "redis":
        store = open_url(env.need_redis(), prefix=env.redis_prefix("idx"))
    elif backend == "postgres":
        dsn = env.need_postgres()
        schema = env.pg_schema("idx")
        await _servers.create_schema(dsn, schema)
        store = open_url(dsn, table_name=f"{schema}.sessions")
        store._bench_schema = schema
    else:
        raise ValueError(backend)
    await store.__aenter__()
    return store, type(store).__name__


async def alternate(
    calls: dict[str, Callable[[], Awaitable[object]]], repeats: int
) -> dict[str, float]:
    """Median seconds per call of each, measured in turn (a, b, a, b, ...) after a warm-up,
    so both see the same machine load."""
    for call in calls.values():
        for _ in range(5):
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


async def facts(store: Any, repeats: int) -> dict[str, float]:
    """Table 1 on one store: medians in seconds."""
    from promptstate import Message

    long, short = history_messages(10_000), history_messages(10)
    for i in range(0, len(long), 2_000):
        await store.append("facts:long", long[i : i + 2_000])
    await store.append("facts:short", short)
    await store.merge_metadata("facts:long", {"title": "a long one", "tags": ["x", "y"]})
    await store.merge_metadata("facts:short", {"title": "a short one", "tags": ["x", "y"]})
    one = [Message("user", "one more message, about as long as a short chat message is.")]
    n = 0

    async def merge() -> None:
        nonlocal n
        n += 1
        await store.merge_metadata("facts:long", {"title": f"renamed {n}"})

    async def append() -> None:
        await store.append("facts:long", one)

    got = await alternate({"merge": merge, "append": append}, repeats)
    got.update(
        await alternate(
            {
                "count_10": lambda: store.count("facts:short"),
                "count_10k": lambda: store.count("facts:long"),
                "meta_10": lambda: store.get_metadata("facts:short"),
                "meta_10k": lambda: store.get_metadata("facts:long"),
            },
            repeats,
        )
    )
    return got


async def fill(store: Any, start: int, stop: int, concurrency: int = 32) -> None:
    from promptstate import Message, State

    queue = iter(range(start, stop))
    messages = [Message("user", "hello"), Message("assistant", "hi, how can I help?")]

    async def worker() -> None:
        for i in queue:
            sid = key(i)
            await store.set(
                sid, State(conversation_id=sid, user_id=f"u{i % USERS}", messages=messages)
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def listing(store: Any, size: int, repeats: int, rng: random.Random) -> dict[str, float]:
    """Table 2 on one store at one size: medians in seconds."""

    async def newest() -> None:
        page = await store.list_sessions(limit=PAGE)
        if len(page.items) != PAGE:
            raise AssertionError(f"a page of {len(page.items)} sessions, not {PAGE}")

    async def of_user() -> None:
        user = f"u{rng.randrange(USERS)}"
        page = await store.list_sessions(user_id=user, limit=PAGE)
        if len(page.items) != min(PAGE, size // USERS) or any(
            i.user_id != user for i in page.items
        ):
            raise AssertionError(f"a page of {user}'s sessions is wrong")

    async def by_prefix() -> None:
        prefix = f"t{rng.randrange(size // 10):06d}:"
        found = [s.conversation_id async for s in store.list_by_prefix(prefix)]
        if len(found) != 10:
            raise AssertionError(f"list_by_prefix({prefix!r}) returned {len(found)}, not 10")

    return await alternate({"newest": newest, "user": of_user, "prefix": by_prefix}, repeats)


async def run(backends: list[str], sizes: tuple[int, int], repeats: int) -> str:
    env = Env(tmpdir=tempfile.mkdtemp(prefix="psbench-index-"))
    env.redis_url, env.postgres_dsn = redis_url(), postgres_dsn()
    if reason := await _servers.redis_reason(env.redis_url):
        env.redis_url, env.redis_missing = None, reason
    if reason := await _servers.postgres_reason(env.postgres_dsn):
        env.postgres_dsn, env.postgres_missing = None, reason
    rows_facts: list[str] = []
    rows_list: list[str] = []
    notes: list[str] = []
    rng = random.Random(15)
    try:
        for backend in backends:
            try:
                store, name = await open_store(env, backend)
            except Skip as exc:
                notes.append(f"{backend}: skipped: {exc}")
                continue
            try:
                print(f"{name}: facts ...", file=sys.stderr, flush=True)
                f = await facts(store, repeats)
                rows_facts.append(
                    f"| {name} | {f['append'] * 1e3:.3f} | {f['merge'] * 1e3:.3f} "
                    f"| **{f['merge'] / f['append']:.2f}x** "
                    f"| {f['count_10'] * 1e3:.3f} | {f['count_10k'] * 1e3:.3f} "
                    f"| **{f['count_10k'] / f['count_10']:.2f}x** "
                    f"| {f['meta_10'] * 1e3:.3f} | {f['meta_10k'] * 1e3:.3f} "
                    f"| **{f['meta_10k'] / f['meta_10']:.2f}x** |"
                )
                await store.delete_by_prefix("facts:")
                measured: dict[int, dict[str, float]] = {}
                filled = 0
                for size in sizes:
                    print(f"{name}: filling to {size:,} sessions ...", file=sys.stderr, flush=True)
                    started = time.perf_counter()
                    await fill(store, filled, size)
                    filled = size
                    print(
                        f"{name}: filled in {time.perf_counter() - started:.0f} s; listing ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    schema = getattr(store, "_bench_schema", None)
                    if schema is not None:  # statistics, as autovacuum would have them
                        await _servers.analyze_schema(env.need_postgres(), schema)
                    measured[size] = await listing(store, size, repeats, rng)
                small, big = measured[sizes[0]], measured[sizes[1]]
                cells = []
                for what in ("newest", "user", "prefix"):
                    cells.append(
                        f"{small[what] * 1e3:.3f} | {big[what] * 1e3:.3f} "
                        f"| **{big[what] / small[what]:.2f}x**"
                    )
                rows_list.append(f"| {name} | " + " | ".join(cells) + " |")
            except Exception as exc:
                notes.append(f"{name}: failed: {type(exc).__name__}: {exc}")
            finally:
                await store.aclose()
    finally:
        await _servers.cleanup(env.redis_url, env.postgres_dsn, env.token)
    small, big = (f"{s:,}" for s in sizes)
    out = [
        f"Machine: {machine()}; medians of {repeats} alternating calls each.",
        "",
        "Facts on a 10,000-message session (ms; targets: merge/append <= 1.5x, 10k/10 flat):",
        "",
        "| store | append 1 msg | merge_metadata | merge / append | count @10 | count @10k "
        "| 10k / 10 | get_metadata @10 | get_metadata @10k | 10k / 10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows_facts,
        "",
        f"Listing among {small} and {big} sessions (ms; target: {big} / {small} <= 2x):",
        "",
        f"| store | newest {PAGE} @{small} | @{big} | ratio | one user's {PAGE} @{small} "
        f"| @{big} | ratio | list_by_prefix (10) @{small} | @{big} | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows_list,
    ]
    if notes:
        out += ["", *(f"- {note}" for note in notes)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_index")
    parser.add_argument("--quick", action="store_true", help="10,000 sessions, fewer repeats")
    parser.add_argument("--tiny", action="store_true", help="seconds: a smoke test")
    parser.add_argument(
        "--stores", default=",".join(BACKENDS), help=f"comma-separated: {', '.join(BACKENDS)}"
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.stores.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown store(s) {', '.join(unknown)}")
    if args.tiny:
        sizes, repeats = (200, 2_000), 5
    elif args.quick:
        sizes, repeats = (1_000, 10_000), 60
    else:
        sizes, repeats = (1_000, 100_000), 200
    print(asyncio.run(run(backends, sizes, repeats)))


if __name__ == "__main__":
    main()

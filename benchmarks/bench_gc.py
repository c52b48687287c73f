"""What Python's cycle collector costs a pipeline turn against the bare store turn, with the
interpreter's default collector and after ``gc.freeze()``.

Run: ``python -m benchmarks.bench_gc --backend redis`` (``--heavy`` also imports the peer
frameworks, as the full benchmark's process does; ``--quick`` for a short run).

``--sessions`` tasks (64) each run turns on a session of their own holding ``--history``
messages (1,000): the bare store turn (``load(last=50)`` + ``append`` of 2) and
``Pipeline.execute`` with a ``MockProvider``, in alternating slices. For each, the table gives
process CPU per turn, the collector's time per turn (``gc.callbacks``), collections per
1,000 turns by generation, and the p99 latency; the ratios are the pipeline's against the
store's in the same mode. A turn in flight holds objects (its window, its coroutines); the
more a turn holds across its awaits, the more often the collector runs, and a full
collection walks every object of the process, which takes long in a process with a big heap
(``--heavy``). ``gc.freeze()`` after start-up moves what exists then out of the collector's
sight. Nothing here is asserted: the numbers are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks import _servers
from benchmarks._timing import machine
from benchmarks.bench_turns import pipeline_budget
from benchmarks.workload import (
    WINDOW,
    assistant_text,
    history_messages,
    postgres_dsn,
    redis_url,
    turn_messages,
    user_text,
)
from promptstate import MockProvider, Pipeline, open_store

Turn = Callable[[str, int], Awaitable[None]]


def _url(backend: str, folder: str, tag: str) -> tuple[str, dict[str, Any]]:
    if backend == "redis":
        return redis_url(), {"prefix": f"bench-gc-{tag}:"}
    if backend == "postgres":  # in a schema of its own, dropped at the end
        return postgres_dsn(), {"table_name": f"bench_gc_{tag}.sessions"}
    if backend == "sqlite":
        return f"sqlite:///{Path(folder) / 'gc.db'}", {}
    return "memory://", {}


class _Collector:
    """The collector's passes (by generation) and time while a slice runs."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.passes = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.passes[info["generation"]] += 1


async def _slice(ids: list[str], turn: Turn, seconds: float, got: dict[str, Any]) -> None:
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    collector = _Collector()

    async def worker(session: str) -> None:
        i = 0
        while time.monotonic() < stop:
            start = time.perf_counter()
            await turn(session, i)
            latencies.append(time.perf_counter() - start)
            i += 1

    gc.callbacks.append(collector)
    cpu = time.process_time()
    try:
        await asyncio.gather(*(worker(s) for s in ids))
    finally:
        gc.callbacks.remove(collector)
    n = len(latencies)
    got["cpu"].append((time.process_time() - cpu) / n)
    got["gc"] += collector.seconds
    got["passes"] = [a + b for a, b in zip(got["passes"], collector.passes, strict=True)]
    got["latencies"] += latencies


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench_gc_") as folder:
        url, options = _url(args.backend, folder, tag)
        if args.backend == "postgres":
            await _servers.create_schema(url, f"bench_gc_{tag}")
        try:
            return await _measure(args, open_store(url, **options))
        finally:
            if args.backend == "postgres":
                await _servers.drop_schemas(url, f"bench_gc_{tag}")


async def _measure(args: argparse.Namespace, store: Any) -> list[dict[str, Any]]:
    async with store:
        ids = [f"s{i}" for i in range(args.sessions)]
        history = history_messages(args.history)
        for session in ids:
            await store.append(session, history)
        pipe = Pipeline(
            MockProvider(lambda seen: assistant_text(len(seen))),
            store=store,
            max_tokens=pipeline_budget(),
        )

        async def bare(session: str, i: int) -> None:
            window = await store.load(session, last=WINDOW)  # kept until the turn ends
            await store.append(session, turn_messages(i))
            del window

        async def piped(session: str, i: int) -> None:
            await pipe.execute(session, "user", user_text(i))

        rows = []
        try:
            async with pipe:
                for mode in ("default", "gc.freeze()"):
                    if mode == "gc.freeze()":
                        gc.collect()
                        gc.freeze()
                    got: dict[str, dict[str, Any]] = {
                        name: {"cpu": [], "gc": 0.0, "passes": [0, 0, 0], "latencies": []}
                        for name in ("store", "pipeline")
                    }
                    for rnd in range(args.rounds):
                        order = [("store", bare), ("pipeline", piped)]
                        for name, turn in order if rnd % 2 == 0 else order[::-1]:
                            await _slice(ids, turn, args.seconds, got[name])
                    for name in ("store", "pipeline"):
                        rows.append({"mode": mode, "turn": name, **_summary(got[name])})
        finally:
            gc.unfreeze()
            await store.delete_by_prefix("")
    return rows


def _summary(got: dict[str, Any]) -> dict[str, float]:
    latencies = sorted(got["latencies"])
    n = len(latencies)
    return {
        "cpu_us": statistics.median(got["cpu"]) * 1e6,
        "gc_us": got["gc"] / n * 1e6,
        "gen0": got["passes"][0] / n * 1000,
        "gen1": got["passes"][1] / n * 1000,
        "gen2": got["passes"][2] / n * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("memory", "redis", "postgres", "sqlite"))
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=0.5, help="seconds per slice")
    parser.add_argument("--rounds", type=int, default=8, help="slices of each turn per mode")
    parser.add_argument("--heavy", action="store_true", help="import the peer frameworks too")
    parser.add_argument("--quick", action="store_true", help="4 rounds of 0.3 s")
    args = parser.parse_args(argv)
    if args.backend is None:
        args.backend = "memory"
    if args.quick:
        args.rounds, args.seconds = 4, 0.3
    if args.heavy:
        for name in ("agents", "sqlalchemy", "langchain_core.messages", "langgraph"):
            try:
                __import__(name)
            except ImportError:
                print(f"(--heavy: {name} is not installed)")
    rows = asyncio.run(run(args))
    print(
        f"# the cycle collector and the pipeline: {args.backend}, {args.sessions} sessions, "
        f"history {args.history:,}, {len(gc.get_objects()):,} tracked objects at the end "
        f"({machine()})\n"
    )
    print(
        "| collector | turn | CPU µs per turn | collector µs per turn | passes per 1,000 turns "
        "(gen 0/1/2) | p99 ms | CPU ÷ store | p99 ÷ store |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        store = next(r for r in rows if r["mode"] == row["mode"] and r["turn"] == "store")
        print(
            f"| {row['mode']} | {row['turn']} | {row['cpu_us']:,.0f} | {row['gc_us']:,.1f} | "
            f"{row['gen0']:.0f} / {row['gen1']:.1f} / {row['gen2']:.2f} | "
            f"{row['p99_ms']:,.2f} | {row['cpu_us'] / store['cpu_us']:.2f}x | "
            f"{row['p99_ms'] / store['p99_ms']:.2f}x |"
        )


if __name__ == "__main__":
    main()

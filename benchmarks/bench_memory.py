"""Bytes per stored message, per store, next to the raw layout and the peers.

Run: ``python -m benchmarks.bench_memory`` (``--quick``), or everything: ``python -m benchmarks``.

Each contender stores ``sessions`` sessions of ``messages`` messages (the turn benchmark's
messages, about 230 characters of text each) under a prefix or schema of its own; then:

- Redis: ``MEMORY USAGE <key> SAMPLES 0`` summed over every key under the contender's prefix
  (a session's keys, plus any index the store keeps), divided by the number of messages.
- PostgreSQL: ``pg_total_relation_size`` (table, indexes, TOAST) summed over the tables of the
  contender's schema, divided by the number of messages.
- SQLite: the database file and its WAL.
- MemoryStore: the bytes ``tracemalloc`` sees allocated while the sessions are written; the
  raw counterpart is a plain Python list of the same ``Message`` objects.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from benchmarks.bench_peers import PEERS
from benchmarks.bench_turns import RawPostgres, RawRedis, StoreTurn
from benchmarks.workload import Contender, Env, Skip, history_messages


async def _python_list_bytes(sessions: int, messages: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = {f"s{j}": history_messages(messages) for j in range(sessions)}
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


async def _traced(contender: Contender, ids: list[str], messages: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for sid in ids:
            await contender.populate(sid, messages)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def contenders(env: Env, backends: set[str]) -> list[Contender]:
    found: list[Contender] = []
    for backend in ("memory", "redis", "postgres", "sqlite"):
        if backend not in backends:
            continue
        if backend == "redis":
            found.append(RawRedis(env))
        if backend == "postgres":
            found.append(RawPostgres(env))
        found.append(StoreTurn(env, backend))
    return found + [cls(env) for cls in PEERS if cls.backend in backends]  # type: ignore[call-arg]


def steps(backends: set[str]) -> int:
    """Progress steps of :func:`run`."""
    return len(contenders(Env(tmpdir=""), backends)) + ("memory" in backends)


async def run(
    env: Env, config: Any, progress: Any, backends: set[str], scenarios: set[str]
) -> tuple[list[Any], list[str]]:
    from benchmarks.runner import Record

    sessions, messages = config.memory_sessions, config.memory_messages
    total = sessions * messages
    ids = [f"mem-s{j}" for j in range(sessions)]
    candidates = contenders(env, backends)
    records: list[Any] = []
    notes: list[str] = []
    if "memory" in backends:
        progress.step("memory: a Python list of Message objects")
        used = await _python_list_bytes(sessions, messages)
        records.append(
            Record(
                scenario="memory",
                store="Python list of Message objects",
                history=messages,
                backend="memory",
                kind="raw",
                value=used / total,
                unit="bytes/message",
                extra={"sessions": sessions},
            )
        )
    for contender in candidates:
        progress.step(f"memory: {contender.name}")
        try:
            await contender.open()
        except Skip as exc:
            notes.append(f"memory, {contender.name}: skipped: {exc}")
            await contender.aclose()
            continue
        except Exception as exc:
            notes.append(f"memory, {contender.name}: could not be opened: {exc}")
            await contender.aclose()
            continue
        try:
            if contender.backend == "memory":
                used: int | None = await _traced(contender, ids, messages)
            else:
                for sid in ids:
                    await contender.populate(sid, messages)
                await contender.settle()
                used = await contender.footprint()
        except Exception as exc:
            notes.append(f"memory, {contender.name}: failed: {type(exc).__name__}: {exc}")
            used = None
        finally:
            await contender.aclose()
        if used is None:
            continue
        records.append(
            Record(
                scenario="memory",
                store=contender.name,
                history=messages,
                backend=contender.backend,
                kind=contender.kind,
                value=used / total,
                unit="bytes/message",
                extra={"sessions": sessions},
            )
        )
    return records, notes


if __name__ == "__main__":
    from benchmarks.runner import main

    main(default_only="memory")

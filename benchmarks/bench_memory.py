"""Bytes per stored message, per store, next to the raw layout and the peers.

Run: ``python -m benchmarks.bench_memory`` (``--quick``), or everything: ``python -m benchmarks``.

Each contender stores ``sessions`` sessions of ``messages`` messages (the turn benchmark's
messages, about 230 characters of text each) under a prefix or schema of its own; then:

- Redis: ``MEMORY USAGE <key> SAMPLES 0`` summed over every key under the contender's prefix
  (a session's keys, plus any index the store keeps), divided by the number of messages.
- PostgreSQL: ``pg_total_relation_size`` (table, indexes, TOAST) summed over the tables of the
  contender's schema, divided by the number of messages.
- SQLite: the pages in use (``page_count - freelist_count``, the WAL's commits included).
- MemoryStore: the bytes ``tracemalloc`` sees allocated while the sessions are written; the
  raw counterpart is a plain Python list of the same ``Message`` objects.

Then every session takes 5 turns and the same is measured again: what the server holds more,
per message those turns wrote. For most stores that is what a message costs; for a
checkpointer that writes the whole history again on every turn, it grows with the history.
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


#: turns run on every session after it is filled, to see what a turn adds
TURNS = 5


async def _turns(contender: Contender, ids: list[str]) -> None:
    for i in range(TURNS):
        for sid in ids:
            await contender.turn(sid, i)


async def _traced(contender: Contender, ids: list[str], messages: int) -> tuple[int, int]:
    """(bytes allocated filling the sessions, bytes more after TURNS turns on each)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for sid in ids:
            await contender.populate(sid, messages)
        gc.collect()
        filled = tracemalloc.get_traced_memory()[0]
        await _turns(contender, ids)
        gc.collect()
        return filled - before, tracemalloc.get_traced_memory()[0] - filled
    finally:
        tracemalloc.stop()


async def _server(contender: Contender, ids: list[str], messages: int) -> tuple[int, int] | None:
    for sid in ids:
        await contender.populate(sid, messages)
    await contender.settle()
    filled = await contender.footprint()
    if filled is None:
        return None
    await _turns(contender, ids)
    await contender.settle()
    after = await contender.footprint()
    return filled, (after or filled) - filled


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
                used: tuple[int, int] | None = await _traced(contender, ids, messages)
            else:
                used = await _server(contender, ids, messages)
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
                value=used[0] / total,
                unit="bytes/message",
                extra={
                    "sessions": sessions,
                    # what each message written by a turn added (a checkpointer that stores
                    # the whole history again on every turn shows here)
                    "turn_bytes_per_message": used[1] / (sessions * TURNS * 2),
                },
            )
        )
    return records, notes


if __name__ == "__main__":
    from benchmarks.runner import main

    main(default_only="memory")

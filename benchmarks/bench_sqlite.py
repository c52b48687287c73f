"""SQLiteStore against raw sqlite3 doing the same statements, in one run.

Run: ``python -m benchmarks.bench_sqlite`` (``--quick`` for a short run)

A *turn* is what a chat server does per request: ``load(last=50)`` then ``append`` of two
messages (user + assistant), on a session that already holds ``history`` messages. Every
contender starts from a byte-identical copy of the same database file (16 sessions of
``history`` messages each, written by SQLiteStore) and runs the same number of turns with 1 and
16 concurrent tasks (task *i* uses session *i*). Contenders run interleaved, three times
each on fresh fsynced copies, and each one's best run is reported (shared machines are noisy).

Contenders:

- **promptstate** ``SQLiteStore``: decodes the 50 messages into ``Message`` objects, counts
  tokens of the new ones and encodes them, keeps the session row's counters.
- **raw sqlite3, thread**: the same SQL statements (the same ``load`` SELECT; ``BEGIN
  IMMEDIATE`` + head SELECT + UPDATE + two INSERTs + ``COMMIT``) with pre-encoded message bytes
  and no decoding, each call in ``anyio.to_thread.run_sync`` on a per-thread connection, writes
  serialized by an ``anyio.Lock``: what a careful hand-written async wrapper does.
- **raw sqlite3, blocking**: the same statements called directly on the event loop (no thread
  hop, so it blocks every other task while SQLite works). The floor for the SQL itself; it is
  not a way to write an async server.

The ratio column is the contender's time per turn divided by promptstate's (below 1: the
contender is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread

from benchmarks._timing import machine
from promptstate import Message, SQLiteStore
from promptstate.serialization import pack
from promptstate.stores.sqlite import _SQL_LOAD

HISTORIES = (10, 1_000, 10_000)
CONCURRENCY = (1, 16)
SESSIONS = 16
LAST = 50
TEXT = "The quick brown fox jumps over the lazy dog while the model thinks. " * 3

Turn = Callable[[str, int], Awaitable[None]]


def new_messages(i: int) -> list[Message]:
    return [Message("user", f"question {i}: {TEXT}"), Message("assistant", f"answer {i}: {TEXT}")]


async def prepare(path: Path, history: int) -> None:
    async with SQLiteStore(path) as store:
        for s in range(SESSIONS):
            await store.save(
                f"session:{s}", [Message("user", f"{j} {TEXT}") for j in range(history)]
            )


# -- contenders -----------------------------------------------------------------------------


class PromptState:
    name = "promptstate SQLiteStore"

    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path)

    async def turn(self, key: str, i: int) -> None:
        await self.store.load(key, last=LAST)
        await self.store.append(key, new_messages(i))

    async def aclose(self) -> None:
        await self.store.aclose()


_HEAD = "SELECT version, expires_at, message_count FROM promptstate_sessions WHERE key = ?"
_UPDATE = (
    "UPDATE promptstate_sessions SET version = version + 1, token_count = token_count + ?, "
    "message_count = ?, updated_at = ?, expires_at = ? WHERE key = ?"
)
_INSERT = "INSERT INTO promptstate_messages (session_key, seq, data) VALUES (?, ?, ?)"


def _raw_load(conn: sqlite3.Connection, key: str) -> list[bytes]:
    return [row[0] for row in conn.execute(_SQL_LOAD, (key, LAST, key, time.time_ns() // 1000))]


def _raw_append(conn: sqlite3.Connection, key: str, blobs: list[bytes]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        _version, _expires, count = conn.execute(_HEAD, (key,)).fetchone()
        total = count + len(blobs)
        conn.execute(_UPDATE, (100, total, time.time_ns() // 1000, None, key))
        conn.executemany(_INSERT, [(key, count + j, b) for j, b in enumerate(blobs)])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(total)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class RawThread:
    name = "raw sqlite3, thread"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.local = threading.local()
        self.conns: list[sqlite3.Connection] = []
        self.write_lock = anyio.Lock()

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = _connect(self.path)
            self.conns.append(conn)
        return conn

    async def turn(self, key: str, i: int) -> None:
        blobs = [pack(m) for m in new_messages(i)]
        await anyio.to_thread.run_sync(lambda: _raw_load(self.conn(), key))
        async with self.write_lock:
            await anyio.to_thread.run_sync(lambda: _raw_append(self.conn(), key, blobs))

    async def aclose(self) -> None:
        for conn in self.conns:
            conn.close()


class RawBlocking:
    name = "raw sqlite3, blocking"

    def __init__(self, path: Path) -> None:
        self.db = _connect(path)

    async def turn(self, key: str, i: int) -> None:
        blobs = [pack(m) for m in new_messages(i)]
        _raw_load(self.db, key)
        _raw_append(self.db, key, blobs)
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.db.close()


# -- running --------------------------------------------------------------------------------


async def run(
    contender: PromptState | RawThread | RawBlocking, concurrency: int, turns: int
) -> tuple[float, float, float]:
    """(median µs per turn, p99 µs per turn, turns per second)."""
    latencies: list[float] = []

    async def worker(w: int) -> None:
        key = f"session:{w}"
        for i in range(turns // concurrency):
            start = time.perf_counter()
            await contender.turn(key, i)
            latencies.append(time.perf_counter() - start)

    for w in range(concurrency):  # warm-up: connections, statement caches, schema check
        await contender.turn(f"session:{w}", -1)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(concurrency):
            tg.start_soon(worker, w)
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(latencies) * 1e6, p99 * 1e6, len(latencies) / elapsed


async def main(quick: bool) -> None:
    turns, repeats = (160, 1) if quick else (800, 3)
    print(
        f"Machine: {machine()}; SQLite {sqlite3.sqlite_version}; {turns} turns per run, "
        f"best of {repeats} runs"
    )
    print()
    print(
        "| history | tasks | implementation | median µs/turn | p99 µs/turn | turns/s "
        "| x promptstate's time |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench_sqlite_") as tmp:
        for history in HISTORIES:
            seed = Path(tmp) / f"seed-{history}.db"
            await prepare(seed, history)
            for concurrency in CONCURRENCY:
                kinds = (PromptState, RawThread, RawBlocking)
                best: dict[str, tuple[float, float, float]] = {}
                for attempt in range(repeats):  # interleaved, best of `repeats` per contender
                    for kind in kinds:
                        path = Path(tmp) / f"{kind.__name__}-{history}-{concurrency}-{attempt}.db"
                        shutil.copyfile(seed, path)
                        with path.open("rb+") as copy:  # flush the copy now, not in a checkpoint
                            os.fsync(copy.fileno())
                        contender = kind(path)
                        try:
                            result = await run(contender, concurrency, turns)
                        finally:
                            await contender.aclose()
                        path.unlink()
                        if kind.name not in best or result[2] > best[kind.name][2]:
                            best[kind.name] = result
                rows = [(kind.name, *best[kind.name]) for kind in kinds]
                base = 1e6 / rows[0][3]  # promptstate's wall time per turn
                for name, median, p99, rate in rows:
                    ratio = (1e6 / rate) / base
                    print(
                        f"| {history:,} | {concurrency} | {name} | {median:,.0f} | {p99:,.0f} | "
                        f"{rate:,.0f} | {ratio:.2f}x |"
                    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns, for a smoke test")
    anyio.run(main, parser.parse_args().quick)

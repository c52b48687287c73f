"""The benchmark runner: ``python -m benchmarks`` runs every scenario and prints one table.

Scenarios (``--only`` takes a comma-separated list of these names):

``turns``
    A turn (``load(last=50)`` + ``append`` of two) through every promptstate store, at each
    history length and number of concurrent sessions.
``pipeline``
    The same turn through ``Pipeline.execute`` with ``MockProvider``.
``raw``
    The raw floor: redis-py + hiredis and asyncpg doing the minimal commands.
``peers``
    openai-agents ``RedisSession`` / ``SQLAlchemySession``, langchain-postgres, langgraph; and
    beside them promptstate's adapters for those frameworks (``PromptStateSession``,
    ``PromptStateChatMessageHistory``), driven the same way.
``serialization``
    ``encode_state`` / ``decode_state`` against stdlib json and pydantic.
``memory``
    Bytes per stored message.
``listing``
    ``list_by_prefix`` returning 10 sessions among few and among many.

Other ``benchmarks/bench_*.py`` modules (the ones written with each store and the pipeline)
are driven as they are (``python -m benchmarks.bench_x [--quick]``) when named with ``--only``
by module name (``--only bench_sqlite``) or all with ``--store-benchmarks``, and their output
is kept in the report.

Every record has ``scenario, store, history, concurrency, turns_per_s, p50_ms, p99_ms,
ratio_vs_raw, ratio_vs_peer``; both ratios are promptstate's time per turn divided by the
other's (above 1: promptstate is slower), where the time per turn is ``1 / turns_per_s`` of the
cell (wall time over all sessions of the cell).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from benchmarks import _servers
from benchmarks._timing import machine
from benchmarks.workload import Contender, Env, Skip, postgres_dsn, redis_url, session_ids

logger = logging.getLogger(__name__)

SCENARIOS = ("turns", "pipeline", "raw", "peers", "serialization", "memory", "listing")
TURN_SCENARIOS = ("turns", "pipeline", "raw", "peers")
OWN_MODULES = {
    "__init__",
    "__main__",
    "_servers",
    "_timing",
    "runner",
    "workload",
    "plots",
    "bench_turns",
    "bench_peers",
    "bench_memory",
    "bench_listing",
    "bench_serialization",
}
ROOT = Path(__file__).resolve().parent.parent


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """How much to measure. :meth:`full`, :meth:`quick` and :meth:`tiny` are the presets."""

    mode: str
    histories: tuple[int, ...]
    concurrencies: tuple[int, ...]
    #: sessions populated per history length (turns cycle through them)
    pool: dict[int, int]
    #: the most concurrent sessions measured at a history length (default: all)
    max_concurrency: dict[int, int] = field(default_factory=dict)
    cell_seconds: float = 2.0
    cell_max_turns: int = 4000
    #: each cell is measured in this many slices, the contenders' order alternating (half as
    #: many at 64 sessions and more, where a slice needs a turn from every task)
    rounds: int = 4
    #: untimed turns before each cell
    warmup_seconds: float = 0.1
    #: filling sessions stops after this long, once the most concurrent cell has its sessions
    populate_seconds: float = 5.0
    listing_sizes: tuple[int, ...] = (1_000, 100_000)
    listing_repeats: int = 40
    listing_settle_seconds: float = 2.0
    memory_sessions: int = 10
    memory_messages: int = 1_000
    serialization_sizes: tuple[int, ...] = (100, 1_000)
    serialization_budget: float = 0.3
    backends: tuple[str, ...] = ("memory", "redis", "postgres", "sqlite")
    scenarios: tuple[str, ...] = SCENARIOS
    external: tuple[str, ...] = ()
    external_timeout: float = 600.0

    @classmethod
    def full(cls) -> Config:
        return cls(
            mode="full",
            histories=(10, 1_000, 10_000),
            concurrencies=(1, 16, 64, 256),
            pool={10: 4096, 1_000: 256, 10_000: 32},
            max_concurrency={10_000: 16},
        )

    @classmethod
    def quick(cls) -> Config:
        return cls(
            mode="quick",
            histories=(10, 1_000),
            concurrencies=(1, 16, 64),
            pool={10: 256, 1_000: 64},
            cell_seconds=0.3,
            cell_max_turns=600,
            rounds=2,
            warmup_seconds=0.03,
            populate_seconds=1.0,
            listing_sizes=(1_000, 10_000),
            listing_repeats=15,
            listing_settle_seconds=0.3,
            memory_sessions=4,
            memory_messages=500,
            serialization_budget=0.05,
            external_timeout=120.0,
        )

    @classmethod
    def tiny(cls) -> Config:
        """A few seconds: what the smoke test runs (on MemoryStore)."""
        return cls(
            mode="tiny",
            histories=(10, 100),
            concurrencies=(1, 4),
            pool={10: 16, 100: 4},
            cell_seconds=0.05,
            cell_max_turns=40,
            rounds=2,
            warmup_seconds=0.0,
            listing_sizes=(100, 1_000),
            listing_repeats=3,
            listing_settle_seconds=0.0,
            memory_sessions=2,
            memory_messages=50,
            serialization_sizes=(100,),
            serialization_budget=0.01,
            backends=("memory",),
        )

    def concurrencies_at(self, history: int) -> tuple[int, ...]:
        cap = self.max_concurrency.get(history)
        return tuple(c for c in self.concurrencies if cap is None or c <= cap)


# -- records ----------------------------------------------------------------------------------


@dataclass
class Record:
    """One measurement. Fields that do not apply to a scenario are ``None``."""

    scenario: str
    store: str
    history: int | None = None
    concurrency: int | None = None
    turns_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio_vs_raw: float | None = None
    ratio_vs_peer: float | None = None
    backend: str | None = None
    kind: str | None = None
    reads: str | None = None
    turns: int | None = None
    history_mean: float | None = None
    value: float | None = None
    unit: str | None = None
    note: str = ""
    #: process CPU time over the cell's timed turns / those turns (client overhead, apart
    #: from the time spent waiting for a server); every contender runs in this one process
    cpu_us_per_turn: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def time_per_turn(self) -> float | None:
        return 1.0 / self.turns_per_s if self.turns_per_s else None


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, *, enabled: bool = True, stream: Any = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.label = ""

    def add(self, steps: int) -> None:
        self.total += steps

    def show(self, label: str) -> None:
        self.label = label
        self._draw()

    def step(self, label: str = "") -> None:
        self.done = min(self.total, self.done + 1)
        if label:
            self.label = label
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 28
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {self.label}"
        if self.tty:
            cols = 120
            self.stream.write("\r" + line[:cols].ljust(cols))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def note(message: str) -> None:
    """A note on stderr that does not break the progress bar."""
    sys.stderr.write("\n" + message + "\n")
    sys.stderr.flush()


# -- the turn scenarios -----------------------------------------------------------------------


async def populate(
    contender: Contender,
    ids: Sequence[str],
    history: int,
    *,
    minimum: int,
    seconds: float,
    tasks: int = 8,
) -> int:
    """Fill sessions ``ids[0], ids[1], ...`` with ``history`` messages from ``tasks`` tasks.

    Stops after ``seconds`` once ``minimum`` sessions are filled (a slow contender runs fewer
    turns, so it needs fewer sessions to keep their growth small). Returns how many were
    filled: always a prefix of ``ids``.
    """
    deadline = time.perf_counter() + seconds
    taken = itertools.count()
    filled = [0]

    async def worker() -> None:
        while True:
            j = next(taken)
            if j >= len(ids) or (j >= minimum and time.perf_counter() > deadline):
                return
            await contender.populate(ids[j], history)
            filled[0] = max(filled[0], j + 1)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return filled[0]


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def measure_cell(
    contender: Contender,
    ids: Sequence[str],
    cursor: Cursor,
    concurrency: int,
    seconds: float,
    max_turns: int,
    *,
    warmup: float = 0.0,
) -> tuple[list[float], float, float]:
    """Run turns from ``concurrency`` tasks for ``seconds`` (at most ``max_turns``).

    Task ``k`` works only on its own sessions, ``ids[k::concurrency]`` in turn (so there must
    be at least as many sessions as tasks): no two tasks ever work on one session at a time,
    which would make a store that serializes a session's turns (the pipeline's turn lock)
    wait where one that does not just interleaves them. Before the timed part, when ``warmup``
    is given, the same tasks run untimed turns for that long (at least one each: that opens
    the connections the cell will use). Returns (per-turn seconds, wall time, process CPU
    time), the times over the timed part only.
    """
    if len(ids) < concurrency:
        raise ValueError(f"{concurrency} tasks need at least as many sessions, got {len(ids)}")
    perf = time.perf_counter
    latencies: list[float] = []
    own = [ids[k::concurrency] for k in range(concurrency)]
    turns_of = [0] * concurrency

    warm = [0]

    async def worker(k: int, until: float, timed: bool) -> None:
        mine = own[k]
        while True:
            t = next(cursor)
            session = mine[turns_of[k] % len(mine)]
            turns_of[k] += 1
            start = perf()
            await contender.turn(session, t)
            if timed:
                latencies.append(perf() - start)
                if len(latencies) >= max_turns:
                    return
            else:
                warm[0] += 1
                if warm[0] >= max_turns // 5:
                    return
            if perf() >= until:
                return

    if warmup > 0:
        warm_until = perf() + warmup
        await asyncio.gather(*(worker(k, warm_until, False) for k in range(concurrency)))
    deadline = perf() + seconds
    cpu = time.process_time()
    start = perf()
    await asyncio.gather(*(worker(k, deadline, True) for k in range(concurrency)))
    wall = perf() - start
    return latencies, wall, time.process_time() - cpu


async def run_turns(
    config: Config, contenders: list[Contender], progress: Progress
) -> tuple[list[Record], list[str]]:
    """Every contender at every (history, concurrency) cell; returns records and notes."""
    records: list[Record] = []
    notes: list[str] = []
    live: list[Contender] = []
    steps = turn_steps(config)
    for contender in contenders:
        progress.show(f"opening {contender.name}")
        try:
            await contender.open()
        except Skip as exc:
            notes.append(f"{contender.name}: skipped: {exc}")
        except Exception as exc:
            notes.append(f"{contender.name}: could not be opened: {type(exc).__name__}: {exc}")
            logger.debug("open failed", exc_info=True)
        else:
            live.append(contender)
            continue
        await _close(contender)
        for _ in range(steps):
            progress.step()
    order = {"raw": 0, "promptstate": 1, "pipeline": 2, "peer": 3, "adapter": 4}
    live.sort(key=lambda c: (c.backend, order.get(c.kind, 9)))
    failed: set[int] = set()
    try:
        for history in config.histories:
            most = max(config.concurrencies_at(history))
            ids = session_ids(f"h{history}", max(config.pool.get(history, 16), most))
            cursors: dict[int, Cursor] = {}
            pools: dict[int, list[str]] = {}
            for contender in live:
                progress.step(f"populating {contender.name}: up to {len(ids)} x {history:,}")
                if id(contender) in failed:
                    continue
                try:
                    filled = await populate(
                        contender, ids, history, minimum=most, seconds=config.populate_seconds
                    )
                except Exception as exc:
                    _fail(contender, exc, "populating", notes, failed)
                    continue
                try:
                    await contender.settle()
                except Exception as exc:
                    notes.append(f"{contender.name}: settling after filling failed: {exc}")
                cursors[id(contender)] = Cursor()
                pools[id(contender)] = ids[:filled]
            for concurrency in config.concurrencies_at(history):
                got: dict[int, tuple[list[float], float, float, list[float]]] = {}
                before = {id(c): cursors[id(c)].value for c in live if id(c) in cursors}
                # Rounds alternate the contenders' order, so a burst of load from elsewhere on
                # the machine lands on all of them rather than on one.
                # (fewer at 64+ sessions: a round needs a turn from every task, which takes
                # long on the slow peers)
                rounds = config.rounds if concurrency < 64 else max(1, config.rounds // 2)
                for rnd in range(rounds):
                    last = rnd == rounds - 1
                    for contender in live if rnd % 2 == 0 else live[::-1]:
                        label = f"{contender.name}: history {history:,}, {concurrency} sessions"
                        if last:
                            progress.step(label)
                        else:
                            progress.show(label)
                        if id(contender) in failed:
                            continue
                        try:
                            latencies, wall, cpu = await measure_cell(
                                contender,
                                pools[id(contender)],
                                cursors[id(contender)],
                                concurrency,
                                config.cell_seconds / rounds,
                                max(1, config.cell_max_turns // rounds),
                                warmup=config.warmup_seconds if rnd == 0 else 0.0,
                            )
                        except Exception as exc:
                            where = f"history {history}, {concurrency} sessions"
                            _fail(contender, exc, where, notes, failed)
                            continue
                        so_far, walls, cpus, slices = got.get(id(contender), ([], 0.0, 0.0, []))
                        # each slice's time per turn, for the spread of a ratio across slices
                        slices = [*slices, wall / len(latencies) if latencies else 0.0]
                        got[id(contender)] = (so_far + latencies, walls + wall, cpus + cpu, slices)
                for contender in live:
                    if id(contender) in failed or id(contender) not in got:
                        continue
                    latencies, wall, cpu, slices = got[id(contender)]
                    after = cursors[id(contender)].value
                    ordered = sorted(latencies)
                    records.append(
                        Record(
                            scenario=_scenario_of(contender),
                            store=contender.name,
                            history=history,
                            concurrency=concurrency,
                            turns_per_s=len(latencies) / wall if wall > 0 else None,
                            p50_ms=statistics.median(ordered) * 1e3,
                            p99_ms=_percentile(ordered, 0.99) * 1e3,
                            backend=contender.backend,
                            kind=contender.kind,
                            reads=contender.reads,
                            turns=len(latencies),
                            history_mean=history
                            + (before[id(contender)] + after) / len(pools[id(contender)]),
                            note=contender.note,
                            cpu_us_per_turn=cpu / len(latencies) * 1e6 if latencies else None,
                            extra={"sessions_filled": len(pools[id(contender)]), "slices": slices},
                        )
                    )
            for contender in live:
                if id(contender) not in failed:
                    try:
                        await contender.reset()
                    except Exception as exc:
                        notes.append(f"{contender.name}: reset failed: {exc}")
    finally:
        for contender in live:
            await _close(contender)
    return records, notes


def turn_steps(config: Config) -> int:
    """Progress steps per contender: a population and the cells at each history."""
    return sum(len(config.concurrencies_at(h)) + 1 for h in config.histories)


class Cursor:
    """Numbers turns: ``next(cursor)`` is the next turn's number, ``value`` how many so far."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def __iter__(self) -> Cursor:
        return self

    def __next__(self) -> int:
        self.value += 1
        return self.value - 1


def _scenario_of(contender: Contender) -> str:
    return {
        "promptstate": "turns",
        "pipeline": "pipeline",
        "raw": "raw",
        "peer": "peers",
        "adapter": "peers",
    }[contender.kind]


def _fail(
    contender: Contender, exc: BaseException, where: str, notes: list[str], failed: set[int]
) -> None:
    failed.add(id(contender))
    notes.append(f"{contender.name}: failed while {where}: {type(exc).__name__}: {exc}")
    note(f"{contender.name} failed ({where}):\n" + "".join(traceback.format_exception(exc)[-6:]))


async def _close(contender: Contender) -> None:
    try:
        await contender.aclose()
    except Exception as exc:
        logger.debug("closing %s failed: %s", contender.name, exc)


def add_ratios(records: list[Record]) -> None:
    """Fill ``ratio_vs_raw`` and ``ratio_vs_peer`` from the records of the same cell.

    A promptstate row (store or pipeline) gets ``ratio_vs_raw`` against the raw floor on the
    same backend; a peer row gets ``ratio_vs_peer`` = promptstate's store time per turn on that
    backend divided by the peer's, and a promptstate store row the same against the fastest
    peer of the cell (named in ``extra["peer"]``). A framework adapter row (kind
    ``adapter``, in the peers scenario but never counted as a peer) gets ``ratio_vs_peer`` =
    its time per turn divided by that of the fastest of its framework's own stores in the
    cell (the peers whose name starts with the adapter name's first word; named in
    ``extra["peer"]``). The same for the memory scenario (bytes instead of time).
    """
    by_cell: dict[tuple[str | None, int | None, int | None], dict[str, Record]] = {}
    best_peer: dict[tuple[str | None, int | None, int | None], Record] = {}
    for r in records:
        if r.scenario in TURN_SCENARIOS and r.turns_per_s:
            cell = (r.backend, r.history, r.concurrency)
            if r.scenario == "peers" and r.kind == "adapter":
                continue
            if r.scenario == "peers":
                best = best_peer.get(cell)
                if best is None or r.turns_per_s > best.turns_per_s:  # type: ignore[operator]
                    best_peer[cell] = r
            else:
                by_cell.setdefault(cell, {})[r.scenario] = r
    for r in records:
        if r.kind == "adapter" and r.scenario == "peers" and r.turns_per_s:
            framework = r.store.split()[0]
            own = [
                p
                for p in records
                if p.scenario == "peers"
                and p.kind == "peer"
                and p.turns_per_s
                and (p.backend, p.history, p.concurrency) == (r.backend, r.history, r.concurrency)
                and p.store.startswith(framework)
            ]
            if own:
                fastest = max(own, key=lambda p: p.turns_per_s)  # type: ignore[arg-type,return-value]
                r.ratio_vs_peer = fastest.turns_per_s / r.turns_per_s  # type: ignore[operator]
                r.extra["peer"] = fastest.store
    for r in records:
        if r.kind == "adapter":
            continue
        if r.scenario in TURN_SCENARIOS and r.turns_per_s:
            cell = by_cell.get((r.backend, r.history, r.concurrency), {})
            raw, ours = cell.get("raw"), cell.get("turns")
            if r.scenario in ("turns", "pipeline") and raw is not None:
                r.ratio_vs_raw = raw.turns_per_s / r.turns_per_s  # type: ignore[operator]
            if r.scenario == "peers" and ours is not None:
                r.ratio_vs_peer = r.turns_per_s / ours.turns_per_s  # type: ignore[operator]
            peer = best_peer.get((r.backend, r.history, r.concurrency))
            if r.scenario == "turns" and peer is not None:
                r.ratio_vs_peer = peer.turns_per_s / r.turns_per_s  # type: ignore[operator]
                r.extra["peer"] = peer.store
            if r.scenario == "pipeline" and ours is not None:
                _versus_store(r, ours)
    mem: dict[str | None, dict[str, Record]] = {}
    for r in records:
        if r.scenario == "memory" and r.value:
            mem.setdefault(r.backend, {}).setdefault(r.kind or "", r)
    for r in records:
        if r.scenario == "memory" and r.value:
            group = mem.get(r.backend, {})
            raw, ours = group.get("raw"), group.get("promptstate")
            if r.kind == "promptstate" and raw is not None and raw.value:
                r.ratio_vs_raw = r.value / raw.value
            if r.kind == "peer" and ours is not None and ours.value:
                r.ratio_vs_peer = ours.value / r.value


def _versus_store(pipe: Record, store: Record) -> None:
    """A pipeline row against the bare store turn of its cell: time per turn (over the cell
    and per slice, whose spread shows how much the machine moved it), p99 and CPU per turn."""
    pipe.extra["ratio_vs_store"] = store.turns_per_s / pipe.turns_per_s  # type: ignore[operator]
    mine, theirs = pipe.extra.get("slices") or [], store.extra.get("slices") or []
    per_slice = [a / b for a, b in zip(mine, theirs, strict=False) if a and b]
    if per_slice:
        pipe.extra["ratio_vs_store_slices"] = [round(x, 4) for x in per_slice]
    if pipe.p99_ms and store.p99_ms:
        pipe.extra["p99_vs_store"] = pipe.p99_ms / store.p99_ms
    if pipe.cpu_us_per_turn and store.cpu_us_per_turn:
        pipe.extra["cpu_vs_store"] = pipe.cpu_us_per_turn / store.cpu_us_per_turn


# -- the other scenarios ----------------------------------------------------------------------


def run_serialization(config: Config) -> list[Record]:
    from benchmarks import bench_serialization

    rows = bench_serialization.run(
        sizes=config.serialization_sizes, budget=config.serialization_budget
    )
    records = []
    for row in rows:
        ours = row["who"].startswith("promptstate")
        records.append(
            Record(
                scenario="serialization",
                store=row["who"],
                history=row["messages"],
                kind="promptstate" if ours else "peer",
                value=row["us"],
                unit=f"µs per {row['op']}",
                ratio_vs_peer=None if ours else 1.0 / row["ratio"],
                extra={"op": row["op"]},
            )
        )
    return records


def external_modules() -> list[str]:
    """The other ``bench_*.py`` modules (store-specific ones written alongside the stores)."""
    here = Path(__file__).resolve().parent
    return sorted(p.stem for p in here.glob("bench_*.py") if p.stem not in OWN_MODULES)


def run_external(module: str, config: Config) -> tuple[str, str]:
    """Run ``python -m benchmarks.<module>`` as its author wrote it; (command, output)."""
    source = (Path(__file__).resolve().parent / f"{module}.py").read_text()
    cmd = [sys.executable, "-m", f"benchmarks.{module}"]
    if config.mode != "full" and "--quick" in source:
        cmd.append("--quick")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        done = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=config.external_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return shlex.join(cmd[1:]), f"(stopped after {config.external_timeout:.0f} s)"
    out = done.stdout.strip()
    if done.returncode != 0:
        out += f"\n(exit status {done.returncode})\n" + done.stderr.strip()[-2000:]
    return "python " + shlex.join(cmd[1:]), out


# -- orchestration ----------------------------------------------------------------------------


@dataclass
class Result:
    meta: dict[str, Any]
    records: list[Record]
    notes: list[str]
    external: dict[str, tuple[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "records": [_clean(asdict(r)) for r in self.records],
            "notes": self.notes,
            "external": {k: {"command": c, "output": o} for k, (c, o) in self.external.items()},
        }


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in (
        "promptstate",
        "msgspec",
        "redis",
        "hiredis",
        "asyncpg",
        "pydantic",
        "openai-agents",
        "sqlalchemy",
        "langchain-postgres",
        "langchain-core",
        "langgraph",
        "langgraph-checkpoint-postgres",
        "psycopg",
        "matplotlib",
    ):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    import promptstate

    found["promptstate"] = promptstate.__version__
    return found


def _loadavg() -> list[float] | None:
    """The machine's load average (1, 5, 15 minutes): how busy it was besides this run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return None


async def server_versions(env: Env) -> dict[str, str]:
    found: dict[str, str] = {}
    if env.redis_url:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(env.redis_url)
        try:
            found["redis-server"] = str((await client.info("server"))["redis_version"])
        finally:
            await client.aclose()
    if env.postgres_dsn:
        import asyncpg

        conn = await asyncpg.connect(env.postgres_dsn)
        try:
            found["postgresql"] = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
    return found


async def run(config: Config, *, progress: Progress | None = None, command: str = "") -> Result:
    """Run the configured scenarios; everything written to the servers is removed at the end."""
    from benchmarks import bench_listing, bench_memory, bench_peers, bench_turns

    progress = progress or Progress(1, enabled=False)
    scenarios = set(config.scenarios)
    backends = set(config.backends)
    records: list[Record] = []
    notes: list[str] = []
    external: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="psbench_") as tmp:
        env = Env(tmpdir=tmp)
        if "redis" in backends:
            url = redis_url()
            reason = await _servers.redis_reason(url)
            env.redis_url, env.redis_missing = (None, reason) if reason else (url, "")
            if reason:
                notes.append(f"Redis: skipped ({reason}); set REDIS_URL")
        if "postgres" in backends:
            dsn = postgres_dsn()
            reason = await _servers.postgres_reason(dsn)
            env.postgres_dsn, env.postgres_missing = (None, reason) if reason else (dsn, "")
            if reason:
                notes.append(f"PostgreSQL: skipped ({reason}); set POSTGRES_DSN")
        meta: dict[str, Any] = {
            "machine": machine(),
            "platform": platform.platform(),
            "mode": config.mode,
            "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "loadavg_start": _loadavg(),
            "versions": versions(),
            "config": {
                k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                for k, v in asdict(config).items()
            },
        }
        started = time.perf_counter()
        try:
            meta["versions"].update(await server_versions(env))
            turn_contenders: list[Contender] = bench_turns.contenders(env, scenarios, backends)
            if "peers" in scenarios:
                turn_contenders += bench_peers.contenders(env, backends)
            progress.add(
                len(turn_contenders) * turn_steps(config)
                + ("memory" in scenarios) * bench_memory.steps(backends)
                + ("listing" in scenarios) * bench_listing.steps(config, backends)
                + ("serialization" in scenarios)
                + len(config.external)
            )
            if turn_contenders:
                got, why = await run_turns(config, turn_contenders, progress)
                records += got
                notes += why
            if "memory" in scenarios:
                got, why = await bench_memory.run(env, config, progress, backends, scenarios)
                records += got
                notes += why
            if "listing" in scenarios:
                got, why = await bench_listing.run(env, config, progress, backends)
                records += got
                notes += why
            if "serialization" in scenarios:
                progress.step("serialization")
                records += await anyio.to_thread.run_sync(run_serialization, config)
            for module in config.external:
                progress.step(f"{module} (its own benchmark)")
                external[module] = await anyio.to_thread.run_sync(run_external, module, config)
        finally:
            await _servers.cleanup(env.redis_url, env.postgres_dsn, env.token)
        meta["seconds"] = round(time.perf_counter() - started, 1)
        meta["loadavg_end"] = _loadavg()
    add_ratios(records)
    return Result(meta=meta, records=records, notes=notes, external=external)


# -- command line -----------------------------------------------------------------------------


def parse(argv: Sequence[str] | None, default_only: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="promptstate's benchmarks, side by side with raw clients and peer libraries.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a short run (about 80 s on 2 cores)")
    mode.add_argument(
        "--tiny", action="store_true", help="a few seconds, MemoryStore only (smoke test)"
    )
    parser.add_argument(
        "--only",
        default=default_only,
        metavar="NAMES",
        help=f"comma-separated scenarios: {', '.join(SCENARIOS)}, or another module's own "
        f"benchmark ({', '.join(external_modules()) or 'none found'})",
    )
    parser.add_argument(
        "--stores",
        metavar="NAMES",
        help="comma-separated backends: memory, redis, postgres, sqlite (default: all)",
    )
    parser.add_argument(
        "--store-benchmarks", action="store_true", help="also run every store's own benchmark"
    )
    parser.add_argument("--json", metavar="PATH", help="write every record as JSON here")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots here (needs matplotlib)")
    parser.add_argument(
        "--docs", metavar="PATH", help="write the results into this markdown page's results section"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    config = Config.tiny() if args.tiny else Config.quick() if args.quick else Config.full()
    known = set(external_modules())
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        scenarios = [n for n in names if n in SCENARIOS]
        ext = [f"bench_{n.removeprefix('bench_')}" for n in names if n not in SCENARIOS]
        unknown = [e for e in ext if e not in known]
        if unknown:
            raise SystemExit(
                f"unknown scenario(s) {', '.join(unknown)}; "
                f"known: {', '.join([*SCENARIOS, *sorted(known)])}"
            )
        config = replace(config, scenarios=tuple(scenarios), external=tuple(ext))
    elif args.store_benchmarks:
        config = replace(config, external=tuple(sorted(known)))
    if args.stores:
        stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
        bad = set(stores) - {"memory", "redis", "postgres", "sqlite"}
        if bad:
            raise SystemExit(f"unknown store(s): {', '.join(sorted(bad))}")
        config = replace(config, backends=stores)
    return config


def main(argv: Sequence[str] | None = None, *, default_only: str | None = None) -> None:
    from benchmarks import report

    args = parse(argv, default_only)
    config = config_from(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raw_args = list(sys.argv[1:] if argv is None else argv)
    command = "python -m benchmarks " + shlex.join(raw_args) if raw_args else "python -m benchmarks"
    progress = Progress(0, enabled=not args.no_progress)
    try:
        result = asyncio.run(run(config, progress=progress, command=command.strip()))
    finally:
        progress.close()
    print(report.markdown(result))
    if args.json:
        Path(args.json).write_text(
            json.dumps(result.to_json(), indent=1, ensure_ascii=False) + "\n"
        )
        print(f"\nJSON: {args.json}", file=sys.stderr)
    images: list[Path] = []
    if args.plots:
        try:
            from benchmarks import plots
        except ImportError as exc:
            print(f"no plots: {exc} (pip install matplotlib)", file=sys.stderr)
        else:
            images = plots.write(result, Path(args.plots))
            print(f"plots: {', '.join(str(p) for p in images)}", file=sys.stderr)
    if args.docs:
        report.write_docs(result, Path(args.docs), images)
        print(f"docs: {args.docs}", file=sys.stderr)

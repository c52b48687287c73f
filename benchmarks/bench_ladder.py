"""Where a pipeline turn's time goes: the pipeline built up layer by layer against the bare
store turn, on each store, in one run.

Each layer is a whole turn on its own session (1,000 messages at the start; each turn adds two,
the same for every layer, and no store's windowed load depends on the length), one turn at a
time, timed as process CPU per turn (the client's work; the servers run in other processes):

* ``bare``: ``load(last=W)`` + ``append`` of a user and an assistant message (the turn the
  published "What the pipeline adds" table divides by), ``W`` the window the pipeline reads;
* ``store calls``: the store calls a pipeline turn makes and nothing else, under the
  in-process session lock as the turn runner takes it: on a ``LeasingStore``
  ``acquire_and_load(W)`` + ``append_turn(turn_id=..., release_lease=...)``, on another store
  ``load(W)`` + ``append_turn(turn_id=...)``;
* ``load, call, save``: ``Pipeline.execute`` with only ``LoadState(last=W)``,
  ``CallProvider`` and ``SaveState``, the provider answering at once (a new reply message per
  call, a usage it does not count);
* ``+ TokenBudget``: the same with ``TokenBudget`` (the window comes from the budget);
* ``default stages``: the default chain (adds ``SlidingWindow(None)`` and ``CheckReply``);
* ``+ MockProvider``: the default chain with ``MockProvider`` (counts the prompt's tokens and
  makes the reply): the published benchmark's pipeline turn.

Layers run in interleaved rounds (the order reversed every other round), so machine noise
hits them alike; the table gives the window ``W``, the median CPU per turn and, per layer, its
ratio to ``bare`` in the same round: the median over rounds and the middle half of the rounds.

Stores: memory and SQLite always; Redis and PostgreSQL when their servers answer
(``REDIS_URL``, ``POSTGRES_DSN``; defaults ``redis://127.0.0.1:6379/0`` and
``postgresql://postgres@127.0.0.1:5432/test``), under a unique key prefix / schema, removed at
the end.

Run: ``python -m benchmarks.bench_ladder`` (``--quick`` for a short run, ``--stores memory``
for some stores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio

from benchmarks import _servers
from benchmarks._timing import machine
from benchmarks.bench_turns import pipeline_budget
from benchmarks.workload import (
    WindowSpy,
    assistant_text,
    history_messages,
    postgres_dsn,
    redis_url,
    turn_messages,
    user_text,
)
from promptstate import (
    Chunk,
    Completion,
    Message,
    MockProvider,
    Pipeline,
    Store,
    Usage,
    open_store,
)
from promptstate.locks import local_locks, new_id
from promptstate.stages import CallProvider, LoadState, SaveState, TokenBudget
from promptstate.stores.base import LeasingStore

HISTORY = 1_000
#: Turns before measuring: enough that the newest messages (the window) are all the ladder's
#: own turns, so the budget's window is the same in every layer. A turn's texts are those of
#: turn ``i % 10``: the same lengths all run long, so the window does not move.
WARM = 40
STORES = ("memory", "sqlite", "redis", "postgres")
Turn = Callable[[int], Awaitable[object]]


class _Fixed:
    """A provider that answers at once, with a new reply message per call (as the bare turn
    builds its messages per turn) and a usage it does not count."""

    async def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        return Completion(
            message=Message("assistant", assistant_text(len(messages))), usage=Usage(1_000, 60)
        )

    async def stream(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[Chunk]:
        yield Chunk(text="")  # not used: turns here are not streamed

    async def aclose(self) -> None:
        return None


async def _open(name: str, folder: str, tag: str) -> Store:
    if name == "memory":
        return open_store("memory://")
    if name == "sqlite":
        return open_store(f"sqlite:///{folder}/{uuid.uuid4().hex[:10]}.db")
    if name == "redis":
        return open_store(redis_url(), prefix=f"{tag}:")
    schema = f"{tag}_{uuid.uuid4().hex[:10]}"
    await _servers.create_schema(postgres_dsn(), schema)
    return open_store(postgres_dsn(), table_name=f"{schema}.sessions")


async def _reachable(name: str) -> str | None:
    """None when the store's server answers, else why not."""
    if name == "redis":
        return await _servers.redis_reason(redis_url())
    if name == "postgres":
        return await _servers.postgres_reason(postgres_dsn())
    return None


async def _drop(name: str, store: Store | None, tag: str) -> None:
    """Close the store and remove what the run wrote (also after a failed open)."""
    try:
        if store is not None:
            await store.aclose()
    finally:
        if name == "redis":
            await _servers.unlink_prefix(redis_url(), f"{tag}:")
        elif name == "postgres":
            await _servers.drop_schemas(postgres_dsn(), tag)


def _layers(store: Store, window: int) -> dict[str, Callable[[str], Turn]]:
    """Each layer as ``make(session) -> turn(i)``."""
    budget = pipeline_budget()

    def bare(session: str) -> Turn:
        async def turn(i: int) -> object:
            held = await store.load(session, last=window)  # kept until the turn ends
            count = await store.append(session, turn_messages(i))
            del held
            return count

        return turn

    locks = local_locks(store)

    def store_calls(session: str) -> Turn:
        # As TurnRunner does: the in-process session lock, then (on a leasing store) the lease.
        if isinstance(store, LeasingStore):
            leasing = store

            async def leased(i: int) -> object:
                owner = new_id()
                await locks.acquire(session, 30.0)
                try:
                    held = await leasing.acquire_and_load(session, owner, 30.0, last=window)
                    count = await leasing.append_turn(
                        session, turn_messages(i), turn_id=owner, release_lease=owner
                    )
                    del held
                    return count
                finally:
                    locks.release(session)

            return leased

        async def locked(i: int) -> object:
            await locks.acquire(session, 30.0)
            try:
                held = await store.load(session, last=window)
                count = await store.append_turn(session, turn_messages(i), turn_id=new_id())
                del held
                return count
            finally:
                locks.release(session)

        return locked

    def piped(pipe: Pipeline) -> Callable[[str], Turn]:
        def make(session: str) -> Turn:
            async def turn(i: int) -> object:
                return await pipe.execute(session, "user", user_text(i))

            return turn

        return make

    def answer(messages: Sequence[Message]) -> str:
        return assistant_text(len(messages))

    fixed = _Fixed()
    return {
        "bare": bare,
        "store calls": store_calls,
        "load, call, save": piped(
            Pipeline(
                fixed,
                store=store,
                middleware=[LoadState(last=window), CallProvider(), SaveState()],
            )
        ),
        "+ TokenBudget": piped(
            Pipeline(
                fixed,
                store=store,
                middleware=[LoadState(), TokenBudget(budget), CallProvider(), SaveState()],
            )
        ),
        "default stages": piped(Pipeline(fixed, store=store, max_tokens=budget)),
        "+ MockProvider": piped(Pipeline(MockProvider(answer), store=store, max_tokens=budget)),
    }


async def _pipeline_window(store: Store) -> int:
    """How many messages the default pipeline reads at this history (after it settled)."""
    from promptstate.pipeline import default_stages

    def answer(messages: Sequence[Message]) -> str:
        return assistant_text(len(messages))

    stages = default_stages(pipeline_budget())
    stages[0] = WindowSpy()
    pipe = Pipeline(MockProvider(answer), store=store, middleware=stages)
    await store.append("window", history_messages(HISTORY))
    for i in range(WARM):
        await pipe.execute("window", "user", user_text(i % 10))
    await store.delete("window")
    return WindowSpy.window or 0


async def measure(
    store: Store, rounds: int, turns: int
) -> tuple[int, list[tuple[str, float, float, float, float]]]:
    """The window read, and ``(layer, median CPU µs per turn, median ratio to bare, its
    quartiles)`` per layer."""
    window = await _pipeline_window(store)
    layers = _layers(store, window)
    turn_of: dict[str, Turn] = {}
    for layer, make in layers.items():
        session = f"ladder-{len(turn_of)}"
        await store.append(session, history_messages(HISTORY))
        turn_of[layer] = make(session)
        for i in range(WARM):  # scripts loaded, statements prepared, the tail all new turns
            await turn_of[layer](i % 10)
    cpu: dict[str, list[float]] = {layer: [] for layer in layers}
    order = list(layers)
    for r in range(rounds):
        for layer in order if r % 2 == 0 else order[::-1]:
            fn = turn_of[layer]
            start = time.process_time()
            for i in range(turns):
                await fn(i % 10)
            cpu[layer].append((time.process_time() - start) / turns * 1e6)
    rows = []
    for layer in layers:
        ratios = [a / b for a, b in zip(cpu[layer], cpu["bare"], strict=True)]
        low, mid, high = _quartiles(ratios)
        rows.append((layer, statistics.median(cpu[layer]), mid, low, high))
    return window, rows


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """The lower quartile, median and upper quartile of ``values``."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, mid, high = statistics.quantiles(values, n=4)
    return low, mid, high


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated store names")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--turns", type=int, default=None, help="turns per layer and round")
    args = parser.parse_args(argv)
    rounds = args.rounds or (4 if args.quick else 16)
    names = [n for n in args.stores.split(",") if n]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"Where a pipeline turn's CPU goes: history {HISTORY:,} at the start (each turn adds 2), "
        f"one session, {rounds} rounds ({machine()}; load average {load})\n"
    )
    print("| store | window | layer | CPU µs per turn | ÷ bare | middle half of rounds |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    notes = []
    with tempfile.TemporaryDirectory(prefix="ps-ladder-") as folder:
        for name in names:
            if name not in STORES:
                raise SystemExit(f"unknown store {name!r}: choose from {', '.join(STORES)}")
            why = await _reachable(name)
            if why is not None:
                notes.append(f"{name}: skipped ({why})")
                continue
            in_process = name == "memory"
            turns = args.turns or ((500 if in_process else 100) if args.quick else 0)
            turns = turns or (2_000 if in_process else 300)
            tag = f"psbench_ladder_{uuid.uuid4().hex[:8]}"
            store: Store | None = None
            try:
                store = await _open(name, folder, tag)
                window, rows = await measure(store, rounds, turns)
            finally:
                await _drop(name, store, tag)
            for layer, us, mid, low, high in rows:
                spread = "" if layer == "bare" else f"{low:.2f}-{high:.2f}x"
                print(f"| {name} | {window} | {layer} | {us:,.1f} | {mid:.2f}x | {spread} |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    anyio.run(main)

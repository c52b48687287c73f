"""What the store contract's checks cost: each public method against its protected one, in one run.

Run: ``python -m benchmarks.bench_checks`` (``--quick`` for a short run)

Every public store method checks that the store is open and that its arguments are valid,
then calls the protected method a backend implements (``append_turn`` -> ``_append_turn``,
issue 14's "policy once, I/O per backend"). This times both on a ``MemoryStore`` (the store
with the least I/O, so the checks weigh most there), interleaved, best of several batches:

- ``count(key)`` / ``_count(key)``: a key check and nothing else to check;
- ``load(key, last=50)`` on 120 stored messages: key and ``last``;
- ``append_turn(key, 2 messages, cost=, turn_id=)``: key, every message checked storable,
  cost, turn id (stamped on the first message); the protected call gets the stamped messages,
  so both write the same;
- ``get_metadata(key)``.

The ratio column is public / protected; ``checks µs`` is the difference per call: what the
contract adds to each call of every backend (SQLite, Redis and PostgreSQL then add their I/O).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from benchmarks._timing import machine
from promptstate import MemoryStore, Message
from promptstate.stores.turns import TURN_ID_KEY


async def _batch(call: Callable[[int], Awaitable[object]], first: int, calls: int) -> float:
    """Seconds per call over one batch of ``calls`` calls."""
    start = time.perf_counter()
    for i in range(first, first + calls):
        await call(i)
    return (time.perf_counter() - start) / calls


async def main(quick: bool) -> None:
    calls, batches = (1_000, 4) if quick else (5_000, 20)
    store = MemoryStore()
    turn = [Message("user", "q" * 200), Message("assistant", "a" * 200)]
    for _ in range(60):
        await store.append("k", turn)

    def stamped(i: int) -> list[Message]:
        first = msgspec.structs.replace(turn[0], metadata={TURN_ID_KEY: f"p{i}"})
        return [first, turn[1]]

    pairs: list[tuple[str, Callable[[int], Awaitable[object]], Callable[[int], Awaitable[object]]]]
    pairs = [
        ("count", lambda i: store.count("k"), lambda i: store._count("k")),
        (
            "load(last=50)",
            lambda i: store.load("k", last=50),
            lambda i: store._load("k", last=50),
        ),
        (
            "append_turn (2 messages)",
            lambda i: store.append_turn(f"t{i % 64}", turn, cost=0.001, turn_id=f"t{i}"),
            lambda i: store._append_turn(
                f"p{i % 64}",
                stamped(i),
                cost=0.001,
                turn_id=f"p{i}",
                expected_count=None,
                release_lease=None,
            ),
        ),
        ("get_metadata", lambda i: store.get_metadata("k"), lambda i: store._get_metadata("k")),
    ]
    print(f"Machine: {machine()}; MemoryStore; best of {batches} batches of {calls:,} calls")
    print()
    print("| call | public µs | protected µs | checks µs | public / protected |")
    print("|---|---:|---:|---:|---:|")
    for name, public, protected in pairs:
        # Interleaved batch by batch (a shared machine's noise hits both), best batch of each.
        pub_best = prot_best = float("inf")
        for batch in range(batches):
            first = batch * calls
            pub_best = min(pub_best, await _batch(public, first, calls))
            prot_best = min(prot_best, await _batch(protected, first, calls))
        pub, prot = pub_best * 1e6, prot_best * 1e6
        print(f"| {name} | {pub:,.2f} | {prot:,.2f} | {pub - prot:,.2f} | {pub / prot:.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke test")
    anyio.run(main, parser.parse_args().quick)

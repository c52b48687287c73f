"""What ``wait_replicas=1`` costs: ``append`` with Redis ``WAIT`` after it against without.

Run: ``python -m benchmarks.bench_wait_replicas [--quick]``

Starts a private primary and one replica (``redis-server`` on free loopback ports, no
persistence; ``REPLICAOF`` over loopback) and appends two messages per call to 64 sessions
through two ``RedisStore`` objects on the same primary, one with ``wait_replicas=1`` and one
without, in the same run:

* latency at concurrency 1 (median and p99 of an ``append``), the two stores alternating call
  by call, so that both see the same moment of the machine;
* throughput with the 64 sessions appended to concurrently by 64 tasks (appends/s), the two
  stores alternating in short slices.

Ratios are waited / plain, computed per interleaved round and reported as the median of those
paired ratios. Over loopback the replica acknowledges within about one round trip of its own
(Redis replicas acknowledge once a second on their own, and at once when a ``WAIT`` asks), so
this is the floor of the cost; across hosts add the network round trip to the replica.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid

from redis.asyncio import Redis

from benchmarks._timing import machine
from benchmarks.bench_redis import _private_server
from promptstate import Message
from promptstate.stores.redis import RedisStore

SESSIONS = 64


def _messages(i: int) -> list[Message]:
    return [
        Message("user", f"question {i}: what is the weather like in Paris today?"),
        Message("assistant", f"answer {i}: sunny, 21 degrees, light wind from the west."),
    ]


async def _latency(store: RedisStore, i: int) -> float:
    t0 = time.perf_counter()
    await store.append(f"s{i % SESSIONS}", _messages(i))
    return time.perf_counter() - t0


async def _throughput(store: RedisStore, seconds: float, start: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: int) -> None:
        nonlocal done
        i = start + session
        while time.perf_counter() < deadline:
            await store.append(f"s{session}", _messages(i))
            done += 1
            i += SESSIONS

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in range(SESSIONS)))
    return done / (time.perf_counter() - t0)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def main(primary: str, replica: str, quick: bool) -> dict[str, float]:
    """Measure, print the table, and return the figures."""
    await _replicate(replica, primary)
    prefix = f"bench:{uuid.uuid4().hex}:"
    plain = RedisStore.from_url(primary, prefix=prefix + "p:", max_connections=SESSIONS)
    waited = RedisStore.from_url(
        primary, prefix=prefix + "w:", max_connections=SESSIONS, wait_replicas=1
    )
    rounds, calls, seconds = (3, 100, 0.3) if quick else (8, 400, 0.75)
    lat: dict[str, list[float]] = {"plain": [], "waited": []}
    lat_ratios: list[float] = []
    tput: dict[str, list[float]] = {"plain": [], "waited": []}
    try:
        for i in range(50):  # warm-up: connections, script cache
            await _latency(plain, i)
            await _latency(waited, i)
        for r in range(rounds):
            order = [("plain", plain), ("waited", waited)]
            if r % 2:
                order.reverse()
            samples: dict[str, list[float]] = {"plain": [], "waited": []}
            for i in range((r + 1) * 10_000, (r + 1) * 10_000 + calls):
                for name, store in order:
                    samples[name].append(await _latency(store, i))
            for name in samples:
                lat[name] += samples[name]
            lat_ratios.append(
                statistics.median(samples["waited"]) / statistics.median(samples["plain"])
            )
        for r in range(rounds):
            order = [("plain", plain), ("waited", waited)]
            if r % 2:
                order.reverse()
            for name, store in order:
                tput[name].append(await _throughput(store, seconds, (r + 1) * 100_000))
    finally:
        for store in (plain, waited):
            await store.delete_by_prefix("")
            await store.aclose()
    figures = {
        "plain_median_us": statistics.median(lat["plain"]) * 1e6,
        "plain_p99_us": _p99(lat["plain"]) * 1e6,
        "waited_median_us": statistics.median(lat["waited"]) * 1e6,
        "waited_p99_us": _p99(lat["waited"]) * 1e6,
        "latency_ratio": statistics.median(lat_ratios),
        "plain_per_s": statistics.median(tput["plain"]),
        "waited_per_s": statistics.median(tput["waited"]),
        "throughput_ratio": statistics.median(
            w / p for w, p in zip(tput["waited"], tput["plain"], strict=True)
        ),
    }
    print(f"machine: {machine()}; primary + 1 replica on loopback")
    print()
    print(
        "| append | median µs | p99 µs | appends/s (64 tasks) |\n| --- | ---: | ---: | ---: |\n"
        f"| without `WAIT` | {figures['plain_median_us']:,.0f} | {figures['plain_p99_us']:,.0f} "
        f"| {figures['plain_per_s']:,.0f} |\n"
        f"| `wait_replicas=1` | {figures['waited_median_us']:,.0f} "
        f"| {figures['waited_p99_us']:,.0f} | {figures['waited_per_s']:,.0f} |\n"
        f"| ratio (paired median) | {figures['latency_ratio']:.2f}x | | "
        f"{figures['throughput_ratio']:.2f}x |"
    )
    return figures


async def _replicate(replica: str, primary: str) -> None:
    """Make ``replica`` a replica of ``primary`` and wait for its first sync."""
    host, port = primary.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    client = Redis.from_url(replica)
    source = Redis.from_url(primary)
    try:
        await client.execute_command("REPLICAOF", host, int(port))
        for _ in range(400):
            # Online on the primary's side: only then does its WAIT ask the replica.
            if (await source.info("replication")).get("slave0", {}).get("state") == "online":
                return
            await asyncio.sleep(0.05)
        raise SystemExit("the replica did not sync within 20 s")
    finally:
        await client.aclose()
        await source.aclose()


def private_server() -> contextlib.AbstractContextManager[str]:
    """A throwaway redis-server whose replicas take their first sync at once."""
    return _private_server("--repl-diskless-sync-delay", "0")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    with private_server() as primary_url, private_server() as replica_url:
        asyncio.run(main(primary_url, replica_url, args.quick))

"""RedisStore against raw redis-py + hiredis doing the least work for the same turn, in one run.

Run: ``python -m benchmarks.bench_redis [--url redis://127.0.0.1:6379/0] [--quick]``

One turn = ``load(last=50)`` + ``append`` of a user and an assistant message. The raw floor
does the minimal commands for the same work with the same client library and pool: ``LRANGE
key -50 -1`` (decoding the 50 messages with msgspec) then ``RPUSH key user assistant``
(encoding them with msgspec): no version, no TTL, no token counting, no index. promptstate's
turn includes all of those (the store has a one-hour TTL).

Measured at history lengths 10, 1,000 and 10,000 (sessions pre-filled to that length; the
turns rotate over 64 sessions so each grows by only a few dozen messages):

* latency at concurrency 1 (median and p99 of a turn), raw and promptstate alternating turn
  by turn, so that both see the same moment of the machine;
* throughput with 64 sessions driven concurrently by 64 tasks (turns/s), raw and
  promptstate alternating in short slices.

A third contender is the same store on a borrowed client (``RedisStore(client)``, the raw
floor's client): every one of its calls goes through redis-py's ``execute_command`` and
blocking pool, where a store that made its own client runs its single commands on
connections of its own (``promptstate.stores._redis_connections``). The second table is that
A/B: own connections over borrowed client, paired per round.

Ratios are promptstate / raw, computed per interleaved round and reported as the median of
those paired ratios (the machine this was written on is shared, so absolute numbers drift
from round to round; pairing cancels most of the drift). ``--spawn`` runs against a private
``redis-server`` on a free port instead of ``--url``.

Everything is written under a unique key prefix and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis

from benchmarks._timing import machine
from promptstate import Message
from promptstate.stores.redis import RedisStore

SESSIONS = 64
LENGTHS = (10, 1_000, 10_000)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Message).decode


def _turn_messages(i: int) -> tuple[Message, Message]:
    return (
        Message("user", f"question {i}: what is the weather like in Paris today?"),
        Message("assistant", f"answer {i}: sunny, 21 degrees, light wind from the west."),
    )


class Raw:
    """The floor: the two commands a hand-written Redis chat history needs."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, session: int) -> str:
        return f"{self.prefix}raw:{session}"

    async def turn(self, session: int, i: int) -> None:
        key = self.key(session)
        history = [_decode(item) for item in await self.client.lrange(key, -50, -1)]
        assert history
        user, assistant = _turn_messages(i)
        await self.client.rpush(key, _encode(user), _encode(assistant))


class Promptstate:
    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def turn(self, session: int, i: int) -> None:
        sid = f"s{session}"
        history = await self.store.load(sid, last=50)
        assert history
        await self.store.append(sid, list(_turn_messages(i)))


async def _fill(client: Redis, stores: tuple[RedisStore, ...], raw: Raw, length: int) -> None:
    """Give every session ``length`` messages, in every layout."""
    item = _encode(Message("user", "an earlier message of this conversation, about Paris."))
    for session in range(SESSIONS):
        await client.delete(raw.key(session))
        for store in stores:
            await store.delete(f"s{session}")
        done = 0
        while done < length:
            chunk = min(2_000, length - done)
            await client.rpush(raw.key(session), *([item] * chunk))
            for store in stores:
                await store.append(
                    f"s{session}",
                    [Message("user", "an earlier message of this conversation, about Paris.")]
                    * chunk,
                )
            done += chunk


async def _latency(contender: Raw | Promptstate, turns: int, start: int) -> list[float]:
    samples = []
    for i in range(start, start + turns):
        t0 = time.perf_counter()
        await contender.turn(i % SESSIONS, i)
        samples.append(time.perf_counter() - t0)
    return samples


async def _throughput(contender: Raw | Promptstate, seconds: float, start: int) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: int) -> None:
        nonlocal count
        i = start
        while time.perf_counter() < deadline:
            await contender.turn(session, i)
            i += 1
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in range(SESSIONS)))
    return count / (time.perf_counter() - t0)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def main(url: str, quick: bool) -> None:
    prefix = f"bench:{uuid.uuid4().hex}:"
    client = Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=SESSIONS))
    store = RedisStore.from_url(url, prefix=prefix, ttl=3600, max_connections=SESSIONS)
    # The same store on a borrowed client: every call through redis-py's execute_command.
    borrowed = RedisStore(client, prefix=f"{prefix}b:", ttl=3600)
    raw = Raw(client, prefix)
    contenders: dict[str, Raw | Promptstate] = {
        "raw": raw,
        "ps": Promptstate(store),
        "borrowed": Promptstate(borrowed),
    }
    rounds, turns, seconds = (3, 200, 0.5) if quick else (8, 400, 0.75)
    rows = []
    try:
        await client.ping()
        for length in LENGTHS:
            await _fill(client, (store, borrowed), raw, length)
            lat: dict[str, list[float]] = {name: [] for name in contenders}
            tput: dict[str, list[float]] = {name: [] for name in contenders}
            lat_ratios: dict[str, list[float]] = {"ps": [], "borrowed": [], "own": []}
            tput_ratios: dict[str, list[float]] = {"ps": [], "borrowed": [], "own": []}
            for contender in contenders.values():
                await _latency(contender, 50, 0)  # warm-up: connections, script cache
            names = list(contenders)
            for r in range(rounds):
                order = names[r % 3 :] + names[: r % 3]  # each goes first in turn
                # Turn by turn, rotating, so that all see the same moment of the machine.
                samples: dict[str, list[float]] = {name: [] for name in names}
                for i in range((r + 1) * 10_000, (r + 1) * 10_000 + turns):
                    for name in order:
                        t0 = time.perf_counter()
                        await contenders[name].turn(i % SESSIONS, i)
                        samples[name].append(time.perf_counter() - t0)
                for name in samples:
                    lat[name] += samples[name]
                med = {name: statistics.median(samples[name]) for name in names}
                lat_ratios["ps"].append(med["ps"] / med["raw"])
                lat_ratios["borrowed"].append(med["borrowed"] / med["raw"])
                lat_ratios["own"].append(med["ps"] / med["borrowed"])
            for r in range(rounds):
                order = names[r % 3 :] + names[: r % 3]
                got = {}
                for name in order:
                    got[name] = await _throughput(contenders[name], seconds, (r + 1) * 100_000)
                    tput[name].append(got[name])
                tput_ratios["ps"].append(got["ps"] / got["raw"])
                tput_ratios["borrowed"].append(got["borrowed"] / got["raw"])
                tput_ratios["own"].append(got["ps"] / got["borrowed"])
            rows.append(
                (
                    length,
                    {name: statistics.median(lat[name]) for name in names},
                    {name: _p99(lat[name]) for name in names},
                    {name: statistics.median(tput[name]) for name in names},
                    {k: statistics.median(v) for k, v in lat_ratios.items()},
                    {k: statistics.median(v) for k, v in tput_ratios.items()},
                )
            )
    finally:
        await store.delete_by_prefix("")
        await borrowed.delete_by_prefix("")
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.unlink(*keys)
        await store.aclose()
        await borrowed.aclose()
        await client.aclose()

    print(f"machine: {machine()}; server: {url.split('@')[-1]}")
    print()
    print(
        "| history | raw median µs | raw p99 µs | promptstate median µs | promptstate p99 µs "
        "| latency ratio | raw turns/s (64) | promptstate turns/s (64) | throughput ratio |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for length, med, p99, tps, lratio, tratio in rows:
        print(
            f"| {length:,} | {med['raw'] * 1e6:,.0f} | {p99['raw'] * 1e6:,.0f} "
            f"| {med['ps'] * 1e6:,.0f} | {p99['ps'] * 1e6:,.0f} | {lratio['ps']:.2f}x "
            f"| {tps['raw']:,.0f} | {tps['ps']:,.0f} | {tratio['ps']:.2f}x |"
        )
    flat = rows[-1][1]["ps"] / rows[0][1]["ps"]
    print()
    print(f"promptstate turn at {LENGTHS[-1]:,} messages / at {LENGTHS[0]}: {flat:.2f}x")
    print()
    print(
        "The same store on a borrowed client (RedisStore(client): every call through redis-py's "
        "execute_command and its pool), against the store that made its own client and runs "
        "its single commands on connections of its own:"
    )
    print()
    print(
        "| history | borrowed median µs | borrowed p99 µs | borrowed turns/s (64) "
        "| own / borrowed, latency | own / borrowed, turns/s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for length, med, p99, tps, lratio, tratio in rows:
        print(
            f"| {length:,} | {med['borrowed'] * 1e6:,.0f} | {p99['borrowed'] * 1e6:,.0f} "
            f"| {tps['borrowed']:,.0f} | {lratio['own']:.2f}x | {tratio['own']:.2f}x |"
        )


@contextlib.contextmanager
def _private_server(*extra_args: str) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (``extra_args`` go to the server)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--spawn needs redis-server on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    workdir = tempfile.mkdtemp(prefix="promptstate-bench-")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += extra_args
    proc = subprocess.Popen(
        [binary, *args, "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--spawn", action="store_true", help="use a private redis-server")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    if args.spawn:
        with _private_server() as url:
            asyncio.run(main(url, args.quick))
    else:
        asyncio.run(main(args.url, args.quick))

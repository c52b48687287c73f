"""The figures a capacity plan needs: CPU per turn on the client and on the Redis server,
and memory per message, measured on a private ``redis-server`` so that nothing else shares it.

Run: ``python -m benchmarks.bench_capacity [--turns 20000] [--history 40] [--quick]``

A turn is ``Pipeline.execute`` with a ``MockProvider`` that answers at once (so the figures are
promptstate's and the store's, not a model's): one user message in, one assistant message out,
the newest 50 messages read, on a ``RedisStore`` with turn leases. 64 tasks drive 64 sessions.

* client CPU µs per turn: this process's CPU time (``time.process_time``) over the turns;
* server CPU µs per turn: the server's ``used_cpu_user + used_cpu_sys`` (``INFO cpu``) over the
  turns; a Redis primary runs commands on one core, so ``1e6 / server µs`` is what one primary
  can serve at 100 % of a core;
* bytes per message: the server's ``used_memory`` growth over the messages the run stored
  (sessions of ``--history`` messages, the listing index included), without replicas.

The same run is repeated with the bare store calls a turn makes (``acquire_and_load`` and
``append_turn`` with the lease released), so the pipeline's own share is visible as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from benchmarks._timing import machine
from benchmarks.bench_redis import _private_server
from promptstate import Message, MockProvider, Pipeline
from promptstate.stores.redis import RedisStore

SESSIONS = 64


async def _server_cpu(client: Redis) -> float:
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _used_memory(client: Redis) -> int:
    info: dict[str, Any] = await client.info("memory")
    return int(info["used_memory"])


async def _drive(turns: int, one_turn: Any) -> float:
    """Run ``turns`` turns over SESSIONS concurrent tasks; wall seconds."""
    per_task = turns // SESSIONS
    started = time.perf_counter()

    async def worker(n: int) -> None:
        for i in range(per_task):
            await one_turn(f"s{n}", i)

    await asyncio.gather(*(worker(n) for n in range(SESSIONS)))
    return time.perf_counter() - started


async def main(url: str, turns: int, history: int) -> None:
    raw = Redis.from_url(url)
    store = RedisStore.from_url(url, prefix=f"cap{uuid.uuid4().hex[:8]}:", max_connections=64)
    rows: list[tuple[str, float, float, float]] = []
    try:
        # Memory per message: fill SESSIONS x 10 sessions of ``history`` messages each.
        before = await _used_memory(raw)
        batch = [
            Message("user" if i % 2 == 0 else "assistant", f"message {i}: " + "x" * 160)
            for i in range(history)
        ]
        for n in range(SESSIONS * 10):
            await store.append(f"fill{n}", batch)
        stored = SESSIONS * 10 * history
        per_message = (await _used_memory(raw) - before) / stored

        async with Pipeline(MockProvider(["ok " * 40], cycle=True), store=store) as pipe:

            async def pipeline_turn(session: str, i: int) -> None:
                await pipe.execute(session, "user", f"question {i}")

            async def store_turn(session: str, i: int) -> None:
                owner = f"o{session}{i}"
                window = await store.acquire_and_load(session, owner, 30.0, last=50)  # kept
                await store.append_turn(
                    session,
                    [Message("user", f"question {i}"), Message("assistant", "ok " * 40)],
                    turn_id=owner,
                    release_lease=owner,
                )
                del window

            await _drive(SESSIONS * 20, pipeline_turn)  # warm up: connections, scripts
            for name, fn in (("Pipeline.execute", pipeline_turn), ("bare store turn", store_turn)):
                cpu_client, cpu_server = time.process_time(), await _server_cpu(raw)
                wall = await _drive(turns, fn)
                client_us = (time.process_time() - cpu_client) / turns * 1e6
                server_us = (await _server_cpu(raw) - cpu_server) / turns * 1e6
                rows.append((name, turns / wall, client_us, server_us))
    finally:
        await store.delete_by_prefix("")
        await store.aclose()
        await raw.aclose()

    print(f"machine: {machine()}; private redis-server; {turns:,} turns over {SESSIONS} sessions")
    print()
    print("| turn | turns/s (this box) | client CPU µs/turn | Redis CPU µs/turn |")
    print("| --- | ---: | ---: | ---: |")
    for name, rate, client_us, server_us in rows:
        print(f"| {name} | {rate:,.0f} | {client_us:,.0f} | {server_us:,.0f} |")
    print()
    pipeline, bare = rows
    print(f"pipeline / bare store turn, client CPU: {pipeline[2] / bare[2]:.2f}x")
    print(f"bytes per stored message (sessions of {history}, index included): {per_message:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="2,000 turns, for a smoke run")
    args = parser.parse_args()
    with _private_server() as server_url:
        asyncio.run(main(server_url, 2_000 if args.quick else args.turns, args.history))

"""What observability and encryption cost per pipeline turn, as ratios in one run.

* ``otel``: a MemoryStore ``Pipeline.execute`` turn with ``opentelemetry-api`` installed and
  **no SDK configured** (what every user with the package gets) against the same turn with the
  instrumentation turned off (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=promptstate``). Target:
  at most 1.05x.
* ``encrypted``: a ``Pipeline.execute`` turn over ``EncryptedStore(inner)`` against the same turn
  over ``inner`` itself, for each store (Redis and PostgreSQL when ``REDIS_URL`` /
  ``POSTGRES_DSN`` are set), history of 10 messages, default stages with
  ``max_tokens=500``. Target: at most 1.3x.

Both sides run in interleaved batches of 10 turns on one store (``bench_pipeline``'s
``_time_pair``), and the ratio is the median of the per-round ratios.

Run: ``python -m benchmarks.bench_observe`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable

import anyio

from benchmarks._timing import fmt_us, machine
from benchmarks.bench_pipeline import MAX_TOKENS, REPLY, USER_TEXT, _fill, _history, _time_pair
from promptstate import MemoryStore, MockProvider, Pipeline, Store

HISTORY = 10


def _pipeline(store: Store, *, telemetry: bool) -> Pipeline:
    key = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
    saved = os.environ.pop(key, None)
    if not telemetry:
        os.environ[key] = "promptstate"
    try:
        return Pipeline(MockProvider([REPLY], cycle=True), store=store, max_tokens=MAX_TOKENS)
    finally:
        os.environ.pop(key, None)
        if saved is not None:
            os.environ[key] = saved


def _resetter(store: Store, session: str) -> Callable[[], Awaitable[None]]:
    start = _history(HISTORY)

    async def reset() -> None:
        await _fill(store, session, start)

    return reset


async def bench_otel(budget: float) -> list[str]:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return ["otel", "opentelemetry-api not installed: skipped", "", "", ""]
    store = MemoryStore()
    on, off = _pipeline(store, telemetry=True), _pipeline(store, telemetry=False)
    assert on._telemetry is not None
    assert off._telemetry is None
    tag = uuid.uuid4().hex[:8]
    a, b = f"otel-{tag}-on", f"otel-{tag}-off"

    async def turn_on() -> object:
        return await on.execute(a, "user", USER_TEXT)

    async def turn_off() -> object:
        return await off.execute(b, "user", USER_TEXT)

    t_on, t_off, ratio = await _time_pair(
        (turn_on, turn_off), (_resetter(store, a), _resetter(store, b)), budget
    )
    await store.aclose()
    return ["otel (API, no SDK)", "memory", fmt_us(t_off), fmt_us(t_on), f"{ratio:.3f}x"]


def _inner_stores() -> list[tuple[str, Callable[[], Store]]]:
    stores: list[tuple[str, Callable[[], Store]]] = [("memory", MemoryStore)]
    from promptstate.stores.sqlite import SQLiteStore

    folder = tempfile.mkdtemp(prefix="ps-bench-")
    stores.append(("sqlite", lambda: SQLiteStore(f"{folder}/{uuid.uuid4().hex}.db")))
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        from promptstate.stores.redis import RedisStore

        prefix = f"ps-bench-{uuid.uuid4().hex[:8]}:"
        stores.append(("redis", lambda: RedisStore.from_url(redis_url, prefix=prefix)))
    dsn = os.environ.get("POSTGRES_DSN")
    if dsn:
        from promptstate.stores.postgres import PostgresStore

        table = f"ps_bench_{uuid.uuid4().hex[:8]}"
        stores.append(("postgresql", lambda: PostgresStore.from_dsn(dsn, table_name=table)))
        _DROPS.append((dsn, table))
    return stores


_DROPS: list[tuple[str, str]] = []


async def _drop_tables() -> None:
    import asyncpg

    for dsn, table in _DROPS:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                f'DROP TABLE IF EXISTS "{table}_messages", "{table}", '
                f'"{table}_migrations", "{table}_leases"'
            )
        finally:
            await conn.close()


async def bench_encrypted(name: str, make: Callable[[], Store], budget: float) -> list[str]:
    try:
        from promptstate.stores.encrypted import EncryptedStore
    except ImportError:
        return ["encrypted", name, "cryptography not installed: skipped", "", ""]
    inner = make()
    sealed = EncryptedStore(inner, keys={"k1": os.urandom(32)}, active="k1")
    provider = MockProvider([REPLY], cycle=True)
    plain_pipe = Pipeline(provider, store=inner, max_tokens=MAX_TOKENS)
    sealed_pipe = Pipeline(provider, store=sealed, max_tokens=MAX_TOKENS)
    tag = uuid.uuid4().hex[:8]
    a, b = f"bench-{tag}-enc", f"bench-{tag}-plain"

    async def turn_sealed() -> object:
        return await sealed_pipe.execute(a, "user", USER_TEXT)

    async def turn_plain() -> object:
        return await plain_pipe.execute(b, "user", USER_TEXT)

    try:
        t_sealed, t_plain, ratio = await _time_pair(
            (turn_sealed, turn_plain), (_resetter(sealed, a), _resetter(inner, b)), budget
        )
    finally:
        await inner.delete_by_prefix("bench-")
        await inner.aclose()
    return ["EncryptedStore", name, fmt_us(t_plain), fmt_us(t_sealed), f"{ratio:.2f}x"]


async def main(quick: bool) -> None:
    budget = 0.5 if quick else 2.0
    header = ["what", "store", "without (us/turn)", "with (us/turn)", "with/without"]
    rows = [await bench_otel(budget)]
    try:
        for name, make in _inner_stores():
            rows.append(await bench_encrypted(name, make, budget))
    finally:
        await _drop_tables()
    print(f"Observability and encryption, cost per pipeline turn ({machine()})\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    anyio.run(main, parser.parse_args().quick)

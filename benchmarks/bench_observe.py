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
from pathlib import Path

import anyio

from benchmarks._timing import fmt_us, machine
from benchmarks.bench_pipeline import MAX_TOKENS, REPLY, USER_TEXT, _fill, _history, _time_pair
from promptstate import MemoryStore, MockProvider, Pipeline, Store
from promptstate.testing._backends import StoreMaker

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


def _inner_stores(maker: StoreMaker) -> list[tuple[str, Callable[[], Store]]]:
    """The inner stores, from the backend name table the tests use too: memory and SQLite
    always, Redis and PostgreSQL when ``REDIS_URL`` / ``POSTGRES_DSN`` name a server."""
    names = [("memory", "memory"), ("sqlite", "sqlite")]
    if os.environ.get("REDIS_URL"):
        names.append(("redis", "redis"))
    if os.environ.get("POSTGRES_DSN"):
        names.append(("postgresql", "postgres"))
    return [(label, maker.opener(name)) for label, name in names]


def _server(what: str) -> str:
    return os.environ["REDIS_URL" if what == "redis_url" else "POSTGRES_DSN"]


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
    # Everything the stores wrote (a SQLite file, a Redis prefix, a PostgreSQL table) is
    # removed when the maker is closed.
    maker = StoreMaker(Path(tempfile.mkdtemp(prefix="ps-bench-")), _server, tag="psbench")
    try:
        for name, make in _inner_stores(maker):
            rows.append(await bench_encrypted(name, make, budget))
    finally:
        await maker.aclose()
    print(f"Observability and encryption, cost per pipeline turn ({machine()})\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    anyio.run(main, parser.parse_args().quick)

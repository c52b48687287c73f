"""The backends the tests run on, by name: what each needs, and how the suite treats it.

The stores themselves are built by :class:`promptstate.testing._backends.StoreMaker` (shared
with the benchmarks); this adds what only the tests care about: the pytest marks of a backend
that needs a server, the TTL its expiry tests use, and the ways to damage its data beneath it
(``tests/stores/corruptions.py``). The fixtures are in ``tests/conftest.py``:

- ``backend``: a backend name, parametrized over :data:`CONFORMANCE` unless a module or test
  narrows it with ``@pytest.mark.parametrize("backend", params(...), indirect=True)``;
- ``stores``: a :class:`StoreMaker` for the test (``await stores.open("redis", ttl=1)``);
- ``store_factory``: ``await store_factory(**options)`` opens a new ``backend`` store;
- ``store``: one such store.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from promptstate.stores.base import Store
from promptstate.testing import Corruption
from promptstate.testing._backends import servers_needed

__all__ = ["CONFORMANCE", "LEASING", "Backend", "corruptions", "extra_stores", "params", "spec"]


class Backend(msgspec.Struct, frozen=True):
    """What the tests know about one backend name.

    Attributes:
        ttl_seconds: The TTL the conformance expiry tests use on it.
        corruptions: A function giving the ways to damage its data beneath it (None: nothing
            else can reach it).
    """

    ttl_seconds: float = 0.5
    corruptions: Callable[[], dict[str, Corruption]] | None = None


def _memory() -> dict[str, Corruption]:
    from tests.stores.corruptions import memory_corruptions

    return memory_corruptions()


def _sqlite() -> dict[str, Corruption]:
    from tests.stores.corruptions import sqlite_corruptions

    return sqlite_corruptions()


def _redis() -> dict[str, Corruption]:
    from tests.stores.corruptions import redis_corruptions

    return redis_corruptions()


def _postgres() -> dict[str, Corruption]:
    from tests.stores.corruptions import postgres_corruptions

    return postgres_corruptions()


_SPECS: dict[str, Backend] = {
    "memory": Backend(ttl_seconds=0.3, corruptions=_memory),
    "sqlite": Backend(ttl_seconds=0.4, corruptions=_sqlite),
    "redis": Backend(ttl_seconds=0.4, corruptions=_redis),
    "redis-cluster": Backend(ttl_seconds=0.5, corruptions=_redis),
    "postgres": Backend(ttl_seconds=0.5, corruptions=_postgres),
    "cached-memory": Backend(ttl_seconds=0.3),
    "cached-sqlite": Backend(ttl_seconds=0.5),
    "custom": Backend(ttl_seconds=0.3),
    "memory-leased": Backend(ttl_seconds=0.3),
}

#: The stores the conformance suite runs on: every bundled one, and the two test stores that
#: keep the base classes' defaults (``custom``: a ``Store``; ``memory-leased``: a
#: ``LeasingStore``).
CONFORMANCE = [
    "memory",
    "sqlite",
    "redis",
    "redis-cluster",
    "postgres",
    "cached-memory",
    "cached-sqlite",
    "encrypted-memory",
    "encrypted-sqlite",
    "encrypted-redis",
    "encrypted-postgres",
    "custom",
    "memory-leased",
]

#: The conformance stores that are ``LeasingStore``s (cross-process turn leases).
LEASING = [
    "sqlite",
    "redis",
    "redis-cluster",
    "postgres",
    "cached-sqlite",
    "encrypted-sqlite",
    "encrypted-redis",
    "encrypted-postgres",
    "memory-leased",
]


def spec(name: str) -> Backend:
    """What the tests know about ``name`` (a wrapper: 0.5 s TTL, no corruptions)."""
    return _SPECS.get(name, Backend())


def corruptions(name: str) -> dict[str, Corruption]:
    make = spec(name).corruptions
    return {} if make is None else make()


def params(*names: str) -> list[object]:
    """``names`` as ``pytest.param``s, each marked with the server it needs (``redis``,
    ``postgres``), for ``@pytest.mark.parametrize("backend", params(...), indirect=True)``."""
    found: list[object] = []
    for name in names:
        server = servers_needed(name)
        marks = []
        if server in ("redis_url", "redis_cluster_url"):
            marks.append(pytest.mark.redis)
        elif server == "postgres_dsn":
            marks.append(pytest.mark.postgres)
        found.append(pytest.param(name, marks=marks, id=name))
    return found


def extra_stores() -> dict[str, Callable[..., Store]]:
    """The in-process test stores the shared table does not know: ``"custom"`` (only the four
    abstract methods) and ``"memory-leased"`` (a MemoryStore with leases)."""

    def custom(**options: object) -> Store:
        from tests.stores.test_custom_store import DictStore

        return DictStore(**options)

    def memory_leased(**options: object) -> Store:
        from tests.pipeline_support import LeasingMemoryStore

        return LeasingMemoryStore(**options)

    return {"custom": custom, "memory-leased": memory_leased}

"""Every bundled store, built by name: the one table the tests and the benchmarks share.

A backend *name* says what to build:

- ``"memory"``, ``"sqlite"``, ``"redis"``, ``"redis-cluster"``, ``"postgres"``: the stores;
- ``"cached-<inner>"`` and ``"encrypted-<inner>"``: a ``CachedStore`` or ``EncryptedStore``
  over the store ``<inner>`` names (any name, wrappers too: ``"cached-encrypted-redis"``);
- whatever in-process stores the caller adds with ``extra`` (the tests add ``"custom"``, a
  store with only the four abstract methods, and ``"memory-leased"``).

:class:`StoreMaker` opens stores by name, each new, empty and isolated from every other (its
own SQLite file, Redis key prefix or PostgreSQL table), and removes what they stored when it
is closed. It knows no server itself: it asks ``server(what)`` for ``"redis_url"``,
``"redis_cluster_url"`` or ``"postgres_dsn"`` the first time a name needs one (the tests
answer with their server fixtures, which skip, or fail under ``CI=true``, when a server is
missing; the benchmarks with the servers they were given).

This module imports no driver until a name needs it, and is no part of the public API: it
lives in the package only so that ``tests/`` and ``benchmarks/`` can both use it without
importing each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from promptstate.stores.base import Store

__all__ = ["ENCRYPTION_KEY", "SERVER_BACKENDS", "StoreMaker", "servers_needed"]

#: The key ``"encrypted-<inner>"`` stores seal with (named ``"k1"``).
ENCRYPTION_KEY = bytes(range(32))

#: The backends that need a server, and the server each needs.
SERVER_BACKENDS: Mapping[str, str] = {
    "redis": "redis_url",
    "redis-cluster": "redis_cluster_url",
    "postgres": "postgres_dsn",
}

_WRAPPERS = ("cached-", "encrypted-")


def _innermost(name: str) -> str:
    while name.startswith(_WRAPPERS):
        name = name.split("-", 1)[1]
    return name


def servers_needed(name: str) -> str | None:
    """The server (``"redis_url"``, ``"redis_cluster_url"``, ``"postgres_dsn"``) the backend
    ``name`` needs, or None."""
    return SERVER_BACKENDS.get(_innermost(name))


class StoreMaker:
    """Opens stores by backend name and cleans up after all of them.

    Args:
        folder: Where SQLite files go (a temporary directory of the caller's).
        server: ``server(what)`` returns the URL or DSN of ``"redis_url"``,
            ``"redis_cluster_url"`` or ``"postgres_dsn"``; asked once per kind, when first
            needed.
        extra: More backend names, each a function of the store's options returning a new,
            empty in-process store.
        tag: The start of every Redis key prefix and PostgreSQL table name made here, so that
            what a run left behind is easy to find.
    """

    def __init__(
        self,
        folder: Path,
        server: Callable[[str], str],
        *,
        extra: Mapping[str, Callable[..., Store]] | None = None,
        tag: str = "pstest",
    ) -> None:
        self.folder = Path(folder)
        self._server = server
        self._servers: dict[str, str] = {}
        self._extra = dict(extra or {})
        self._tag = tag
        self._made: list[Store] = []
        # By what they clean (a prefix, a table), so that stores on the same data share one.
        self._cleanups: dict[str, Callable[[], Awaitable[None]]] = {}

    def server(self, what: str) -> str:
        """The URL or DSN of the server ``what`` (asked once)."""
        if what not in self._servers:
            self._servers[what] = self._server(what)
        return self._servers[what]

    async def open(self, name: str, **options: Any) -> Store:
        """A new, empty, isolated store of backend ``name``; ``options`` go to the store (to
        the inner store of a wrapper): ``ttl``, ``touch_on_read``, and ``prefix`` for Redis."""
        store = self._build(name, options)
        self._made.append(store)
        return store

    def opener(self, name: str, **options: Any) -> Callable[[], Store]:
        """A function that opens, at each call, a new store object of backend ``name`` over
        one and the same data (as another process would): the same SQLite file, Redis prefix
        or PostgreSQL table. The stores are closed, and the data removed, with the others."""
        server = servers_needed(name)
        if server is not None:
            self.server(server)  # now, not when the first store is opened
        token = uuid.uuid4().hex
        inner = _innermost(name)
        if inner == "sqlite":
            options.setdefault("path", self.folder / f"shared-{token[:8]}" / "state.db")
        elif inner in ("redis", "redis-cluster"):
            options.setdefault("prefix", f"{self._tag}:{token}:")
        elif inner == "postgres":
            options.setdefault("table_name", f"{self._tag}_{token[:16]}")

        def open_again() -> Store:
            store = self._build(name, dict(options))
            self._made.append(store)
            return store

        return open_again

    async def aclose(self) -> None:
        """Close every store opened here, then remove what they stored on the servers."""
        made, self._made = self._made, []
        cleanups, self._cleanups = self._cleanups, {}
        for store in reversed(made):
            await store.aclose()
        for cleanup in cleanups.values():
            await cleanup()

    def _build(self, name: str, options: dict[str, Any]) -> Store:
        if name in self._extra:
            return self._extra[name](**options)
        if name.startswith("cached-"):
            from promptstate.stores.cached import CachedStore

            inner_name = name.split("-", 1)[1]
            inner = self._build(inner_name, options)
            # Over a MemoryStore, a small cache, so that the suite runs through its evictions.
            if inner_name == "memory":
                return CachedStore(inner, max_entries=8, close_inner=True)
            return CachedStore(inner, close_inner=True)
        if name.startswith("encrypted-"):
            from promptstate.stores.encrypted import EncryptedStore

            inner = self._build(name.split("-", 1)[1], options)
            return EncryptedStore(inner, keys={"k1": ENCRYPTION_KEY}, active="k1", close_inner=True)
        token = uuid.uuid4().hex
        if name == "memory":
            from promptstate.stores.memory import MemoryStore

            return MemoryStore(**options)
        if name == "sqlite":
            from promptstate.stores.sqlite import SQLiteStore

            path = options.pop("path", self.folder / f"sqlite-{token[:8]}" / "state.db")
            return SQLiteStore(path, **options)
        if name in ("redis", "redis-cluster"):
            from promptstate.stores.redis import RedisStore

            url = self.server(SERVER_BACKENDS[name])
            prefix = str(options.pop("prefix", f"{self._tag}:{token}:"))
            self._cleanups[f"redis {url} {prefix}"] = lambda: wipe_redis_prefix(url, prefix)
            return RedisStore.from_url(url, prefix=prefix, **options)
        if name == "postgres":
            from promptstate.stores.postgres import PostgresStore

            dsn = self.server("postgres_dsn")
            table = str(options.pop("table_name", f"{self._tag}_{token[:16]}"))
            options.setdefault("min_size", 1)
            options.setdefault("max_size", 4)
            self._cleanups[f"postgres {dsn} {table}"] = lambda: drop_postgres_tables(dsn, table)
            return PostgresStore.from_dsn(dsn, table_name=table, **options)
        raise ValueError(f"no backend named {name!r}")


async def wipe_redis_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (on every primary of a ``redis+cluster://`` URL)."""
    from redis.asyncio import Redis, RedisCluster

    client: Any
    cluster = url.startswith(("redis+cluster://", "rediss+cluster://"))
    if cluster:
        client = RedisCluster.from_url(url.replace("+cluster", "", 1))
    else:
        client = Redis.from_url(url)
    match = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
    try:
        keys = [k async for k in client.scan_iter(match=match, count=1000)]
        # On a Cluster the keys are in different slots: one at a time.
        step = 1 if cluster else 1000
        for i in range(0, len(keys), step):
            await client.unlink(*keys[i : i + step])
    finally:
        await client.aclose()


async def drop_postgres_tables(dsn: str, table: str) -> None:
    """Drop the tables a ``PostgresStore`` with ``table_name=table`` created."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f'DROP TABLE IF EXISTS "{table}_messages", "{table}", '
            f'"{table}_migrations", "{table}_leases"'
        )
    finally:
        await conn.close()

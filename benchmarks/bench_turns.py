"""Turns through promptstate's stores and pipeline, and the raw floor under them, in one run.

Run: ``python -m benchmarks.bench_turns`` (``--quick``), or everything: ``python -m benchmarks``.

A turn is ``load(session_id, last=50)`` then ``append`` of a user and an assistant message
(:mod:`benchmarks.workload`). The contenders here:

- **promptstate** ``<Store>``: every store ``promptstate.open_store`` knows in this build
  (``memory://``, ``redis://``, ``postgresql://``, ``sqlite:///``), each under a prefix, schema
  or file of its own.
- **Pipeline + MockProvider**: the same turn as ``Pipeline.execute(session_id, "user", text)``
  with a ``MockProvider`` answering instantly, on each store: what the pipeline's load,
  truncation, session lock and save add to the bare store calls.
- **raw redis-py + hiredis**: ``LRANGE key -50 -1`` then ``RPUSH key u a`` on one list per
  session, MessagePack-encoded ``Message`` structs decoded with one reused msgspec decoder.
- **raw asyncpg**: ``SELECT data ... ORDER BY seq DESC LIMIT 50`` then one ``INSERT`` of two
  rows (``unnest``) on a ``(session_id, seq, data bytea)`` table with primary key
  ``(session_id, seq)``, the same encoding.

The raw floors do the least a hand-written store could do: no session header, no version, no
token counts, no TTL, no validation of keys. Pools: 64 Redis connections (RedisStore's
default), 10 PostgreSQL connections (PostgresStore's default ``max_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from benchmarks import _servers
from benchmarks.workload import (
    WINDOW,
    Contender,
    Env,
    Skip,
    assistant_text,
    history_messages,
    turn_messages,
    user_text,
)
from promptstate import Message

_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(Message)

BACKENDS = ("memory", "redis", "postgres", "sqlite")


class StoreTurn(Contender):
    """A promptstate store opened with ``open_store``: ``load(last=50)`` + ``append``."""

    kind = "promptstate"

    def __init__(self, env: Env, backend: str) -> None:
        self.env = env
        self.backend = backend
        self.name = f"promptstate ({backend})"
        self.store: Any = None
        self.prefix = ""
        self.schema = ""
        self.path = ""

    def _url(self) -> tuple[str, dict[str, Any]]:
        if self.backend == "memory":
            return "memory://", {}
        if self.backend == "redis":
            self.prefix = self.env.redis_prefix("ps")
            return self.env.need_redis(), {"prefix": self.prefix}
        if self.backend == "postgres":
            self.schema = self.env.pg_schema("ps")
            return self.env.need_postgres(), {"table_name": f"{self.schema}.sessions"}
        if self.backend == "sqlite":
            self.path = str(Path(self.env.tmpdir) / f"{self.env.unique('ps')}.db")
            return f"sqlite:///{self.path}", {}
        raise ValueError(self.backend)

    async def open(self) -> None:
        from promptstate import open_store
        from promptstate.exceptions import PromptStateError, ValidationError

        url, options = self._url()
        try:
            store = open_store(url, **options)
        except ValidationError as exc:
            raise Skip(f"this build has no {self.backend} store ({exc})") from exc
        except ImportError as exc:
            raise Skip(str(exc)) from exc
        if self.schema:
            await _servers.create_schema(url, self.schema)
        try:
            await store.__aenter__()
        except PromptStateError as exc:
            raise Skip(f"{type(store).__name__} cannot open: {exc}") from exc
        self.store = store
        self.name = f"promptstate {type(store).__name__}"

    async def populate(self, session_id: str, history: int) -> None:
        messages = history_messages(history)
        for i in range(0, history, 5000):
            await self.store.append(session_id, messages[i : i + 5000])

    async def turn(self, session_id: str, i: int) -> None:
        window = await self.store.load(session_id, last=WINDOW)  # kept until the turn ends
        await self.store.append(session_id, turn_messages(i))
        del window

    async def reset(self) -> None:
        await self.store.delete_by_prefix("")

    async def footprint(self) -> int | None:
        if self.backend == "redis":
            return (await _servers.redis_bytes(self.env.need_redis(), self.prefix))[0]
        if self.backend == "postgres":
            return (await _servers.pg_bytes(self.env.need_postgres(), self.schema))[0]
        if self.backend == "sqlite":
            return _file_bytes(self.path)
        return None

    async def aclose(self) -> None:
        if self.store is not None:
            await self.store.aclose()


def _file_bytes(path: str) -> int:
    """A SQLite database's size: its pages in use as of the last commit (the WAL's included,
    not the WAL file's size, which depends on when it was last checkpointed)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(size * (pages - free))
    finally:
        conn.close()


def pipeline_budget() -> int:
    """A TokenBudget that holds about the newest ``WINDOW`` messages plus the new one."""
    from promptstate import HeuristicTokenCounter

    counter = HeuristicTokenCounter()
    return sum(counter.count(m) for m in history_messages(WINDOW + 1))


class PipelineTurn(StoreTurn):
    """``Pipeline.execute(session_id, "user", text)`` with a ``MockProvider``, on a store."""

    kind = "pipeline"

    def __init__(self, env: Env, backend: str) -> None:
        super().__init__(env, backend)
        self.name = f"Pipeline ({backend})"
        self.pipe: Any = None
        self.seen = 0

    async def open(self) -> None:
        try:
            from promptstate import Pipeline
            from promptstate.providers import MockProvider  # type: ignore[attr-defined]
        except ImportError as exc:
            raise Skip(f"this build has no Pipeline/MockProvider ({exc})") from exc
        await super().open()

        def answer(messages: list[Message]) -> str:
            self.seen = len(messages)
            return assistant_text(len(messages))

        self.pipe = Pipeline(MockProvider(answer), store=self.store, max_tokens=pipeline_budget())
        await self.pipe.__aenter__()
        self.name = f"Pipeline + MockProvider on {type(self.store).__name__}"

    async def turn(self, session_id: str, i: int) -> None:
        await self.pipe.execute(session_id, "user", user_text(i))

    @property
    def note(self) -> str:  # type: ignore[override]
        return f"the model saw {self.seen} messages" if self.seen else ""

    async def aclose(self) -> None:
        if self.pipe is not None:
            await self.pipe.aclose()
        await super().aclose()


class RawRedis(Contender):
    """redis-py with hiredis: ``LRANGE key -50 -1`` then ``RPUSH`` of two."""

    name = "raw redis-py + hiredis"
    kind = "raw"
    backend = "redis"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.client: Any = None
        self.prefix = ""

    async def open(self) -> None:
        url = self.env.need_redis()
        import redis.asyncio as aioredis

        self.prefix = self.env.redis_prefix("raw")
        # a blocking pool of 64, as RedisStore has: tasks beyond 64 wait for a connection
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=None)
        self.client = aioredis.Redis.from_pool(pool)
        await self.client.ping()

    async def populate(self, session_id: str, history: int) -> None:
        blobs = [_ENC.encode(m) for m in history_messages(history)]
        for i in range(0, len(blobs), 1000):
            await self.client.rpush(self.prefix + session_id, *blobs[i : i + 1000])

    async def turn(self, session_id: str, i: int) -> None:
        key = self.prefix + session_id
        raw = await self.client.lrange(key, -WINDOW, -1)
        window = [_DEC.decode(b) for b in raw]  # kept until the turn ends
        user, assistant = turn_messages(i)
        await self.client.rpush(key, _ENC.encode(user), _ENC.encode(assistant))
        del window

    async def reset(self) -> None:
        await _servers.unlink_prefix(self.env.need_redis(), self.prefix)

    async def footprint(self) -> int | None:
        return (await _servers.redis_bytes(self.env.need_redis(), self.prefix))[0]

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


class RawPostgres(Contender):
    """asyncpg: ``SELECT ... ORDER BY seq DESC LIMIT 50`` then an ``INSERT`` of two rows."""

    name = "raw asyncpg"
    kind = "raw"
    backend = "postgres"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.pool: Any = None
        self.schema = ""

    async def open(self) -> None:
        dsn = self.env.need_postgres()
        import asyncpg

        self.schema = self.env.pg_schema("raw")
        await _servers.create_schema(dsn, self.schema)
        table = f'"{self.schema}".messages'
        self.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        await self.pool.execute(
            f"CREATE TABLE {table} (session_id text NOT NULL, "
            "seq bigint GENERATED ALWAYS AS IDENTITY, data bytea NOT NULL, "
            "PRIMARY KEY (session_id, seq))"
        )
        self._select = f"SELECT data FROM {table} WHERE session_id = $1 ORDER BY seq DESC LIMIT $2"
        self._insert = f"INSERT INTO {table} (session_id, data) SELECT $1, unnest($2::bytea[])"
        self._table = table

    async def populate(self, session_id: str, history: int) -> None:
        blobs = [_ENC.encode(m) for m in history_messages(history)]
        for i in range(0, len(blobs), 5000):
            await self.pool.execute(self._insert, session_id, blobs[i : i + 5000])

    async def turn(self, session_id: str, i: int) -> None:
        rows = await self.pool.fetch(self._select, session_id, WINDOW)
        window = [_DEC.decode(r[0]) for r in reversed(rows)]  # kept until the turn ends
        user, assistant = turn_messages(i)
        await self.pool.execute(
            self._insert, session_id, [_ENC.encode(user), _ENC.encode(assistant)]
        )
        del window

    async def reset(self) -> None:
        await self.pool.execute(f"TRUNCATE {self._table}")

    async def footprint(self) -> int | None:
        return (await _servers.pg_bytes(self.env.need_postgres(), self.schema))[0]

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()


def contenders(env: Env, scenarios: set[str], backends: set[str]) -> list[Contender]:
    """The contenders of the ``turns``, ``pipeline`` and ``raw`` scenarios, by backend."""
    found: list[Contender] = []
    for backend in BACKENDS:
        if backend not in backends:
            continue
        if "raw" in scenarios and backend == "redis":
            found.append(RawRedis(env))
        if "raw" in scenarios and backend == "postgres":
            found.append(RawPostgres(env))
        if "turns" in scenarios:
            found.append(StoreTurn(env, backend))
        if "pipeline" in scenarios:
            found.append(PipelineTurn(env, backend))
    return found


if __name__ == "__main__":
    from benchmarks.runner import main

    main(default_only="turns,pipeline,raw")

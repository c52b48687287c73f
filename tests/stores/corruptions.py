"""Ways to damage a stored session beneath each bundled store, for the conformance suite's
corruption test: every field each backend reads back, given a wrong type or an impossible
value, the way another program, an old release or a damaged disk could."""

from __future__ import annotations

import sqlite3

import anyio
from msgspec.structs import replace

from promptstate.serialization import pack
from promptstate.stores.base import Store
from promptstate.stores.memory import MemoryStore
from promptstate.stores.postgres import PostgresStore
from promptstate.stores.redis import RedisStore
from promptstate.stores.sqlite import SQLiteStore
from promptstate.testing import Corruption

#: MessagePack arrays nested 100,000 deep, then an empty map.
DEEP = b"\x91" * 100_000 + b"\x80"

#: Message blobs every backend must refuse.
BAD_MESSAGES: dict[str, object] = {
    "not MessagePack": b"\xc1",
    "with an unknown role": pack({"role": "bogus", "content": "x"}),
    "with negative tokens": pack({"role": "user", "tokens": -1}),
    "nested 100,000 deep": b"\x82\xa4role\xa4user\xa8metadata\x81\xa1d" + DEEP,
    "as a map of the wrong shape": pack({"content": 5}),
}

#: Metadata blobs every backend must refuse.
BAD_METADATA: dict[str, object] = {
    "not a map": pack([1, 2]),
    "with int keys": pack({1: 2}),
    "not MessagePack": b"\xc1",
    "nested 100,000 deep": DEEP,
}


def _sqlite_sql(store: Store, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
    assert isinstance(store, SQLiteStore)
    conn = sqlite3.connect(store.path)
    try:
        with conn:
            return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def sqlite_corruptions() -> dict[str, Corruption]:
    """Every column SQLiteStore reads back, set to a wrong storage type or an impossible value."""

    def column(name: str, value: object, *reads: str) -> Corruption:
        sql = f"UPDATE promptstate_sessions SET {name} = ? WHERE key = ?"
        return Corruption(
            lambda store, key: anyio.to_thread.run_sync(_sqlite_sql, store, sql, (value, key)),
            snapshot,
            reads=("list_sessions", *reads),
        )

    def message(value: object) -> Corruption:
        sql = "UPDATE promptstate_messages SET data = ? WHERE session_key = ? AND seq = 1"
        return Corruption(
            lambda store, key: anyio.to_thread.run_sync(_sqlite_sql, store, sql, (value, key)),
            snapshot,
            messages=True,
        )

    async def snapshot(store: Store, key: str) -> object:
        sessions = "SELECT * FROM promptstate_sessions WHERE key = ?"
        messages = "SELECT * FROM promptstate_messages WHERE session_key = ? ORDER BY seq"
        return (
            await anyio.to_thread.run_sync(_sqlite_sql, store, sessions, (key,)),
            await anyio.to_thread.run_sync(_sqlite_sql, store, messages, (key,)),
        )

    return {
        "version as TEXT": column("version", "x"),
        "negative version": column("version", -1),
        "zero version": column("version", 0),
        "token_count as REAL": column("token_count", 1.5),
        "negative token_count": column("token_count", -4),
        "total_cost as TEXT": column("total_cost", "x"),
        "negative total_cost": column("total_cost", -1.0),
        "user_id as BLOB": column("user_id", b"\xff"),
        "metadata as TEXT": column("metadata", "{}", "get_metadata"),
        "metadata as INTEGER": column("metadata", 7, "get_metadata"),
        "metadata as REAL": column("metadata", 0.5, "get_metadata"),
        **{
            f"metadata {name}": column("metadata", value, "get_metadata")
            for name, value in BAD_METADATA.items()
        },
        "created_at as TEXT": column("created_at", "yesterday"),
        "negative created_at": column("created_at", -1),
        "updated_at past year 9999": column("updated_at", 2**62),
        # (a listing reads the count, not the messages: it cannot tell a count that is too high)
        "message_count too high": replace(column("message_count", 3), reads=()),
        "negative message_count": column("message_count", -1, "count"),
        "message_count as TEXT": column("message_count", "two", "count"),
        "message as TEXT": message("hello"),
        "message as INTEGER": message(1),
        "message as REAL": message(2.5),
        **{f"message {name}": message(value) for name, value in BAD_MESSAGES.items()},
    }


# -- Redis and Redis Cluster ------------------------------------------------------------------


def redis_corruptions() -> dict[str, Corruption]:
    """Every field of the session's header hash, and a message of its list."""

    def keys(store: Store, key: str) -> tuple[bytes, bytes]:
        assert isinstance(store, RedisStore)
        return store._keys(key)

    def field(name: str, value: bytes | None) -> Corruption:
        async def damage(store: Store, key: str) -> None:
            assert isinstance(store, RedisStore)
            header = keys(store, key)[0]
            if value is None:
                await store.client.hdel(header, name)  # type: ignore[misc]
            else:
                await store.client.hset(header, name, value)  # type: ignore[misc]

        return Corruption(damage, snapshot)

    def message(value: bytes) -> Corruption:
        async def damage(store: Store, key: str) -> None:
            assert isinstance(store, RedisStore)
            await store.client.lset(keys(store, key)[1], 1, value)  # type: ignore[misc]

        return Corruption(damage, snapshot, messages=True)

    async def snapshot(store: Store, key: str) -> object:
        assert isinstance(store, RedisStore)
        header, messages = keys(store, key)
        return (
            await store.client.hgetall(header),  # type: ignore[misc]
            await store.client.lrange(messages, 0, -1),  # type: ignore[misc]
        )

    bad: dict[str, Corruption] = {}
    for name, what in (("v", "version"), ("t", "token_count"), ("ca", "created_at")):
        bad[f"{what} not a number"] = field(name, b"x")
        bad[f"negative {what}"] = field(name, b"-1")
    bad |= {
        "version missing": field("v", None),
        "created_at missing": field("ca", None),
        "zero version": field("v", b"0"),
        "version a fraction": field("v", b"1.5"),
        "total_cost not a number": field("c", b"much"),
        "negative total_cost": field("c", b"-0.5"),
        "total_cost NaN": field("c", b"nan"),
        "total_cost infinite": field("c", b"inf"),
        "updated_at past year 9999": field("ua", str(2**62).encode()),
        "user_id not UTF-8": field("u", b"\xff\xfe"),
        **{f"metadata {name}": field("d", value) for name, value in BAD_METADATA.items()},  # type: ignore[misc]
        **{f"message {name}": message(value) for name, value in BAD_MESSAGES.items()},  # type: ignore[misc]
    }
    return bad


# -- PostgreSQL -------------------------------------------------------------------------------


def postgres_corruptions() -> dict[str, Corruption]:
    """Every column PostgresStore reads back that its types do not already constrain."""

    async def execute(store: Store, sql: str, key: str, value: object) -> None:
        assert isinstance(store, PostgresStore)
        async with store._pool.acquire() as conn:
            await conn.execute(sql, key, value)

    def column(name: str, value: object, *reads: str) -> Corruption:
        async def damage(store: Store, key: str) -> None:
            assert isinstance(store, PostgresStore)
            table = store._names.sessions
            await execute(store, f"UPDATE {table} SET {name} = $2 WHERE key = $1", key, value)

        return Corruption(damage, snapshot, reads=("list_sessions", *reads))

    def message(value: bytes) -> Corruption:
        async def damage(store: Store, key: str) -> None:
            assert isinstance(store, PostgresStore)
            messages = store._names.messages
            sql = (
                f"UPDATE {messages} SET data = $2 WHERE session_key = $1 AND seq = "
                f"(SELECT max(seq) FROM {messages} WHERE session_key = $1)"
            )
            await execute(store, sql, key, value)

        return Corruption(damage, snapshot, messages=True)

    async def snapshot(store: Store, key: str) -> object:
        assert isinstance(store, PostgresStore)
        names = store._names
        async with store._pool.acquire() as conn:
            session = await conn.fetchrow(f"SELECT * FROM {names.sessions} WHERE key = $1", key)
            rows = await conn.fetch(
                f"SELECT seq, data FROM {names.messages} WHERE session_key = $1 ORDER BY seq", key
            )
        return repr((dict(session or {}), [tuple(row) for row in rows]))  # repr: NaN != NaN

    return {
        "negative version": column("version", -1),
        "zero version": column("version", 0),
        "negative token_count": column("token_count", -4),
        "negative total_cost": column("total_cost", -1.0),
        "total_cost NaN": column("total_cost", float("nan")),
        "total_cost infinite": column("total_cost", float("inf")),
        "negative message_count": column("message_count", -2, "count"),
        **{
            f"metadata {name}": column("metadata", value, "get_metadata")
            for name, value in BAD_METADATA.items()
        },
        **{f"message {name}": message(value) for name, value in BAD_MESSAGES.items()},  # type: ignore[arg-type]
    }


# -- MemoryStore ------------------------------------------------------------------------------


def memory_corruptions() -> dict[str, Corruption]:
    """MemoryStore keeps messages and metadata encoded: damage those bytes in place (what a
    caller poking at its internals could do; nothing else can reach them)."""

    def entry(store: Store, key: str) -> object:
        assert isinstance(store, MemoryStore)
        return store._data[key]

    def metadata(value: object) -> Corruption:
        async def damage(store: Store, key: str) -> None:
            entry(store, key).metadata = value  # type: ignore[attr-defined]

        return Corruption(damage, snapshot, reads=("get_metadata", "list_sessions"))

    def message(value: object) -> Corruption:
        async def damage(store: Store, key: str) -> None:
            entry(store, key).messages[1] = value  # type: ignore[attr-defined]

        return Corruption(damage, snapshot, messages=True)

    async def snapshot(store: Store, key: str) -> object:
        found = entry(store, key)
        return found.metadata, list(found.messages)  # type: ignore[attr-defined]

    return {
        **{f"metadata {name}": metadata(value) for name, value in BAD_METADATA.items()},
        **{f"message {name}": message(value) for name, value in BAD_MESSAGES.items()},
    }

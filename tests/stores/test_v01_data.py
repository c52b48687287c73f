"""Data promptstate 0.1 stored (schema 1, no ``Message.parts``) reads unchanged on every backend.

The bytes below are what 0.1 wrote for five messages: its MessagePack encoding of each message
(what every store keeps), the same sealed by 0.1's ``EncryptedStore`` under ``K1`` (with a fixed
nonce, so the bytes are fixed), and its JSON wire format (backup files, ``promptstate show
--json``). Each backend's test puts them where 0.1 put them, with the backend's own driver,
then reads them through the store, and writes a rich message after them.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from promptstate import (
    CachedStore,
    ImagePart,
    MemoryStore,
    Message,
    ReasoningPart,
    SQLiteStore,
    ToolCall,
    decode_state,
    encode_state,
)
from promptstate.stores.base import Store

pytestmark = pytest.mark.anyio

_T0 = datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)

#: The messages the stored bytes hold, as this release must read them.
EXPECTED = [
    Message("system", "Be brief.", timestamp=_T0, tokens=7),
    Message(
        "user",
        "Wie spät ist es in 東京?",
        name="alice",
        timestamp=_T0 + timedelta(seconds=1),
        metadata={"turn_id": "t-1", "n": [1, 2.5, None]},
        tokens=14,
    ),
    Message(
        "assistant",
        "",
        tool_calls=(ToolCall("call_1", "get_time", '{"city": "Tokyo"}'),),
        timestamp=_T0 + timedelta(seconds=2),
        tokens=20,
    ),
    Message(
        "tool",
        "14:05",
        tool_call_id="call_1",
        name="get_time",
        timestamp=_T0 + timedelta(seconds=3),
        tokens=6,
    ),
    Message(
        "assistant",
        "It is 14:05.",
        timestamp=_T0 + timedelta(seconds=4),
        metadata={"model": "m-1"},
        tokens=9,
    ),
]

#: promptstate 0.1's MessagePack of each message of EXPECTED.
V01_MESSAGES = [
    bytes.fromhex(h)
    for h in (
        "84a4726f6c65a673797374656da7636f6e74656e74a942652062726965662ea974696d657374616d70d7ff"
        "3b9aca00683c40c0a6746f6b656e7307",
        "86a4726f6c65a475736572a7636f6e74656e74bb576965207370c3a4742069737420657320696e20e69d"
        "b1e4baac3fa46e616d65a5616c696365a974696d657374616d70d7ff3b9aca00683c40c1a86d65746164"
        "61746182a77475726e5f6964a3742d31a16e9301cb4004000000000000c0a6746f6b656e730e",
        "84a4726f6c65a9617373697374616e74aa746f6f6c5f63616c6c739183a26964a663616c6c5f31a46e61"
        "6d65a86765745f74696d65a9617267756d656e7473b17b2263697479223a2022546f6b796f227da97469"
        "6d657374616d70d7ff3b9aca00683c40c2a6746f6b656e7314",
        "86a4726f6c65a4746f6f6ca7636f6e74656e74a531343a3035a46e616d65a86765745f74696d65ac746f"
        "6f6c5f63616c6c5f6964a663616c6c5f31a974696d657374616d70d7ff3b9aca00683c40c3a6746f6b65"
        "6e7306",
        "85a4726f6c65a9617373697374616e74a7636f6e74656e74ac49742069732031343a30352ea974696d65"
        "7374616d70d7ff3b9aca00683c40c4a86d6574616461746181a56d6f64656ca36d2d31a6746f6b656e73"
        "09",
    )
]

#: The same messages as promptstate 0.1's EncryptedStore sealed them under K1.
K1 = bytes(range(32))
V01_SEALED = [
    "psenc1:k1:AAAAAAAAAAAAAAAAihjHsdlJJc5x291QdYvy9rw3Mz1cKCJKoPzB6qCZc/86NovZWYbZa0MUjs5bBGkm"
    "lUeBQA0eLcA+xTgYsuSYGXdfvNakQNvCmw+6",
    "psenc1:k1:AAAAAAAAAAAAAAAAiBjHsdlJJ8h7zduSe0P/7bctIuh/6AUP8+5wJ7HfNCU6f4PPCpvWJtVewBF7Ylbq"
    "x2Ysg9wQKswz05ZSIw0rl50OU3pGLmt4GYm7+1bl4PQ4YVf9Qdwkw5PSYTGQALjUdCVjNo0xf6jSOWI0gyS6XSx9"
    "9B+HF3Tyoxz4yUqYtBlSFrE9Pyn4mc/2",
    "psenc1:k1:AAAAAAAAAAAAAAAAihjHsdlJKtx728BGbE3/7Xg3OTxE3gNO7PLAEkZdNDLoPIfQRq2Jol2iHJBpqQw6"
    "9nMoixzYJ9c3w1JDJBQ9VZJNXWPlqHLY86uHqH1dJ7sgvELwTc02NVXLZJQBZEt61zlyR+75mMZyHAhHl/7vn+EF"
    "VoRl577DmqjxV5E=",
    "psenc1:k1:AAAAAAAAAAAAAAAAiBjHsdlJJ8lnx8WSe0P/7bctIvYZtVoftTrd4qia9TErK7nIQ5/dqkesHpmerQgi"
    "xVgogt8SJ8k86Q6PPgkjgZobX2fhBq/ZSUPTrypkiz8pel38TttD1WKCuGEY+tJQ2ted9MIGWw==",
    "psenc1:k1:AAAAAAAAAAAAAAAAixjHsdlJKtx728BGbE3/7XUgOT1c5A5bLNfHo6yMfWd6ZdaJBFvMb16mAoGgoxmZ"
    "VjzbLHkZeuWUHlJDPgEqhZ0Ov6/8vjSHvyq+6ieCPPY2cFjqKfBoR6LmUktJikOluhRmZ38=",
]

#: promptstate 0.1's JSON wire format of the state holding EXPECTED.
V01_JSON = (
    b'{"schema_version":1,"conversation_id":"legacy","user_id":"u1","messages":[{"role":"system",'
    b'"content":"Be brief.","timestamp":"2025-06-01T12:00:00.250000Z","tokens":7},{"role":"user",'
    b'"content":"Wie sp\xc3\xa4t ist es in \xe6\x9d\xb1\xe4\xba\xac?","name":"alice","timestamp":'
    b'"2025-06-01T12:00:01.250000Z","metadata":{"turn_id":"t-1","n":[1,2.5,null]},"tokens":14},'
    b'{"role":"assistant","tool_calls":[{"id":"call_1","name":"get_time","arguments":"{\\"city'
    b'\\": \\"Tokyo\\"}"}],"timestamp":"2025-06-01T12:00:02.250000Z","tokens":20},{"role":"tool",'
    b'"content":"14:05","name":"get_time","tool_call_id":"call_1","timestamp":"2025-06-01T12:00:'
    b'03.250000Z","tokens":6},{"role":"assistant","content":"It is 14:05.","timestamp":"2025-06-'
    b'01T12:00:04.250000Z","metadata":{"model":"m-1"},"tokens":9}],"token_count":56,"total_cost"'
    b':0.5,"metadata":{"a":1},"created_at":"2025-06-01T12:00:00.250000Z","updated_at":"2025-06-'
    b'01T12:00:04.250000Z","version":3}'
)

RICH = Message(
    "assistant",
    "a new reply",
    parts=(
        ReasoningPart(text="thinking", signature="sig=", provider="anthropic"),
        ImagePart(data=bytes(range(256)), media_type="image/png"),
    ),
)

Inject = Callable[[Store, str], Awaitable[None]]

BACKENDS = [
    "memory",
    "sqlite",
    "cached",
    "encrypted",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis_cluster", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


def test_the_stored_bytes_are_what_this_release_writes_for_messages_without_parts() -> None:
    # Schema 2 added only a field with a default that is omitted when empty: a message without
    # parts is written exactly as 0.1 wrote it.
    encode = msgspec.msgpack.Encoder().encode
    assert [encode(m) for m in EXPECTED] == V01_MESSAGES


def test_v01_json_reads_unchanged_and_is_written_as_schema_2() -> None:
    state = decode_state(V01_JSON)
    assert state.messages == EXPECTED
    assert (state.conversation_id, state.user_id, state.token_count) == ("legacy", "u1", 56)
    assert (state.total_cost, state.metadata, state.version) == (0.5, {"a": 1}, 3)
    assert state.schema_version == 2
    again = encode_state(state)
    assert again.startswith(b'{"schema_version":2,')
    assert decode_state(again) == state


@pytest.fixture(params=BACKENDS)
async def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store of one backend holding session "legacy" exactly as 0.1 stored it."""
    backend: str = request.param
    cleanups: list[Callable[[], Awaitable[Any]]] = []
    store: Store
    placeholders = [Message(m.role, "placeholder") for m in EXPECTED]
    if backend in ("memory", "cached"):
        memory = MemoryStore()
        await memory.append("legacy", placeholders)
        memory._data["legacy"].messages = list(V01_MESSAGES)
        store = memory if backend == "memory" else CachedStore(memory, close_inner=True)
    elif backend == "encrypted":
        pytest.importorskip("cryptography")
        from promptstate import EncryptedStore

        inner = MemoryStore()
        await inner.save(
            "legacy",
            [
                Message(m.role, sealed, tool_call_id=m.tool_call_id, timestamp=m.timestamp)
                for m, sealed in zip(EXPECTED, V01_SEALED, strict=True)
            ],
        )
        store = EncryptedStore(inner, keys={"k1": K1}, active="k1", close_inner=True)
    elif backend == "sqlite":
        path = tmp_path / "v01.db"
        async with SQLiteStore(path) as writer:
            await writer.append("legacy", placeholders)
        conn = sqlite3.connect(path)
        with conn:
            seqs = [
                r[0]
                for r in conn.execute(
                    "SELECT seq FROM promptstate_messages WHERE session_key = ? ORDER BY seq",
                    ("legacy",),
                )
            ]
            assert len(seqs) == len(V01_MESSAGES)
            for seq, data in zip(seqs, V01_MESSAGES, strict=True):
                conn.execute(
                    "UPDATE promptstate_messages SET data = ? WHERE session_key = ? AND seq = ?",
                    (data, "legacy", seq),
                )
        conn.close()
        store = SQLiteStore(path)
    elif backend in ("redis", "redis_cluster"):
        from redis.asyncio import Redis, RedisCluster

        from promptstate.stores.redis import RedisStore

        prefix = f"pstest:{uuid.uuid4().hex}:"
        if backend == "redis":
            url = request.getfixturevalue("redis_url")
            raw: Any = Redis.from_url(url)
        else:
            url = request.getfixturevalue("redis_cluster_url")
            raw = RedisCluster.from_url(url.replace("redis+cluster", "redis"))
        redis_store = RedisStore.from_url(url, prefix=prefix)
        await redis_store.append("legacy", placeholders)
        messages_key = redis_store._keys("legacy")[1]
        for i, data in enumerate(V01_MESSAGES):
            await raw.lset(messages_key, i, data)
        store = redis_store

        async def wipe() -> None:
            keys = [k async for k in raw.scan_iter(match=prefix + "*", count=1000)]
            for key in keys:
                await raw.unlink(key)
            await raw.aclose()

        cleanups.append(wipe)
    else:
        import asyncpg

        from promptstate.stores.postgres import PostgresStore
        from tests.stores.test_postgres import drop_tables, unique_table

        dsn = request.getfixturevalue("postgres_dsn")
        table = unique_table()
        store = PostgresStore.from_dsn(dsn, table_name=table, min_size=1, max_size=2)
        await store.append("legacy", placeholders)
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                f'SELECT seq FROM "{table}_messages" WHERE session_key = $1 ORDER BY seq',
                "legacy",
            )
            assert len(rows) == len(V01_MESSAGES)
            for row, data in zip(rows, V01_MESSAGES, strict=True):
                await conn.execute(
                    f'UPDATE "{table}_messages" SET data = $1 WHERE session_key = $2 AND seq = $3',
                    data,
                    "legacy",
                    row[0],
                )
        finally:
            await conn.close()

        async def drop() -> None:
            await drop_tables(dsn, table)

        cleanups.append(drop)
    yield store
    await store.aclose()
    for cleanup in cleanups:
        await cleanup()


async def test_v01_messages_read_unchanged(legacy: Store) -> None:
    assert await legacy.load("legacy") == EXPECTED
    assert await legacy.load("legacy", last=2) == EXPECTED[-2:]
    state = await legacy.get("legacy")
    assert state.messages == EXPECTED
    assert all(m.parts == () and m.text == m.content for m in state.messages)
    assert await legacy.count("legacy") == 5


async def test_v01_sessions_take_rich_messages_after_the_old_ones(legacy: Store) -> None:
    assert await legacy.append("legacy", [RICH]) == 6
    got = await legacy.load("legacy")
    assert got[:5] == EXPECTED
    assert msgspec.structs.replace(got[5], tokens=None) == RICH
    await legacy.fork("legacy", "legacy-branch", at=5)
    assert await legacy.load("legacy-branch") == EXPECTED

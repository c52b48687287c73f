"""``Store.exists()``: whether the database is there, asked without creating it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from promptstate import MemoryStore, PostgresStore, SQLiteStore, State
from tests.servers import drop_postgres_tables

pytestmark = pytest.mark.anyio


async def test_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.db"
    store = SQLiteStore(path)
    assert await store.exists() is False
    assert not (tmp_path / "sub").exists()  # asking created nothing
    async with store:
        await store.set("a", State(conversation_id="a"))
        assert await store.exists() is True
    not_ours = tmp_path / "other.db"
    not_ours.write_bytes(b"not a database at all")
    assert await SQLiteStore(not_ours).exists() is False
    assert not_ours.read_bytes() == b"not a database at all"


async def test_postgres(postgres_dsn: str) -> None:
    table = f"exists_{uuid.uuid4().hex[:10]}"
    try:
        store = PostgresStore.from_dsn(postgres_dsn, table_name=table)
        try:
            assert await store.exists() is False
        finally:
            await store.aclose()
        store = PostgresStore.from_dsn(postgres_dsn, table_name=table)
        async with store:
            assert await store.exists() is True  # entering set it up
    finally:
        await drop_postgres_tables(postgres_dsn, table)


async def test_stores_with_nothing_to_create() -> None:
    assert await MemoryStore().exists() is True


async def test_wrappers_ask_their_inner_store(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from promptstate import CachedStore, EncryptedStore

    path = tmp_path / "w.db"
    inner = SQLiteStore(path)
    cached = CachedStore(inner)
    sealed = EncryptedStore(cached, keys={"k1": bytes(32)}, active="k1")
    assert await cached.exists() is False
    assert await sealed.exists() is False
    async with inner:
        await sealed.set("a", State(conversation_id="a"))
        assert await cached.exists() is True
        assert await sealed.exists() is True

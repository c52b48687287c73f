"""Fixtures for the framework adapter tests: one store per backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from promptstate import MemoryStore, PostgresStore, SQLiteStore, Store
from promptstate.stores.redis import RedisStore
from tests.servers import drop_postgres_tables


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, postgres_dsn: str
) -> AsyncIterator[Store]:
    """An empty store of each backend, under its own prefix or table, removed afterwards."""
    kind = request.param
    token = uuid.uuid4().hex[:10]
    table = f"adapt_{token}"
    made: Store
    if kind == "memory":
        made = MemoryStore()
    elif kind == "sqlite":
        made = SQLiteStore(tmp_path / "s.db")
    elif kind == "redis":
        made = RedisStore.from_url(redis_url, prefix=f"adapt{token}:")
    else:
        made = PostgresStore.from_dsn(postgres_dsn, table_name=table)
    try:
        async with made:
            yield made
            if kind == "redis":
                await made.delete_by_prefix("")
    finally:
        if kind == "postgres":
            await drop_postgres_tables(postgres_dsn, table)

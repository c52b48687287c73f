"""PostgresStore on a real PostgreSQL: the conformance suite plus what only it has."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from promptstate import PostgresStore
from promptstate.stores.base import Store
from promptstate.testing import StoreConformance, StoreFactory

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def unique_table() -> str:
    return f"ps_test_{uuid.uuid4().hex[:16]}"


async def drop_tables(dsn: str, table: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f'DROP TABLE IF EXISTS "{table}_messages", "{table}", "{table}_migrations"'
        )
    finally:
        await conn.close()


class TestPostgresStoreConformance(StoreConformance):
    ttl_seconds = 0.5

    @pytest.fixture
    async def store_factory(self, postgres_dsn: str) -> AsyncIterator[StoreFactory]:
        made: list[tuple[Store, str]] = []

        async def make(**options: object) -> Store:
            table = unique_table()
            store = PostgresStore.from_dsn(
                postgres_dsn,
                table_name=table,
                min_size=1,
                max_size=4,
                **options,  # type: ignore[arg-type]
            )
            made.append((store, table))
            return store

        yield make
        for store, table in made:
            await store.aclose()
            await drop_tables(postgres_dsn, table)

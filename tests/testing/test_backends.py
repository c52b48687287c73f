"""The backend name table (promptstate/testing/_backends.py): every name builds the store it
says, stores are isolated from each other, ``opener`` shares one data set, and closing the
maker removes everything they stored on the servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptstate import (
    CachedStore,
    EncryptedStore,
    LeasingStore,
    MemoryStore,
    Message,
    PostgresStore,
    SQLiteStore,
)
from promptstate.stores.redis import RedisStore
from promptstate.testing._backends import StoreMaker, servers_needed
from tests.backends import CONFORMANCE, LEASING, extra_stores, params

pytestmark = pytest.mark.anyio


def test_names_say_which_server_they_need() -> None:
    assert servers_needed("memory") is None
    assert servers_needed("sqlite") is None
    assert servers_needed("redis") == "redis_url"
    assert servers_needed("encrypted-redis-cluster") == "redis_cluster_url"
    assert servers_needed("cached-encrypted-postgres") == "postgres_dsn"
    assert servers_needed("custom") is None


async def test_unknown_names_are_refused(stores: StoreMaker) -> None:
    for name in ("", "mongo", "cached-", "encrypted-nothing"):
        with pytest.raises(ValueError, match="no backend named"):
            await stores.open(name)


@pytest.mark.parametrize("backend", params(*CONFORMANCE), indirect=True)
async def test_each_name_builds_its_store_and_the_leasing_list_is_right(
    backend: str, stores: StoreMaker
) -> None:
    store = await stores.open(backend)
    kinds = {
        "memory": MemoryStore,
        "sqlite": SQLiteStore,
        "redis": RedisStore,
        "redis-cluster": RedisStore,
        "postgres": PostgresStore,
    }
    if backend.startswith("cached-"):
        assert isinstance(store, CachedStore)
    elif backend.startswith("encrypted-"):
        assert isinstance(store, EncryptedStore)
    elif backend in kinds:
        assert isinstance(store, kinds[backend])
    assert isinstance(store, LeasingStore) == (backend in LEASING)


@pytest.mark.parametrize("backend", params("sqlite", "redis", "postgres"), indirect=True)
async def test_stores_are_isolated_and_an_opener_shares_one_data_set(
    backend: str, stores: StoreMaker
) -> None:
    one, two = await stores.open(backend), await stores.open(backend)
    await one.append("s", [Message("user", "one")])
    assert await two.load("s") == []
    opener = stores.opener(backend)
    first, second = opener(), opener()
    assert first is not second
    await first.append("s", [Message("user", "shared")])
    assert [m.content for m in await second.load("s")] == ["shared"]
    assert await one.load("s") != await second.load("s")


@pytest.mark.redis
async def test_closing_the_maker_removes_the_redis_keys(redis_url: str, tmp_path: Path) -> None:
    maker = StoreMaker(tmp_path, lambda what: redis_url)
    store = await maker.open("redis", ttl=600)
    prefix = store.prefix  # type: ignore[attr-defined]
    await store.append("a", [Message("user", "x")])
    await (await maker.open("encrypted-redis", prefix=prefix + "e:")).append("b", [])
    probe = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        assert [k async for k in probe.list_keys("")] == ["a"]
        await maker.aclose()
        assert store.closed
        assert [k async for k in probe.list_keys("")] == []
        from redis.asyncio import Redis

        raw = Redis.from_url(redis_url)
        try:
            assert [k async for k in raw.scan_iter(match=prefix + "*")] == []
        finally:
            await raw.aclose()
    finally:
        await probe.aclose()


@pytest.mark.postgres
async def test_closing_the_maker_drops_the_postgres_tables(
    postgres_dsn: str, tmp_path: Path
) -> None:
    import asyncpg

    maker = StoreMaker(tmp_path, lambda what: postgres_dsn, tag="psmaker")
    store = await maker.open("postgres")
    again = maker.opener("cached-postgres")
    await store.append("a", [Message("user", "x")])
    await again().append("b", [Message("user", "y")])
    tables = [store.table_name, again()._inner.table_name]  # type: ignore[attr-defined]

    async def present() -> list[str]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            rows = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_name = ANY($1)",
                [t for name in tables for t in (name, f"{name}_messages")],
            )
            return sorted(r[0] for r in rows)
        finally:
            await conn.close()

    assert len(await present()) == 4
    await maker.aclose()
    assert await present() == []


def test_the_extra_test_stores_are_in_process() -> None:
    assert set(extra_stores()) == {"custom", "memory-leased"}
    for name in extra_stores():
        assert servers_needed(name) is None

"""Refused credentials are ``StoreAuthError``, never ``StoreUnavailableError``, and never
retried (issue 12, point 5): a wrong password looked like an outage, so retry loops (the
pipeline's own save retry included) retried it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from promptstate import (
    Message,
    MockProvider,
    Pipeline,
    PostgresStore,
    State,
    StoreAuthError,
    StoreUnavailableError,
)
from promptstate.stores.redis import RedisStore
from tests.servers import RedisProcess, drop_postgres_tables

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("sweep_orphaned_sockets")]

# A user who may connect but not run scripts (every RedisStore write is one Lua script).
_LIMITED = ("--user", "limited", "on", ">right-pw", "~*", "+@all", "-eval", "-evalsha", "-fcall")


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[RedisProcess]:
    with RedisProcess(None, *_LIMITED) as server:
        yield server


async def test_redis_wrong_password(acl_redis: RedisProcess) -> None:
    store = RedisStore.from_url(f"redis://limited:wrong-pw-7@127.0.0.1:{acl_redis.port}/0")
    try:
        with pytest.raises(StoreAuthError, match="refused the credentials") as info:
            await store.load("x")
        assert not isinstance(info.value, StoreUnavailableError)
        assert "wrong-pw-7" not in str(info.value)
    finally:
        await store.aclose()


async def test_redis_no_permission_and_the_pipeline_does_not_retry(
    acl_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore.from_url(f"redis://limited:right-pw@127.0.0.1:{acl_redis.port}/0")
    try:
        with pytest.raises(StoreAuthError, match=r"NOPERM|no permissions"):
            await store.append("x", [Message("user", "hi")])
        caplog.set_level(logging.DEBUG, logger="promptstate")
        async with Pipeline(MockProvider(["ok"]), store=store) as pipe:
            with pytest.raises(StoreAuthError):
                await pipe.execute("x", "user", "hi")
        assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    finally:
        await store.aclose()


async def test_postgres_unknown_role(postgres_dsn: str) -> None:
    bad = postgres_dsn.replace("postgres@", f"nobody_{uuid.uuid4().hex[:8]}@", 1)
    if bad == postgres_dsn:
        pytest.skip("the test DSN names no user to replace")
    store = PostgresStore.from_dsn(bad, table_name="never_created")
    try:
        with pytest.raises(StoreAuthError, match="SQLSTATE 28"):
            await store.load("x")
    finally:
        await store.aclose()


async def test_postgres_no_permission_on_the_table(postgres_dsn: str) -> None:
    table = f"auth_{uuid.uuid4().hex[:10]}"
    role = f"ro_{uuid.uuid4().hex[:10]}"
    owner = PostgresStore.from_dsn(postgres_dsn, table_name=table)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        async with owner:
            await owner.set("x", State(conversation_id="x"))
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        limited = PostgresStore.from_dsn(
            postgres_dsn.replace("postgres@", f"{role}@", 1), table_name=table
        )
        try:
            with pytest.raises(StoreAuthError, match="SQLSTATE 42501"):
                await limited.get("x")
        finally:
            await limited.aclose()
    finally:
        await drop_postgres_tables(postgres_dsn, table)
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()

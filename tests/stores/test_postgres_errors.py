"""PostgresStore's one error boundary (``_Op``): pool opening, acquiring and statements all
come out as promptstate errors, the DSN's password never in them."""

from __future__ import annotations

import pytest

from promptstate import PostgresStore, StoreUnavailableError, ValidationError
from tests.servers import free_port

pytest.importorskip("asyncpg")
pytestmark = pytest.mark.anyio


async def test_an_unreachable_server_is_unavailable_while_opening_the_pool() -> None:
    dsn = f"postgresql://me:secretpw@127.0.0.1:{free_port()}/app"
    store = PostgresStore.from_dsn(dsn, connect_timeout=2)
    with pytest.raises(StoreUnavailableError, match="opening the connection pool") as info:
        await store.count("k")
    await store.aclose()
    assert isinstance(info.value.__cause__, OSError)
    assert "secretpw" not in str(info.value)


async def test_a_bad_connection_option_is_a_validation_error(postgres_dsn: str) -> None:
    dsn = postgres_dsn + ("&" if "?" in postgres_dsn else "?") + "sslmode=bogus"
    store = PostgresStore.from_dsn(dsn)
    with pytest.raises(ValidationError, match=r"DSN or a pool option is invalid.*sslmode"):
        await store.count("k")
    await store.aclose()


async def test_a_pool_that_stays_busy_is_unavailable(postgres_dsn: str) -> None:
    async with PostgresStore.from_dsn(
        postgres_dsn, min_size=1, max_size=1, acquire_timeout=0.2
    ) as store:
        await store.count("warm")
        async with store._conn("hold") as conn:  # the only connection
            assert conn is not None
            with pytest.raises(StoreUnavailableError, match=r"became free within 0.2 s \(count"):
                await store.count("k")

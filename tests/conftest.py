"""Shared fixtures: the anyio backend and the real servers tests run against."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server's URL: REDIS_URL, else 127.0.0.1:6379, else a throwaway server."""
    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL DSN: POSTGRES_DSN, else 127.0.0.1:5432/test, else a throwaway cluster."""
    with servers.postgres_server() as dsn:
        yield dsn

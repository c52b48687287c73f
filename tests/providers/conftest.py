"""Fixtures for the provider tests: the asyncio backend and a loopback HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.providers.loopback import LoopbackServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()

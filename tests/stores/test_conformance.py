"""The store conformance suite on every backend, by name (tests/backends.py: CONFORMANCE).

What only one backend has is tested in its own module (test_memory.py, test_redis.py, ...).
"""

from __future__ import annotations

import pytest

from promptstate.testing import Corruption, StoreConformance, StoreFactory
from tests import backends

pytestmark = pytest.mark.anyio


class TestStoreConformance(StoreConformance):
    @pytest.fixture(autouse=True)
    def _backend_ttl(self, backend: str) -> None:
        self.ttl_seconds = backends.spec(backend).ttl_seconds

    @pytest.fixture
    def store_factory(self, store_factory: StoreFactory) -> StoreFactory:
        return store_factory

    @pytest.fixture
    def corruptions(self, backend: str) -> dict[str, Corruption]:
        return backends.corruptions(backend)

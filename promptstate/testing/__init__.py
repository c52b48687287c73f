"""Test helpers for promptstate users, above all the store conformance suite.

Run the suite on your own store (this module needs pytest and anyio's pytest plugin, which
ships with anyio)::

    import pytest
    from promptstate.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        async def store_factory(self):
            made = []

            async def make(**options):
                store = MyStore(namespace=unique_name(), **options)
                made.append(store)
                return store

            yield make
            for store in made:
                await cleanup(store)

Each store the factory makes must be empty and isolated from the others.
"""

from promptstate.testing.conformance import Corruption, StoreConformance, StoreFactory

__all__ = ["Corruption", "StoreConformance", "StoreFactory"]

"""Stores: where conversation state lives."""

from promptstate.stores.base import (
    MAX_KEY_LENGTH,
    LeasingStore,
    Store,
    validate_key,
    validate_prefix,
)
from promptstate.stores.cached import CachedStore
from promptstate.stores.memory import MemoryStore
from promptstate.stores.postgres import PostgresStore
from promptstate.stores.sqlite import SQLiteStore
from promptstate.stores.url import open_store

__all__ = [
    "CachedStore",
    "LeasingStore",
    "MAX_KEY_LENGTH",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "open_store",
    "validate_key",
    "validate_prefix",
]

"""A custom store that implements only the four abstract methods (``_get``, ``_set``,
``_delete``, ``_list_keys``) passes the whole suite, and the suite catches the classic bugs
(glob prefixes, lost concurrent updates)."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from promptstate import (
    ConflictError,
    Message,
    NotFoundError,
    State,
    ValidationError,
    decode_state,
    encode_state,
)
from promptstate.stores.base import Store
from promptstate.testing import StoreConformance

pytestmark = pytest.mark.anyio


class DictStore(Store):
    """The smallest correct store: JSON bytes in a dict, using the base class for the rest."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.data: dict[str, tuple[bytes, float | None]] = {}

    def _live(self, key: str) -> bytes | None:
        item = self.data.get(key)
        if item is None or (item[1] is not None and item[1] <= time.monotonic()):
            return None
        if self._touch_on_read and self._ttl is not None:
            self.data[key] = (item[0], time.monotonic() + self._ttl)
        return item[0]

    async def _get(self, key: str) -> State:
        await anyio.lowlevel.checkpoint()  # a real backend awaits I/O here
        raw = self._live(key)
        if raw is None:
            raise NotFoundError(f"no state under key {key!r}")
        return decode_state(raw, key=key)

    async def _set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        await anyio.lowlevel.checkpoint()
        raw = self._live(key)
        current = 0 if raw is None else decode_state(raw).version
        if expected_version is not None and expected_version != current:
            raise ConflictError(f"version conflict on key {key!r}")
        stored = self._prepare(key, state, current + 1)
        expires = None if self._ttl is None else time.monotonic() + self._ttl
        self.data[key] = (encode_state(stored), expires)
        return stored

    async def _delete(self, key: str) -> bool:
        await anyio.lowlevel.checkpoint()
        live = self._live(key) is not None
        self.data.pop(key, None)
        return live

    async def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        for key in list(self.data):
            if key.startswith(prefix) and self._live(key) is not None:
                yield key


class GlobStore(DictStore):
    """Bug: treats the prefix as a glob pattern, as SCAN MATCH and LIKE do unescaped."""

    async def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        for key in list(self.data):
            if fnmatch.fnmatchcase(key, prefix + "*"):
                yield key


class LostUpdateStore(DictStore):
    """Bug: append reads, waits, then writes without a version check."""

    async def _append(self, session_id: str, messages: list[Message]) -> int:
        state, _ = await self._get_or_new(session_id)
        await anyio.lowlevel.checkpoint()
        state.messages.extend(messages)
        return len((await self._set(session_id, state)).messages)


async def test_suite_catches_glob_prefixes() -> None:
    with pytest.raises(AssertionError, match="prefix"):
        await StoreConformance().test_list_by_prefix_is_literal(GlobStore())


async def test_suite_catches_lost_updates() -> None:
    with pytest.raises(AssertionError):
        await StoreConformance().test_concurrent_appends_lose_nothing(LostUpdateStore())


async def test_validation_applies_to_custom_overrides() -> None:
    from promptstate import ClosedError, InvalidKeyError, ValidationError

    store = LostUpdateStore()
    with pytest.raises(InvalidKeyError):
        await store.append("", [Message("user", "x")])
    with pytest.raises(ValidationError):
        await store.append("k", ["not a message"])  # type: ignore[list-item]
    assert store.data == {}
    await store.aclose()
    with pytest.raises(ClosedError):
        await store.append("k", [Message("user", "x")])
    assert store.data == {}


class OldStyleStore(Store):
    """A store written for 0.1, the form the API reference documents: it implements the public
    names ``get``, ``set``, ``delete`` and ``list_keys``, not the protected ones."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, bytes] = {}
        self.seen: list[str] = []

    async def get(self, key: str) -> State:
        self.seen.append(key)
        if key not in self.data:
            raise NotFoundError(f"no state under key {key!r}")
        return decode_state(self.data[key], key=key)

    async def set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        self.seen.append(key)
        current = decode_state(self.data[key]).version if key in self.data else 0
        if expected_version is not None and expected_version != current:
            raise ConflictError(f"version conflict on key {key!r}")
        stored = self._prepare(key, state, current + 1)
        self.data[key] = encode_state(stored)
        return stored

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def list_keys(self, prefix: str) -> AsyncIterator[str]:
        for key in list(self.data):
            if key.startswith(prefix):
                yield key


async def test_a_store_written_for_0_1_still_works_and_its_other_methods_check() -> None:
    """The 0.1 form (public names) is what API.md documents: it keeps working. Every method
    it does not implement comes from the base class, which checks before reaching its code."""
    from promptstate import InvalidKeyError, MockProvider, Pipeline

    store = OldStyleStore()
    assert await store.append("k", [Message("user", "hi")]) == 1
    assert [m.content for m in await store.load("k")] == ["hi"]
    assert await store.count("k") == 1
    assert [key async for key in store.list_keys("")] == ["k"]
    async with Pipeline(MockProvider(["hello"]), store=store) as pipe:
        result = await pipe.execute("k", "user", "again")
    assert result.response.content == "hello"
    assert [m.content for m in await store.load("k")] == ["hi", "again", "hello"]
    seen = list(store.seen)
    for bad in ("", "a\x00b", "x" * 600):
        with pytest.raises(InvalidKeyError):
            await store.append(bad, [Message("user", "x")])
        with pytest.raises(InvalidKeyError):
            await store.load(bad)
    with pytest.raises(ValidationError):
        await store.append("k", ["not a message"])  # type: ignore[list-item]
    assert store.seen == seen, "no bad input reached the store's own code"
    assert await store.delete("k")

"""``CachedStore``: a read-through LRU cache in front of any store."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import msgspec

from promptstate.exceptions import ValidationError
from promptstate.stores._forwarding import ForwardedLeases
from promptstate.stores.base import LeasingStore, SessionQuery, Store, normalize_ttl
from promptstate.types import Message, SessionInfo, State

__all__ = ["CachedStore"]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(State)

#: Optional methods passed straight through to the inner store when it has them. (Leases are
#: declared on a subclass instead, see :mod:`promptstate.stores._forwarding`.)
_PASS_THROUGH = frozenset({"setup", "purge_expired"})


_T = TypeVar("_T")


class _Flight:
    """One call on the inner store in progress; ``stale`` once a write of its key began."""

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


class CachedStore(Store):
    """Wrap ``inner`` with a read-through LRU cache of whole states.

    ``get``, ``get_many`` and ``load`` are answered from the cache when it holds the session;
    every write made through this object goes to ``inner`` and drops (or refreshes) the
    session's cache entry, so this process always reads its own writes. Writes made by other
    processes or other store objects are not seen until the entry ages out: bound that with
    ``ttl``. Compare-and-set (``expected_version``), ``append_turn`` and leases always go to
    ``inner``, so they stay exact.

    Args:
        inner: The store to cache. Borrowed: :meth:`aclose` leaves it open unless
            ``close_inner=True``.
        max_entries: How many sessions to keep cached (least recently used dropped first).
        ttl: How long a cached entry may be served (``timedelta`` or seconds); ``None`` keeps
            it until evicted or written through this object. This is the cache's lifetime, not
            the sessions': those follow ``inner``'s own TTL, and a cached entry is never served
            past the moment ``inner`` would expire its session.
        close_inner: Also close ``inner`` in :meth:`aclose` (hand it over to the cache).

    An inner store with ``touch_on_read=True`` is read through on every call (its reads must
    reach it to slide the TTL), so caching it saves nothing.
    """

    def __new__(cls, inner: Store, **options: Any) -> CachedStore:
        # Over a store with leases, a subclass that declares them (so the pipeline sees them).
        if cls is CachedStore and isinstance(inner, LeasingStore):
            cls = _LeasingCachedStore
        return super().__new__(cls)

    def __init__(
        self,
        inner: Store,
        *,
        max_entries: int = 1024,
        ttl: timedelta | float | None = None,
        close_inner: bool = False,
    ) -> None:
        if not isinstance(inner, Store):
            raise ValidationError(f"CachedStore wraps a Store, got {type(inner).__name__}")
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1:
            raise ValidationError(f"max_entries must be an int >= 1, got {max_entries!r}")
        super().__init__(token_counter=inner.token_counter)
        self._inner = inner
        # Bound to one event loop exactly when the inner store is (the wrapper adds nothing).
        self.loop_bound = inner.loop_bound
        self.db_system = inner.db_system
        self._max_entries = max_entries
        self._entry_ttl = normalize_ttl(ttl)
        self._close_inner = close_inner
        # key -> (encoded state, monotonic deadline or None)
        self._cache: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        # Calls on the inner store in progress, by key. A write marks every other one on its
        # key stale (when it starts and when it ends), and a stale call caches nothing: a read
        # that fetched a state before a write must not put it back after the write dropped it.
        self._flights: dict[str, list[_Flight]] = {}
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedStore({self._inner!r}, max_entries={self._max_entries})"

    def __getattr__(self, name: str) -> Any:
        if name in _PASS_THROUGH:
            return getattr(self._inner, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    async def exists(self) -> bool:
        """Whether the inner store's database is there (see :meth:`Store.exists`)."""
        return await self._inner.exists()

    @property
    def inner(self) -> Store:
        """The wrapped store."""
        return self._inner

    @property
    def ttl(self) -> float | None:
        """The sessions' TTL: the inner store's."""
        return self._inner.ttl

    # -- the cache --------------------------------------------------------------------------

    def _cached(self, key: str) -> State | None:
        if self._inner._touch_on_read:
            return None
        item = self._cache.get(key)
        if item is None:
            self.misses += 1
            return None
        data, deadline = item
        if deadline is not None and deadline <= time.monotonic():
            del self._cache[key]
            self.misses += 1
            return None
        self._cache.move_to_end(key)
        self.hits += 1
        return _decoder.decode(data)

    def _remember(self, state: State) -> None:
        deadlines = []
        if self._entry_ttl is not None:
            deadlines.append(time.monotonic() + self._entry_ttl)
        if self._inner.ttl is not None:
            # Never serve past the session's own expiry: its last write plus the TTL.
            left = state.updated_at.timestamp() + self._inner.ttl - time.time()
            deadlines.append(time.monotonic() + left)
        key = state.conversation_id
        self._cache[key] = (_encoder.encode(state), min(deadlines) if deadlines else None)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def _forget(self, key: str) -> None:
        self._cache.pop(key, None)

    def _start(self, key: str, *, write: bool) -> _Flight:
        flight = _Flight()
        flights = self._flights.setdefault(key, [])
        if write:
            self._forget(key)
            for other in flights:
                other.stale = True
        flights.append(flight)
        return flight

    def _end(self, key: str, flight: _Flight, *, write: bool) -> None:
        flights = self._flights[key]
        flights.remove(flight)
        if not flights:
            del self._flights[key]
        elif write:  # a call that began during this write may have read what was before it
            for other in flights:
                other.stale = True

    def _remember_unless_stale(self, state: State, flight: _Flight) -> None:
        if not flight.stale:
            self._remember(state)

    async def _write(self, key: str, call: Awaitable[_T]) -> _T:
        """Run a write of ``key`` on the inner store; the entry is dropped."""
        flight = self._start(key, write=True)
        try:
            return await call
        finally:
            self._forget(key)
            self._end(key, flight, write=True)

    def clear(self) -> None:
        """Drop every cached entry (the inner store is untouched)."""
        self._cache.clear()

    # -- reads --------------------------------------------------------------------------------

    async def _get(self, key: str) -> State:
        state = self._cached(key)
        if state is not None:
            return state
        flight = self._start(key, write=False)
        try:
            state = await self._inner.get(key)
            self._remember_unless_stale(state, flight)
        finally:
            self._end(key, flight, write=False)
        return _decoder.decode(_encoder.encode(state))

    async def _load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        state = self._cached(session_id)
        if state is None:
            # A window read is not worth caching; the inner store serves it cheaply.
            return await self._inner.load(session_id, last=last)
        if last is None:
            return state.messages
        return state.messages[max(len(state.messages) - last, 0) :] if last else []

    async def _get_many(self, keys: Iterable[str]) -> list[State | None]:
        keys = list(keys)
        found: list[State | None] = [self._cached(k) for k in keys]
        missing = sorted({k for k, s in zip(keys, found, strict=True) if s is None})
        if missing:
            flights = [(key, self._start(key, write=False)) for key in missing]
            try:
                fetched = dict(zip(missing, await self._inner.get_many(missing), strict=True))
                for key, flight in flights:
                    state = fetched[key]
                    if state is not None:
                        self._remember_unless_stale(state, flight)
            finally:
                for key, flight in flights:
                    self._end(key, flight, write=False)
            for i, key in enumerate(keys):
                state = fetched.get(key)
                if found[i] is None and state is not None:
                    found[i] = _decoder.decode(_encoder.encode(state))
        return found

    def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        return self._inner.list_keys(prefix)

    async def _count(self, key: str) -> int:
        state = self._cached(key)
        if state is None:
            return await self._inner.count(key)
        return len(state.messages)

    async def _get_metadata(self, key: str) -> dict[str, Any]:
        state = self._cached(key)
        if state is None:
            return await self._inner.get_metadata(key)
        return state.metadata

    async def _list_sessions(self, query: SessionQuery) -> list[SessionInfo]:
        self._inner._check_open()
        return await self._inner._list_sessions(query)

    def _list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        return self._inner.list_by_prefix(prefix)

    # -- writes: through to the inner store, then drop or refresh the entry -------------------

    async def _set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        flight = self._start(key, write=True)
        try:
            stored = await self._inner.set(key, state, expected_version=expected_version)
            # Unless another write of the key ran meanwhile (which of the two won is unknown).
            self._remember_unless_stale(stored, flight)
        except BaseException:
            self._forget(key)
            raise
        finally:
            self._end(key, flight, write=True)
        return stored

    async def _delete(self, key: str) -> bool:
        return await self._write(key, self._inner.delete(key))

    async def _append(self, session_id: str, messages: Sequence[Message]) -> int:
        return await self._write(session_id, self._inner.append(session_id, messages))

    async def _append_turn(
        self,
        session_id: str,
        messages: list[Message],
        *,
        cost: float,
        turn_id: str | None,
        expected_count: int | None,
        release_lease: str | None,
    ) -> int:
        # release_lease is given only when this wrapper is a LeasingStore, i.e. inner is one.
        return await self._write(
            session_id,
            self._inner.append_turn(
                session_id,
                messages,
                cost=cost,
                turn_id=turn_id,
                expected_count=expected_count,
                release_lease=release_lease,
            ),
        )

    async def _save(self, session_id: str, messages: Sequence[Message]) -> None:
        await self._write(session_id, self._inner.save(session_id, messages))

    async def _fork(
        self, source: str, target: str, *, overwrite: bool = False, at: int | None = None
    ) -> State:
        flight = self._start(target, write=True)
        try:
            forked = await self._inner.fork(source, target, overwrite=overwrite, at=at)
            self._remember_unless_stale(forked, flight)
        except BaseException:
            self._forget(target)
            raise
        finally:
            self._end(target, flight, write=True)
        return forked

    async def _merge_metadata(
        self, key: str, updates: Mapping[str, Any], *, remove: Iterable[str] = ()
    ) -> dict[str, Any]:
        return await self._write(key, self._inner.merge_metadata(key, updates, remove=remove))

    async def _truncate(self, key: str, keep: int) -> int:
        return await self._write(key, self._inner.truncate(key, keep))

    async def _pop_messages(self, key: str, count: int = 1) -> list[Message]:
        return await self._write(key, self._inner.pop_messages(key, count))

    async def _delete_by_prefix(self, prefix: str) -> int:
        def drop() -> None:
            for key in [k for k in self._cache if k.startswith(prefix)]:
                del self._cache[key]
            for key, flights in self._flights.items():
                if key.startswith(prefix):
                    for flight in flights:
                        flight.stale = True

        drop()
        try:
            return await self._inner.delete_by_prefix(prefix)
        finally:
            drop()

    # -- lifecycle ----------------------------------------------------------------------------

    async def _open(self) -> None:
        await self._inner._open()

    async def aclose(self) -> None:
        """Drop the cache; close the inner store too when ``close_inner=True``."""
        if self._closed:
            return
        await super().aclose()
        self._cache.clear()
        if self._close_inner:
            await self._inner.aclose()


class _LeasingCachedStore(ForwardedLeases, CachedStore, LeasingStore):
    """A :class:`CachedStore` over a :class:`LeasingStore`: it is one too, with the inner
    store's leases (``acquire_and_load`` is the default: the lease, then a read that the cache
    may serve)."""


_LeasingCachedStore.__name__ = _LeasingCachedStore.__qualname__ = "CachedStore"

"""An in-process store: fast, bounded, and for one process only.

Besides the sessions (a dict in least-recently-used order, for ``max_sessions``), the store keeps
sorted indexes: the keys (so a prefix is a range: listing ten sessions among 100,000 reads ten),
``(updated time, key)`` and ``(created time, key)`` for the whole store and per user (so a page of
:meth:`~promptstate.Store.list_sessions` reads the page). Every write updates them in the same
step, and a session that expires or is evicted leaves them with it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from promptstate.exceptions import ConflictError, NotFoundError, ValidationError
from promptstate.serialization import pack, unpack_any, unpack_message, unpack_messages
from promptstate.stores._sorted import SortedList
from promptstate.stores.base import SessionQuery, Store, to_micros
from promptstate.stores.integrity import check_metadata
from promptstate.stores.turns import decide_turn
from promptstate.tokens import TokenCounter
from promptstate.types import Message, SessionInfo, State, utcnow

__all__ = ["MemoryStore"]

_EMPTY_DICT = pack({})


class _Entry:
    """One session. Messages and metadata are kept encoded, so what a caller holds and what
    is stored never share a mutable object."""

    __slots__ = (
        "created_at",
        "expires_at",
        "indexed",
        "messages",
        "metadata",
        "token_count",
        "total_cost",
        "updated_at",
        "user_id",
        "version",
    )

    def __init__(
        self,
        *,
        user_id: str | None,
        version: int,
        token_count: int,
        total_cost: float,
        metadata: bytes,
        created_at: datetime,
        updated_at: datetime,
        messages: list[bytes],
        expires_at: float | None,
    ) -> None:
        self.user_id = user_id
        self.version = version
        self.token_count = token_count
        self.total_cost = total_cost
        self.metadata = metadata
        self.created_at = created_at
        self.updated_at = updated_at
        self.messages = messages
        self.expires_at = expires_at
        #: (updated, created, user) as the indexes hold the session; None when not indexed.
        self.indexed: tuple[int, int, str | None] | None = None


class MemoryStore(Store):
    """Conversations in a dict of this process.

    Args:
        ttl: Session lifetime after its last write (``timedelta`` or seconds).
        max_sessions: Keep at most this many sessions, evicting the least recently used.
        touch_on_read: Restart the TTL on reads too.
        token_counter: Counter for ``State.token_count``.

    Every operation runs without awaiting anything, so it is atomic within its event loop:
    concurrent appends from many tasks lose nothing, and a cancelled call has either happened
    whole or not at all. It is not shared across threads or processes; use
    :class:`~promptstate.SQLiteStore` or a server store for that.
    """

    #: Nothing of it belongs to an event loop: any loop may use it.
    loop_bound = False

    db_system = "memory"

    def __init__(
        self,
        *,
        ttl: timedelta | float | None = None,
        max_sessions: int | None = None,
        touch_on_read: bool = False,
        token_counter: TokenCounter | None = None,
    ) -> None:
        super().__init__(ttl=ttl, touch_on_read=touch_on_read, token_counter=token_counter)
        if max_sessions is not None and (
            not isinstance(max_sessions, int) or isinstance(max_sessions, bool) or max_sessions < 1
        ):
            raise ValidationError(f"max_sessions must be None or an int >= 1, got {max_sessions!r}")
        self._max_sessions = max_sessions
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._next_sweep = 0.0
        self._keys: SortedList[str] = SortedList()
        self._by_updated: SortedList[tuple[int, str]] = SortedList()
        self._by_created: SortedList[tuple[int, str]] = SortedList()
        self._user_updated: dict[str, SortedList[tuple[int, str]]] = {}
        self._user_created: dict[str, SortedList[tuple[int, str]]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(ttl={self._ttl!r}, max_sessions={self._max_sessions!r})"

    def __len__(self) -> int:
        """The number of sessions held (expired ones not yet swept included)."""
        return len(self._data)

    # -- internals ------------------------------------------------------------------------

    def _expiry(self) -> float | None:
        return None if self._ttl is None else time.monotonic() + self._ttl

    def _index(self, key: str, entry: _Entry) -> None:
        """Bring the sorted indexes up to date with ``entry`` (after every write)."""
        new = (to_micros(entry.updated_at), to_micros(entry.created_at), entry.user_id)
        old = entry.indexed
        if old == new:
            return
        if old is None:
            self._keys.add(key)
        else:
            self._unindex_times(key, old)
        updated, created, user = new
        self._by_updated.add((updated, key))
        self._by_created.add((created, key))
        if user is not None:
            self._user_updated.setdefault(user, SortedList()).add((updated, key))
            self._user_created.setdefault(user, SortedList()).add((created, key))
        entry.indexed = new

    def _unindex_times(self, key: str, old: tuple[int, int, str | None]) -> None:
        updated, created, user = old
        self._by_updated.discard((updated, key))
        self._by_created.discard((created, key))
        if user is not None:
            for by_user, at in ((self._user_updated, updated), (self._user_created, created)):
                items = by_user[user]
                items.discard((at, key))
                if not items:
                    del by_user[user]

    def _unindex(self, key: str, entry: _Entry) -> None:
        if entry.indexed is not None:
            self._keys.discard(key)
            self._unindex_times(key, entry.indexed)
            entry.indexed = None

    def _drop(self, key: str) -> _Entry | None:
        """Remove a session (live or expired) and its index entries."""
        entry = self._data.pop(key, None)
        if entry is not None:
            self._unindex(key, entry)
        return entry

    @staticmethod
    def _expired(entry: _Entry, now: float) -> bool:
        return entry.expires_at is not None and entry.expires_at <= now

    def _lookup(self, key: str, *, read: bool) -> _Entry | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= time.monotonic():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        if read and self._touch_on_read and self._ttl is not None:
            entry.expires_at = time.monotonic() + self._ttl
        return entry

    def _put(self, key: str, entry: _Entry) -> None:
        self._drop(key)
        self._data[key] = entry
        self._index(key, entry)
        if self._max_sessions is not None:
            while len(self._data) > self._max_sessions:
                self._drop(next(iter(self._data)))
        self._sweep()

    def _sweep(self) -> None:
        """Drop expired sessions, at most once per TTL period (amortised O(1) per write)."""
        if self._ttl is None:
            return
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._ttl
        expired = [k for k, e in self._data.items() if self._expired(e, now)]
        for key in expired:
            self._drop(key)

    def _state(self, key: str, entry: _Entry, messages: list[Message]) -> State:
        return State(
            conversation_id=key,
            user_id=entry.user_id,
            messages=messages,
            token_count=entry.token_count,
            total_cost=entry.total_cost,
            metadata=check_metadata("memory", key, unpack_any(entry.metadata, key=key)),
            created_at=entry.created_at,
            updated_at=entry.updated_at,
            version=entry.version,
        )

    # -- the store interface --------------------------------------------------------------

    async def _get(self, key: str) -> State:
        entry = self._lookup(key, read=True)
        if entry is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return self._state(key, entry, unpack_messages(entry.messages, key=key))

    async def _set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        entry = self._lookup(key, read=False)
        current = 0 if entry is None else entry.version
        if expected_version is not None and expected_version != current:
            raise ConflictError(
                f"version conflict on key {key!r}: expected {expected_version}, stored {current}"
            )
        stored = self._prepare(key, state, current + 1)
        self._put(
            key,
            _Entry(
                user_id=stored.user_id,
                version=stored.version,
                token_count=stored.token_count,
                total_cost=stored.total_cost,
                metadata=pack(stored.metadata) if stored.metadata else _EMPTY_DICT,
                created_at=stored.created_at,
                updated_at=stored.updated_at,
                messages=[pack(m) for m in stored.messages],
                expires_at=self._expiry(),
            ),
        )
        return stored

    async def _delete(self, key: str) -> bool:
        entry = self._drop(key)
        return entry is not None and not self._expired(entry, time.monotonic())

    def _prefixed(self, prefix: str) -> list[str]:
        """The live keys that start with ``prefix``: a range of the sorted keys."""
        keys = []
        for key in self._keys.ascending(prefix or None):
            if not key.startswith(prefix):
                break
            keys.append(key)
        now = time.monotonic()
        live = []
        for key in keys:
            if self._expired(self._data[key], now):
                self._drop(key)
            else:
                live.append(key)
        return live

    async def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        for key in self._prefixed(prefix):
            yield key

    async def _load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        entry = self._lookup(session_id, read=True)
        if entry is None:
            return []
        items = entry.messages
        if last is not None:
            items = items[max(len(items) - last, 0) :] if last else []
        return unpack_messages(items, key=session_id)

    async def _append(self, session_id: str, messages: Sequence[Message]) -> int:
        return self._add(session_id, messages, 0.0)

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
        entry = self._lookup(session_id, read=False)
        count = 0 if entry is None else len(entry.messages)
        size = len(messages)
        start = None
        if entry is not None and turn_id is not None and size and count >= size:
            start = unpack_message(entry.messages[count - size], key=session_id)
        if decide_turn(
            session_id,
            count=count,
            size=size,
            start=start,
            turn_id=turn_id,
            expected_count=expected_count,
        ):
            return self._add(session_id, messages, cost)
        return count

    @property
    def append_turn_never_suspends(self) -> bool:
        """True: :meth:`append_turn` runs without awaiting (see
        :attr:`Store.append_turn_never_suspends`), unless a subclass overrides it."""
        kind = type(self)
        return (
            kind._append_turn is MemoryStore._append_turn and kind.append_turn is Store.append_turn
        )

    def _add(self, session_id: str, messages: Sequence[Message], cost: float) -> int:
        entry = self._lookup(session_id, read=False)
        if not messages:
            return 0 if entry is None else len(entry.messages)
        counted, tokens = self._count_new(messages)
        encoded = [pack(m) for m in counted]
        now = utcnow()
        if entry is None:
            entry = _Entry(
                user_id=None,
                version=0,
                token_count=0,
                total_cost=0.0,
                metadata=_EMPTY_DICT,
                created_at=now,
                updated_at=now,
                messages=[],
                expires_at=None,
            )
            self._put(session_id, entry)
        entry.messages.extend(encoded)
        entry.version += 1
        entry.token_count += tokens
        entry.total_cost += cost
        entry.updated_at = now
        entry.expires_at = self._expiry()
        self._index(session_id, entry)
        return len(entry.messages)

    async def _save(self, session_id: str, messages: Sequence[Message]) -> None:
        entry = self._lookup(session_id, read=False)
        if entry is None:
            await self._set(session_id, State(conversation_id=session_id, messages=list(messages)))
            return
        counted, tokens = self._count_new(messages)
        entry.messages = [pack(m) for m in counted]
        entry.version += 1
        entry.token_count = tokens
        entry.updated_at = utcnow()
        entry.expires_at = self._expiry()
        self._index(session_id, entry)

    async def _fork(
        self, source: str, target: str, *, overwrite: bool = False, at: int | None = None
    ) -> State:
        entry = self._lookup(source, read=True)
        if entry is None:
            raise NotFoundError(f"fork source {source!r} does not exist")
        existing = self._lookup(target, read=False)
        if existing is not None and not overwrite:
            raise ConflictError(f"fork target {target!r} exists already")
        messages = entry.messages
        token_count = entry.token_count
        if at is not None and at < len(messages):
            messages = messages[:at]
            token_count = sum(m.tokens or 0 for m in unpack_messages(messages, key=source))
        copy = _Entry(
            user_id=entry.user_id,
            version=(0 if existing is None else existing.version) + 1,
            token_count=token_count,
            total_cost=entry.total_cost,
            metadata=entry.metadata,  # immutable bytes: sharing is safe
            created_at=entry.created_at,
            updated_at=utcnow(),
            messages=list(messages),
            expires_at=self._expiry(),
        )
        self._put(target, copy)
        return self._state(target, copy, unpack_messages(copy.messages, key=target))

    async def _list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        for key in self._prefixed(prefix):
            entry = self._lookup(key, read=True)
            if entry is not None:
                yield self._state(key, entry, unpack_messages(entry.messages, key=key))

    async def _delete_by_prefix(self, prefix: str) -> int:
        keys = []
        for key in self._keys.ascending(prefix or None):
            if not key.startswith(prefix):
                break
            keys.append(key)
        now = time.monotonic()
        live = 0
        for key in keys:
            entry = self._drop(key)
            live += entry is not None and not self._expired(entry, now)
        return live

    # -- session facts, listing, branching ------------------------------------------------

    async def _count(self, key: str) -> int:
        entry = self._lookup(key, read=True)
        return 0 if entry is None else len(entry.messages)

    async def _get_metadata(self, key: str) -> dict[str, Any]:
        entry = self._lookup(key, read=True)
        if entry is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        metadata = check_metadata("memory", key, unpack_any(entry.metadata, key=key))
        return metadata

    async def _merge_metadata(
        self, key: str, updates: Mapping[str, Any], *, remove: Iterable[str] = ()
    ) -> dict[str, Any]:
        entry = self._lookup(key, read=False)
        now = utcnow()
        if entry is None:
            entry = _Entry(
                user_id=None,
                version=0,
                token_count=0,
                total_cost=0.0,
                metadata=_EMPTY_DICT,
                created_at=now,
                updated_at=now,
                messages=[],
                expires_at=None,
            )
            self._put(key, entry)
        metadata: dict[str, Any] = {
            **check_metadata("memory", key, unpack_any(entry.metadata, key=key)),
            **updates,
        }
        for name in remove:
            metadata.pop(name, None)
        entry.metadata = pack(metadata) if metadata else _EMPTY_DICT
        entry.version += 1
        entry.updated_at = now
        entry.expires_at = self._expiry()
        self._index(key, entry)
        return metadata  # a new dict: the store keeps only its encoding

    async def _truncate(self, key: str, keep: int) -> int:
        entry = self._lookup(key, read=False)
        if entry is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        if len(entry.messages) <= keep:
            return len(entry.messages)
        removed = unpack_messages(entry.messages[keep:], key=key)
        entry.token_count = max(entry.token_count - sum(m.tokens or 0 for m in removed), 0)
        del entry.messages[keep:]
        entry.version += 1
        entry.updated_at = utcnow()
        entry.expires_at = self._expiry()
        self._index(key, entry)
        return keep

    async def _pop_messages(self, key: str, count: int = 1) -> list[Message]:
        entry = self._lookup(key, read=False)
        if entry is None or not count or not entry.messages:
            return []
        keep = max(len(entry.messages) - count, 0)
        removed = unpack_messages(entry.messages[keep:], key=key)
        entry.token_count = max(entry.token_count - sum(m.tokens or 0 for m in removed), 0)
        del entry.messages[keep:]
        entry.version += 1
        entry.updated_at = utcnow()
        entry.expires_at = self._expiry()
        self._index(key, entry)
        return removed

    async def _list_sessions(self, query: SessionQuery) -> list[SessionInfo]:
        if query.user_id is None:
            items = self._by_created if query.by_created else self._by_updated
        else:
            by_user = self._user_created if query.by_created else self._user_updated
            found = by_user.get(query.user_id)
            if found is None:
                return []
            items = found
        if query.descending:
            walk = items.descending(query.after, inclusive=False)
        else:
            walk = items.ascending(query.after, inclusive=False)
        prefix, want, now = query.prefix, query.limit + 1, time.monotonic()
        page: list[SessionInfo] = []
        expired: list[str] = []
        for _, key in walk:
            if prefix and not key.startswith(prefix):
                continue
            entry = self._data[key]
            if self._expired(entry, now):
                expired.append(key)
                continue
            page.append(
                SessionInfo(
                    conversation_id=key,
                    user_id=entry.user_id,
                    message_count=len(entry.messages),
                    token_count=entry.token_count,
                    total_cost=entry.total_cost,
                    metadata=check_metadata("memory", key, unpack_any(entry.metadata, key=key)),
                    created_at=entry.created_at,
                    updated_at=entry.updated_at,
                    version=entry.version,
                )
            )
            if len(page) == want:
                break
        for key in expired:  # after the walk: the indexes must not change during it
            self._drop(key)
        return page

    async def _get_many(self, keys: Iterable[str]) -> list[State | None]:
        found: list[State | None] = []
        for key in keys:
            entry = self._lookup(key, read=True)
            found.append(
                None
                if entry is None
                else self._state(key, entry, unpack_messages(entry.messages, key=key))
            )
        return found

"""Session turn locks: one turn at a time per session, in this process and across processes.

Two layers guard a session while a pipeline turn runs:

1. **In-process**: a per-session lock, shared by every pipeline of this process that uses the
   same store object. Locks are reference counted and dropped when nobody holds or waits for
   them, so the table never grows with the number of sessions ever seen.
2. **Across processes**: a *lease* in the store, when the store supports it
   (:class:`SupportsLease`). A lease is a record with an owner token and an expiry: it is taken
   only when absent or expired, renewed while the turn runs, and released by its owner only
   (compare-and-delete). A holder that dies stops renewing, so its lease expires and the next
   turn takes over after at most ``ttl`` seconds.

Stores without leases (:class:`~promptstate.MemoryStore`) get only the in-process lock, which is
all they need: their data lives in one process.

A backend implements the lease with these exact methods (``key`` is the session id, already
validated; the backend keeps leases in its own namespace, apart from the states)::

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool
        # take the lease if nobody holds it (or it expired); True when taken
    async def renew_lease(self, key: str, owner: str, ttl: float) -> bool
        # push the expiry to now + ttl if `owner` still holds it; False when lost
    async def release_lease(self, key: str, owner: str) -> bool
        # delete it if `owner` holds it; True when something was released

``ttl`` is in seconds (a float; Redis rounds it up to whole milliseconds for ``SET NX PX``).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, cast, runtime_checkable

import anyio

from promptstate.exceptions import SessionBusyError, ValidationError

__all__ = ["LeaseLostError", "SessionLock", "SupportsLease", "TurnLease", "session_turn"]

logger = logging.getLogger(__name__)

_HOST = f"{socket.gethostname()}:{os.getpid()}"
# Unique ids without a system call each: a random per-process prefix and a counter.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count()


def new_id() -> str:
    """An id unique across processes and time (random prefix + counter), cheaply."""
    return f"{_ID_PREFIX}{next(_ids):x}"


@runtime_checkable
class SupportsLease(Protocol):
    """A store that can hold a per-session lease shared by all processes using it."""

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease on ``key`` for ``owner`` for ``ttl`` seconds, if it is free or expired.

        Returns:
            True when ``owner`` now holds the lease; False when another owner holds it.
        """
        ...

    async def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s lease on ``key`` to ``ttl`` seconds from now.

        Returns:
            False when ``owner`` no longer holds it (it expired and someone else took it).
        """
        ...

    async def release_lease(self, key: str, owner: str) -> bool:
        """Delete the lease on ``key`` if ``owner`` holds it (compare-and-delete).

        Returns:
            True when ``owner``'s lease was released.
        """
        ...


class LeaseLostError(SessionBusyError):
    """The turn's lease expired or was taken over before the turn could be saved."""


class _Slot:
    """One session's lock: a flag and a FIFO of waiters, handed over on release."""

    __slots__ = ("held", "refs", "waiters")

    def __init__(self) -> None:
        self.held = False
        self.refs = 0
        self.waiters: deque[anyio.Event] = deque()


class SessionLock:
    """Per-session in-process locks for one store, reference counted.

    A session's entry exists only while a turn holds or waits for it, so the table never grows
    with the number of sessions seen. The lock is not tied to a task, so a turn's lock can be
    released by whichever task finishes the turn (an abandoned stream finalised elsewhere), and
    it is handed to waiters in arrival order. Taking a free lock does not yield to the loop.
    """

    __slots__ = ("__weakref__", "_slots")

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        """How many sessions have a lock held or waited for right now."""
        return len(self._slots)

    async def acquire(self, key: str, max_wait: float | None) -> None:
        """Take ``key``'s lock; :class:`SessionBusyError` after ``max_wait`` seconds of waiting.

        Every successful ``acquire`` must be paired with one :meth:`release`.
        """
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        slot.refs += 1
        if not slot.held:
            slot.held = True
            return
        event = anyio.Event()
        slot.waiters.append(event)
        try:
            with anyio.fail_after(max_wait):
                await event.wait()
        except BaseException as exc:
            if event.is_set():
                # The lock was handed to us just as we gave up: pass it on.
                self.release(key)
            else:
                slot.waiters.remove(event)
                self._unref(key, slot)
            if isinstance(exc, TimeoutError):
                raise SessionBusyError(
                    f"session {key!r} is busy: another turn held it for {max_wait}s"
                ) from None
            raise

    def release(self, key: str) -> None:
        """Release ``key``'s lock, handing it to the next waiter if there is one."""
        slot = self._slots[key]
        if slot.waiters:
            slot.waiters.popleft().set()  # ownership moves; held stays True
        else:
            slot.held = False
        self._unref(key, slot)

    def _unref(self, key: str, slot: _Slot) -> None:
        slot.refs -= 1
        if slot.refs == 0:
            del self._slots[key]

    @asynccontextmanager
    async def hold(self, key: str, max_wait: float | None) -> AsyncIterator[None]:
        """``async with`` form of :meth:`acquire` / :meth:`release`."""
        await self.acquire(key, max_wait)
        try:
            yield
        finally:
            self.release(key)


_tables: weakref.WeakKeyDictionary[object, SessionLock] = weakref.WeakKeyDictionary()


_lease_support: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def supports_lease(store: object) -> bool:
    """Whether ``store`` implements :class:`SupportsLease` (cached per class)."""
    cls = type(store)
    known = _lease_support.get(cls)
    if known is None:
        known = _lease_support[cls] = isinstance(store, SupportsLease)
    return known


def local_locks(store: object) -> SessionLock:
    """The in-process lock table shared by everything that uses ``store``."""
    table = _tables.get(store)
    if table is None:
        table = _tables[store] = SessionLock()
    return table


class TurnLease:
    """The cross-process lease a turn holds, with its renewal bookkeeping.

    Attributes:
        key: The session id.
        owner: This turn's owner token.
        ttl: The lease lifetime in seconds.
    """

    __slots__ = ("_renewed_at", "_store", "held", "key", "lost", "owner", "ttl")

    def __init__(self, store: SupportsLease, key: str, ttl: float) -> None:
        self._store = store
        self.key = key
        self.ttl = ttl
        self.owner = f"{_HOST}:{new_id()}"
        self.lost = False
        self.held = False
        self._renewed_at = 0.0

    async def acquire(self, max_wait: float | None) -> None:
        """Take the lease, polling with backoff; :class:`SessionBusyError` after ``max_wait``."""
        deadline = None if max_wait is None else time.monotonic() + max_wait
        delay = 0.005
        while True:
            started = time.monotonic()
            # Shielded: a cancellation never leaves a lease taken on the server but unknown here.
            with anyio.CancelScope(shield=True):
                taken = await self._store.acquire_lease(self.key, self.owner, self.ttl)
            if taken:
                self._renewed_at = started
                self.held = True
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise SessionBusyError(
                    f"session {self.key!r} is busy: its lease is held by another process "
                    f"and was not released within {max_wait}s"
                )
            wait = delay if deadline is None else min(delay, max(deadline - now, 0.0))
            await anyio.sleep(wait)
            delay = min(delay * 2, 0.25, self.ttl / 4)

    async def renew(self) -> bool:
        """Renew now; marks the lease lost (and returns False) when it was taken over."""
        started = time.monotonic()
        if await self._store.renew_lease(self.key, self.owner, self.ttl):
            self._renewed_at = started
            return True
        self.lost = True
        return False

    def remaining(self) -> float:
        """Seconds the lease is still certainly ours (by this process's clock)."""
        if self.lost:
            return 0.0
        return self._renewed_at + self.ttl - time.monotonic()

    async def ensure(self, margin: float) -> None:
        """Make sure the lease stays ours for at least ``margin`` more seconds.

        Renews when less than that is left. Raises :class:`LeaseLostError` if it was lost.
        """
        if self.remaining() < margin:
            await self.renew()
        if self.lost or self.remaining() <= 0:
            raise LeaseLostError(
                f"the lease on session {self.key!r} was lost before the turn was saved"
            )

    async def _keep_alive(self) -> None:
        while not self.lost:
            await anyio.sleep(self.ttl / 3)
            try:
                if not await self.renew():
                    logger.warning("lost the lease on session %r while its turn ran", self.key)
                    return
            except Exception:  # a failed renewal is retried; ensure() catches a real loss
                logger.warning("could not renew the lease on session %r", self.key, exc_info=True)

    async def release(self) -> None:
        """Release the lease (shielded from cancellation, bounded in time)."""
        self.held = False
        with anyio.move_on_after(max(self.ttl, 1.0), shield=True):
            try:
                await self._store.release_lease(self.key, self.owner)
            except Exception:  # the lease expires by itself; never mask the turn's outcome
                logger.warning("could not release the lease on session %r", self.key, exc_info=True)


@asynccontextmanager
async def session_turn(
    store: object, key: str, *, max_wait: float | None, lease_ttl: float
) -> AsyncIterator[TurnLease | None]:
    """Hold ``key`` for one turn: the in-process lock, then the store's lease if it has one.

    Yields the :class:`TurnLease` (renewed in the background while the block runs), or None
    for a store without leases.

    Raises:
        SessionBusyError: The lock or lease was not had within ``max_wait`` seconds.
    """
    started = time.monotonic()
    async with local_locks(store).hold(key, max_wait):
        if not supports_lease(store):
            yield None
            return
        remaining = None if max_wait is None else max(max_wait - (time.monotonic() - started), 0.0)
        lease = TurnLease(cast(SupportsLease, store), key, lease_ttl)
        try:
            await lease.acquire(remaining)
            failure: BaseException | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(lease._keep_alive)
                try:
                    yield lease
                except BaseException as exc:  # re-raised below, not wrapped in a group
                    failure = exc
                finally:
                    tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            if lease.held:
                await lease.release()


def check_timeout(value: object, what: str) -> float | None:
    """``value`` as seconds (None for no limit); :class:`ValidationError` unless positive."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"{what} must be a positive number of seconds or None, got {value!r}")
    return float(value)

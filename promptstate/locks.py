"""Session turn locks: one turn at a time per session, in this process and across processes.

:class:`TurnRunner` is the one place a turn holds its session; the pipeline's ``execute`` and
``stream`` and :meth:`~promptstate.Conversation.undo` all run through it. Two layers guard a
session while a turn runs:

1. **In-process**: a per-session lock, shared by every pipeline of this process that uses the
   same store object. Locks are reference counted and dropped when nobody holds or waits for
   them, so the table never grows with the number of sessions ever seen.
2. **Across processes**: a *lease* in the store, when the store declares it by being a
   :class:`~promptstate.stores.base.LeasingStore`. A lease is a record with an owner token and
   an expiry: it is taken only when absent or expired (or its owner's already: a retried
   acquire takes it again), renewed while the turn runs, and released by its owner only
   (compare-and-delete). A holder that dies stops renewing, so its
   lease expires and the next turn takes over after at most ``ttl`` seconds.

Stores without leases (:class:`~promptstate.MemoryStore`) get only the in-process lock, which is
all they need: their data lives in one process.

A store declares leases by subclassing :class:`~promptstate.stores.base.LeasingStore`. Its
public ``acquire_lease``, ``renew_lease`` and ``release_lease`` check their arguments and
call the protected methods a backend implements (``key`` is the session id; the backend keeps
leases in its own namespace, apart from the states)::

    async def _acquire_lease(self, key: str, owner: str, ttl: float) -> bool
        # take the lease if nobody else holds it (or it expired); True when taken
    async def _renew_lease(self, key: str, owner: str, ttl: float) -> bool
        # push the expiry to now + ttl if `owner` still holds it; False when lost
    async def _release_lease(self, key: str, owner: str) -> bool
        # delete it if `owner` holds it; True when something was released

``ttl`` is in seconds (a float; Redis rounds it up to whole milliseconds for ``SET NX PX``).
:class:`SupportsLease` describes the public methods for type hints; it is not how a store
declares leases.

A :class:`~promptstate.stores.base.LeasingStore` also has the two methods that let a turn
cost two round trips instead of four (acquire, load, save, release), which Redis, SQLite and
PostgreSQL implement in one atomic step each:

* ``acquire_and_load(key, owner, ttl, *, last)`` takes the lease and, only when it was taken,
  reads the newest ``last`` messages (``None`` when another owner holds the lease). The turn
  uses it when its first stage is a :class:`~promptstate.stages.LoadState`, whose first read
  it then serves.
* ``append_turn(..., release_lease=owner)``: the store appends the turn only while ``owner``
  holds the lease and deletes the lease in the same atomic step.

A turn that fails or is cancelled before its save still releases its lease with
``release_lease``, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import anyio

from promptstate.exceptions import LeaseLostError, SessionBusyError, ValidationError
from promptstate.settle import settled
from promptstate.stores.base import LeasingStore

if TYPE_CHECKING:
    from promptstate.types import Message

__all__ = [
    "LeaseLostError",
    "SessionLock",
    "SupportsLease",
    "TurnLease",
    "TurnRunner",
]

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
    """The public lease methods of a store, for type hints.

    A store declares leases by subclassing :class:`~promptstate.stores.base.LeasingStore`
    (the pipeline asks ``isinstance(store, LeasingStore)``, nothing else); every
    ``LeasingStore`` satisfies this protocol.
    """

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease on ``key`` for ``owner`` for ``ttl`` seconds, if it is free, expired
        or ``owner``'s already (then its TTL is set anew).

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


def supports_lease(store: object) -> bool:
    """Whether ``store`` declares cross-process turn leases: it is a
    :class:`~promptstate.stores.base.LeasingStore` (the one question the pipeline asks)."""
    return isinstance(store, LeasingStore)


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

    __slots__ = (
        "_renewed_at",
        "_store",
        "held",
        "key",
        "lost",
        "owner",
        "prefetch",
        "release_on_save",
        "ttl",
    )

    def __init__(self, store: LeasingStore, key: str, ttl: float) -> None:
        self._store = store
        self.key = key
        self.ttl = ttl
        self.owner = f"{_HOST}:{new_id()}"
        self.lost = False
        self.held = False
        self._renewed_at = 0.0
        #: ``(last, messages)`` read with the lease by ``acquire_and_load``, until used.
        self.prefetch: tuple[int | None, list[Message]] | None = None
        #: Whether the save may release the lease in its own write (``release_lease=``).
        self.release_on_save = True

    @property
    def store(self) -> LeasingStore:
        """The store that holds the lease."""
        return self._store

    async def acquire(
        self, max_wait: float | None, *, load: tuple[int | None] | None = None
    ) -> None:
        """Take the lease, polling with backoff; :class:`SessionBusyError` after ``max_wait``.

        With ``load=(last,)`` (for a store with ``acquire_and_load``) the newest ``last``
        messages are read in the same step and kept in :attr:`prefetch`.
        """
        deadline = None if max_wait is None else time.monotonic() + max_wait
        delay = 0.005
        store = self._store
        while True:
            started = time.monotonic()
            # A store's acquire is settled when it returns, even cancelled (the conformance
            # suite checks it): the lease is then this owner's or nobody's, and stays so. So a
            # cancelled attempt is undone by a release, and a turn pays no task around every
            # acquire. A failed one is not: the store raised before it took anything, or
            # settled it itself (RedisStore), and a store that is down would only be asked
            # again.
            try:
                if load is None:
                    taken = await store.acquire_lease(self.key, self.owner, self.ttl)
                else:
                    found = await store.acquire_and_load(
                        self.key, self.owner, self.ttl, last=load[0]
                    )
                    taken = found is not None
                    if found is not None:
                        self.prefetch = (load[0], found)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # cancelled (task.cancel() or a scope's)
                    await self.release()
                raise
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

    def take_prefetch(self) -> tuple[int | None, list[Message]] | None:
        """``(last, messages)`` read with the lease, once; None when there are none."""
        found = self.prefetch
        self.prefetch = None
        return found

    def _active(self) -> bool:
        return self.held and not self.lost

    async def _keep_alive(self, *, wait_first: bool = True) -> None:
        while self._active():
            if wait_first:
                await anyio.sleep(self.ttl / 3)
            wait_first = True
            if not self._active():  # released by the save
                return
            try:
                if not await self.renew():
                    if self.held:  # not a lease the save released meanwhile
                        logger.warning("lost the lease on session %r while its turn ran", self.key)
                    return
            except Exception:  # a failed renewal is retried; ensure() catches a real loss
                logger.warning("could not renew the lease on session %r", self.key, exc_info=True)

    async def release(self) -> None:
        """Release the lease (settled even if the caller is cancelled, bounded in time)."""
        self.held = False
        try:
            # Settled: a plain task.cancel() gets through an anyio shield, and a release cut
            # short leaves the session busy until the lease expires.
            await settled(
                self._store.release_lease(self.key, self.owner), timeout=max(self.ttl, 1.0)
            )
        except Exception:  # the lease expires by itself; never mask the turn's outcome
            logger.warning("could not release the lease on session %r", self.key, exc_info=True)


class _Renewals:
    """Renews the leases of one runner's turns on one asyncio loop, from a single timer.

    A turn registers its lease (a dict entry) and unregisters it when it ends; one timer for
    all of them ticks every ninth of the shortest ``ttl`` among them while any waits for its
    first renewal, and starts a renewal task for each lease a third of its ``ttl`` old (so a
    lease is renewed at most 4/9 of its ``ttl`` after it was taken). Most turns end well
    before that: they pay for two dict operations instead of a timer handle of their own, set
    and cancelled (a heap push and a handle object per turn, kept alive while the turn runs).
    asyncio only (elsewhere :class:`TurnRunner` runs the renewal in a task group from the
    start).
    """

    __slots__ = ("_due", "_handle", "_loop", "_period", "_tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Leases waiting for their first renewal, and when it is due (``loop.time()``).
        self._due: dict[TurnLease, float] = {}
        #: Leases being renewed, by their renewal task.
        self._tasks: dict[TurnLease, asyncio.Task[None]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._period = 0.0

    @staticmethod
    def on_this_loop(runner: TurnRunner) -> _Renewals | None:
        """The runner's renewals on the running loop; None when it is not asyncio's."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        found = runner._renewals
        if found is None or found._loop is not loop:
            found = runner._renewals = _Renewals(loop)
        return found

    def add(self, lease: TurnLease) -> None:
        """Renew ``lease`` from a third of its ``ttl`` on, until :meth:`remove`."""
        self._due[lease] = self._loop.time() + lease.ttl / 3
        period = lease.ttl / 9
        if self._handle is not None and period >= self._period:
            return
        if self._handle is not None:  # a shorter TTL than the timer was set for
            self._handle.cancel()
        self._period = period
        self._handle = self._loop.call_later(period, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        due = [lease for lease, at in self._due.items() if at <= now]
        for lease in due:
            del self._due[lease]
            if lease._active():  # not released or lost meanwhile
                self._tasks[lease] = self._loop.create_task(lease._keep_alive(wait_first=False))
        if self._due:
            self._handle = self._loop.call_later(self._period, self._tick)

    def remove(self, lease: TurnLease) -> asyncio.Task[None] | None:
        """Stop renewing ``lease``; returns its renewal task if one runs (cancelled, for the
        caller to wait for). The timer stays: it stops by itself at a tick with nothing due."""
        if self._due.pop(lease, None) is not None:
            return None
        task = self._tasks.pop(lease, None)
        if task is None or task.done():
            return None
        task.cancel()
        return task


async def _stopped(task: asyncio.Task[None]) -> None:
    """Wait for a cancelled renewal task to end (shielded)."""
    with anyio.CancelScope(shield=True):
        await asyncio.wait((task,))


class TurnRunner:
    """Runs turns on one store: the one turn runner of the pipeline (``execute`` and
    ``stream``) and of everything else that must hold a session like a turn
    (:meth:`~promptstate.Conversation.undo`).

    A turn takes the session's in-process lock and then, on a
    :class:`~promptstate.stores.base.LeasingStore`, the store's lease (renewed in the
    background while the turn runs: from one timer for all the runner's turns on asyncio, from
    a task per turn elsewhere), runs its body, and releases the lease (unless the save
    released it already) and the lock. Whether the store leases is asked once, here, at
    construction.

    Args:
        store: The store the turns run on.
        max_wait: Seconds a turn waits for its session before
            :class:`~promptstate.exceptions.SessionBusyError`; ``None`` waits for ever.
        lease_ttl: The lease's lifetime in seconds (leasing stores only).
        release_on_save: Whether the turn's save may release the lease in its own write
            (:attr:`TurnLease.release_on_save`).
    """

    __slots__ = (
        "_leasing",
        "_locks",
        "_renewals",
        "_store",
        "lease_ttl",
        "max_wait",
        "release_on_save",
    )

    def __init__(
        self,
        store: object,
        *,
        max_wait: float | None,
        lease_ttl: float,
        release_on_save: bool = True,
    ) -> None:
        self._store = store
        self._leasing = supports_lease(store)
        self._locks = local_locks(store)
        self.max_wait = max_wait
        self.lease_ttl = lease_ttl
        self.release_on_save = release_on_save
        self._renewals: _Renewals | None = None

    @property
    def leasing(self) -> bool:
        """Whether turns take the store's cross-process lease."""
        return self._leasing

    async def run(
        self,
        key: str,
        body: Callable[[TurnLease | None], Awaitable[None]],
        *,
        load: tuple[int | None] | None = None,
    ) -> None:
        """``await body(lease)`` while ``key`` is held; ``lease`` is None on a store without
        leases.

        With ``load=(last,)`` (a leasing store), the lease is taken and the newest ``last``
        messages (all for ``None``) read in one step (:meth:`TurnLease.take_prefetch`).

        Raises:
            SessionBusyError: The lock or lease was not had within ``max_wait`` seconds.
        """
        locks = self._locks
        max_wait = self.max_wait
        if not self._leasing:
            await locks.acquire(key, max_wait)
            try:
                await body(None)
            finally:
                locks.release(key)
            return
        started = time.monotonic()
        await locks.acquire(key, max_wait)
        try:
            remaining = (
                None if max_wait is None else max(max_wait - (time.monotonic() - started), 0.0)
            )
            lease = TurnLease(cast(LeasingStore, self._store), key, self.lease_ttl)
            lease.release_on_save = self.release_on_save
            try:
                await lease.acquire(remaining, load=load)
                renewals = _Renewals.on_this_loop(self)
                if renewals is not None:
                    renewals.add(lease)
                    try:
                        await body(lease)
                    finally:
                        renewing = renewals.remove(lease)
                        if renewing is not None:
                            await _stopped(renewing)
                    return
                failure: BaseException | None = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lease._keep_alive)
                    try:
                        await body(lease)
                    except BaseException as exc:  # re-raised below, not wrapped in a group
                        failure = exc
                    finally:
                        tg.cancel_scope.cancel()
                if failure is not None:
                    raise failure
            finally:
                if lease.held:
                    await lease.release()
        finally:
            locks.release(key)


def check_timeout(value: object, what: str) -> float | None:
    """``value`` as seconds (None for no limit); :class:`ValidationError` unless positive."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"{what} must be a positive number of seconds or None, got {value!r}")
    return float(value)

"""How a :class:`~promptstate.stores.redis.RedisStore` gets a connection for a call.

Two pieces, both queueing callers in arrival order for up to ``pool_timeout``:

- :class:`Permits`: at most ``max_connections`` calls in flight. A Redis Cluster client of
  redis-py refuses a call at once when every connection to a node is busy; the store waits
  for a permit instead, as a single Redis's blocking pool does.
- :class:`CommandConnections`: on a single Redis (RESP2), when the store made its own client,
  the connections its single-command calls run on (every turn's load, append, lease acquire
  and release). redis-py's ``execute_command`` through a ``BlockingConnectionPool`` spends as
  much of the client's CPU around a round trip as in it: a lock and a condition with a
  timeout to take a connection, a check that it is clean, metrics hooks, a retry wrapper, on
  Python 3.11 a task per command for the send timeout, the lock again to give it back. Here a
  call takes a connection from a free list and puts it back without awaiting, and does
  around the round trip only what keeps a connection safe to reuse: the cleanliness check
  redis-py's pool makes before lending one (a connection the server closed, or with unread
  bytes, is reconnected first); a call cancelled after its command went out reads the reply
  before the cancellation goes on (so the command has run by then, never later, and the
  connection stays clean); any other failure disconnects it. Measured in ``docs/redis.md``
  (``bench_redis``'s borrowed-client rows, two runs): a turn's latency 0.73x-0.82x, turns/s
  1.2x-1.4x.

Multi-command calls (``get_many``, the header reads of ``list_sessions``, and every write
when ``wait_replicas`` is set) still go through the client's pool, as does anything you run
on ``store.client``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import sys
from typing import TYPE_CHECKING, Any

import anyio
import redis.exceptions as redis_errors
from anyio.lowlevel import checkpoint_if_cancelled
from redis.asyncio.connection import Connection

if sys.version_info >= (3, 11, 3):  # mypy reads three-part versions as unknown: both branches
    from asyncio import timeout as _deadline  # type: ignore[attr-defined,unused-ignore]
else:  # as redis-py does: its dependency below 3.11.3
    from async_timeout import timeout as _deadline  # type: ignore[import-not-found,unused-ignore]

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = ["CommandConnections", "Permit", "PermitTimeout", "Permits"]

logger = logging.getLogger(__name__)

# redis-py 8 renamed the pool's check (can_read_destructive is deprecated there).
_CAN_READ = hasattr(Connection, "can_read")


class Permits:
    """At most ``size`` calls in flight; the others wait, in arrival order, for up to
    ``timeout`` seconds (``None``: no limit).

    Cancellation-safe: a waiter cancelled or timed out leaves the queue, and a permit handed
    to a waiter that was cancelled at that moment goes on to the next one.
    """

    __slots__ = ("free", "size", "timeout", "waiters")

    def __init__(self, size: int, timeout: float | None) -> None:
        self.size = size
        self.free = size
        self.timeout = timeout
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.free and not self.waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            # asyncio.wait neither raises on the timeout nor cancels the waiter.
            await asyncio.wait((waiter,), timeout=self.timeout)
        except BaseException:
            self._leave(waiter)
            raise
        if waiter.done():
            return
        self._leave(waiter)
        raise PermitTimeout(
            f"all {self.size} connections (max_connections={self.size}) stayed in use for "
            f"{self.timeout:g} s (pool_timeout); raise max_connections or pool_timeout, or make "
            "fewer calls at once"
        )

    def _leave(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            self.release()  # handed a permit at the last moment: pass it on
            return
        waiter.cancel()
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class PermitTimeout(redis_errors.MaxConnectionsError):
    """No permit within ``pool_timeout``: reported like redis-py's own pool exhaustion."""


class Permit:
    """``async with``: one permit of a :class:`Permits`, or nothing when there is none."""

    __slots__ = ("permits",)

    def __init__(self, permits: Permits | None) -> None:
        self.permits = permits

    async def __aenter__(self) -> None:
        if self.permits is not None:
            await self.permits.acquire()

    async def __aexit__(self, *exc: object) -> None:
        if self.permits is not None:
            self.permits.release()


class CommandConnections:
    """At most ``size`` connections made like ``pool``'s own, for one command at a time each.

    :meth:`execute` returns the reply as redis-py's connection reads it (no response
    callbacks: the store's single commands are ``EVALSHA``/``EVAL`` and plain reads whose
    replies need none) and raises what redis-py raises: an error reply as its
    ``ResponseError`` (``NoScriptError`` included), a lost connection as ``ConnectionError``,
    a timeout as ``TimeoutError``, no free connection within ``timeout`` as
    :class:`PermitTimeout`. Deadlines: the pool's ``socket_timeout`` bounds a command's send
    and reply together; opening a connection (TCP or TLS, then the handshake: AUTH, SELECT,
    ...) gets ``socket_connect_timeout`` plus ``socket_timeout``. The pool's
    ``health_check_interval`` is honoured as redis-py honours it.
    """

    __slots__ = (
        "_check_health",
        "_closed",
        "_connect_timeout",
        "_free",
        "_made",
        "_make",
        "_permits",
        "_timeout",
    )

    def __init__(self, pool: ConnectionPool, size: int, timeout: float | None) -> None:
        # One deadline per command over its send and read, instead of redis-py's own per
        # step: on Python 3.11 its send timeout (asyncio.wait_for) makes a task per command,
        # which cost a quarter of a call's client CPU. So the connections are made without
        # socket_timeout, and every read they make runs under one of the deadlines here.
        options = dict(pool.connection_kwargs)
        self._timeout: float | None = options.get("socket_timeout")
        connect = options.get("socket_connect_timeout")
        self._connect_timeout: float | None = (
            None if self._timeout is None else (connect or 0.0) + self._timeout
        )
        self._check_health = bool(options.get("health_check_interval"))
        options["socket_timeout"] = None
        self._make = functools.partial(pool.connection_class, **options)
        self._free: collections.deque[AbstractConnection] = collections.deque()
        self._made: list[AbstractConnection] = []
        self._permits = Permits(size, timeout)
        self._closed = False

    @property
    def size(self) -> int:
        """How many connections there may be."""
        return self._permits.size

    @property
    def made(self) -> int:
        """How many connections there are (connected or not)."""
        return len(self._made)

    @property
    def idle(self) -> int:
        """How many of them no call is using."""
        return len(self._free)

    async def execute(self, *args: Any) -> Any:
        # A caller whose anyio scope is cancelled already does not start the command: nothing
        # before the send would otherwise yield to deliver the cancellation.
        await checkpoint_if_cancelled()
        permits = self._permits
        await permits.acquire()
        try:
            self._check_open()
            free = self._free
            if free:
                conn = free.pop()
            else:
                conn = self._make()
                self._made.append(conn)
            connecting = sent = False
            try:
                if conn.is_connected:
                    await _clean(conn)
                if not conn.is_connected:
                    connecting = True
                    async with _deadline(self._connect_timeout):
                        await conn.connect()  # type: ignore[no-untyped-call]
                    connecting = False
                async with _deadline(self._timeout):
                    await conn.send_packed_command(
                        conn.pack_command(*args), check_health=self._check_health
                    )
                    sent = True
                    reply = await conn.read_response(disconnect_on_error=False)
            except redis_errors.ResponseError:
                free.append(conn)  # an error reply, read whole: nothing is left unread
                raise
            except asyncio.CancelledError:
                # Cancelled from outside (a deadline of ours leaves as TimeoutError). Once the
                # command is out, the server runs it: wait for its reply, so that when this
                # cancellation goes on the command has run, not later (after the caller was
                # told it was cancelled), and the connection stays clean.
                if sent and await self._read_out(conn):
                    free.append(conn)
                else:
                    await self._settle(conn)
                raise
            except BaseException as exc:
                # Failed, timed out or cancelled mid-call: a reply may still be on its way,
                # so the connection goes back only if it is known to be closed.
                await self._settle(conn)
                if isinstance(exc, asyncio.TimeoutError):
                    if connecting:
                        raise redis_errors.TimeoutError(
                            f"could not connect to Redis within {self._connect_timeout} s "
                            "(socket_connect_timeout + socket_timeout)"
                        ) from exc
                    raise redis_errors.TimeoutError(
                        f"no reply from Redis within {self._timeout} s (socket_timeout)"
                    ) from exc
                raise
            if self._closed:  # aclose() ran meanwhile: this one may have reconnected
                await self._settle(conn)
            else:
                free.append(conn)
            return reply
        finally:
            permits.release()

    async def _read_out(self, conn: AbstractConnection) -> bool:
        """Read the reply of a command whose caller was cancelled; True when it was read
        whole. Shielded from anyio's repeated cancellations; gives up (False) on a deadline
        of ``socket_timeout``, a failure, or a second plain ``task.cancel()``."""
        with anyio.CancelScope(shield=True):
            try:
                async with _deadline(self._timeout):
                    await conn.read_response(disconnect_on_error=False)
            except redis_errors.ResponseError:
                return True  # an error reply, read whole
            except BaseException:  # the caller's cancellation is what goes on
                return False
        return True

    async def _settle(self, conn: AbstractConnection) -> None:
        """Close ``conn`` without waiting; back to the free list if that worked, else dropped
        (never lent again: it may still have a reply on its way)."""
        try:
            await conn.disconnect(nowait=True)
        except Exception:  # never hide the call's own error
            logger.debug("closing a Redis connection failed", exc_info=True)
        finally:
            if conn.is_connected:
                self._made.remove(conn)
            else:
                self._free.append(conn)

    def _check_open(self) -> None:
        if self._closed:  # a call that outlived the store's aclose() wait
            raise redis_errors.ConnectionError("the store's connections are closed")

    async def aclose(self) -> None:
        """Disconnect every connection (a call still using one then fails) and refuse new
        calls. Every connection is closed even if closing one fails."""
        self._closed = True
        for conn in list(self._made):
            try:
                await conn.disconnect()
            except Exception:  # a slow TLS shutdown, say: close it without waiting
                logger.debug("closing a Redis connection failed", exc_info=True)
                try:
                    await conn.disconnect(nowait=True)
                except Exception:
                    logger.debug("closing a Redis connection failed", exc_info=True)


async def _clean(conn: AbstractConnection) -> None:
    """What redis-py's pool checks before lending a connection: that the server has not
    closed it and no stray bytes wait on it. If either, disconnect it (the call reconnects)."""
    try:
        if await (conn.can_read() if _CAN_READ else conn.can_read_destructive()):
            await conn.disconnect()
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
        await conn.disconnect()

"""Settled cancellation: a write that has started finishes before a cancellation leaves it.

anyio's shielded scopes keep anyio's own cancellations out, but not a plain
``task.cancel()`` (what asyncio code, ``asyncio.wait_for`` and many frameworks do): a write
cut there may still commit on the server later, out of order, and a lease taken on the
server may be lost to the client. :func:`settled` runs the write in a task of its own and,
when the caller is cancelled meanwhile, waits for that task's outcome before the
cancellation goes on. So when the caller's call raises ``CancelledError``, the write either
happened or never will, and nothing of it lands later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import anyio

__all__ = ["SETTLE_TIMEOUT", "settled", "settled_write"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")

#: Seconds a cancelled caller waits for its write's outcome before it gives up waiting (the
#: write still finishes in the background and a failure of it is logged).
SETTLE_TIMEOUT = 60.0


async def settled(
    awaitable: Awaitable[_T],
    *,
    undo: Callable[[_T], Awaitable[object]] | None = None,
    timeout: float = SETTLE_TIMEOUT,  # noqa: ASYNC109 - a bound on waiting after a cancel
) -> _T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile.

    Returns its result, or raises its error; when the caller was cancelled while it ran,
    raises that cancellation once it finished, after ``undo(result)`` when given (e.g.
    releasing a lease the caller will never know it took). On an event loop other than
    asyncio's it is run in an anyio shielded scope (which every cancellation there respects).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio
        with anyio.CancelScope(shield=True):
            return await awaitable
    task = asyncio.ensure_future(awaitable)
    cancelled: BaseException | None = None
    deadline: float | None = None
    while True:
        try:
            if deadline is None:
                result = await asyncio.shield(task)
            else:
                # Cancelled once already. anyio delivers a scope's cancellation again on every
                # turn of the event loop until the task leaves the scope, which turned this
                # loop into a busy wait that starved the write's worker thread of the GIL (a
                # cancelled SQLite fork took seconds): an anyio shield stops those repeats,
                # while a plain task.cancel() still arrives here and is waited out the same.
                with anyio.CancelScope(shield=True):
                    result = await asyncio.wait_for(asyncio.shield(task), deadline - loop.time())
            break
        except asyncio.CancelledError as exc:
            if task.cancelled():
                raise  # the write itself was cancelled (the loop is closing): nothing to wait for
            if cancelled is None:
                cancelled = exc
                deadline = loop.time() + timeout
            if task.done():
                # It finished just as the caller was cancelled: take its outcome.
                if task.exception() is not None:
                    raise cancelled from None  # it failed: nothing happened, nothing to undo
                result = task.result()
                break
        except TimeoutError:
            task.add_done_callback(_log_failure)
            logger.warning("a cancelled write did not finish within %s s; it goes on", timeout)
            assert cancelled is not None
            raise cancelled from None
        except BaseException:
            if cancelled is not None:
                raise cancelled from None
            raise
    if cancelled is not None:
        if undo is not None:
            try:
                await settled(undo(result), timeout=timeout)
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.warning("undoing a cancelled write failed", exc_info=True)
        raise cancelled
    return result


def settled_write(
    method: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Make an async store method :func:`settled`: the decorator for a backend's writes."""

    @wraps(method)
    async def settle(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await settled(method(*args, **kwargs))

    return settle


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a cancelled write failed after its caller left: %r", task.exception())

"""The lifecycle every connection-holding object shares (after anyio's ``AsyncResource``)."""

from __future__ import annotations

import threading
from asyncio import AbstractEventLoop
from asyncio import _get_running_loop as _running_loop
from types import TracebackType
from typing import TypeVar

from promptstate.exceptions import ClosedError, PromptStateError

__all__ = ["AsyncResource"]

_R = TypeVar("_R", bound="AsyncResource")


class AsyncResource:
    """An async context manager: ``__aenter__`` runs :meth:`_open` and returns the object,
    ``__aexit__`` calls :meth:`aclose`, and any use after ``aclose()`` raises
    :class:`~promptstate.exceptions.ClosedError` (via :meth:`_check_open`).

    Subclasses set ``self._closed = False`` in ``__init__``, override :meth:`_open` to connect
    eagerly, and extend :meth:`aclose` (calling ``super().aclose()``).

    One event loop per object: the first use from a running asyncio loop binds the object to
    that loop (its pooled connections, locks and worker handoffs belong to it), and a use from
    another loop raises :class:`~promptstate.exceptions.PromptStateError` at once, naming
    both loops' threads, instead of hanging or failing deep inside a driver. A class whose
    objects hold nothing bound to a loop declares ``loop_bound = False``.
    """

    #: Whether the object holds things that belong to one event loop (connections, locks).
    loop_bound: bool = True

    _closed: bool
    _loop: AbstractEventLoop | None = None
    _loop_thread: str = ""

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{type(self).__name__} is closed")
        if self.loop_bound:
            loop = _running_loop()
            if loop is not self._loop and loop is not None:
                self._check_loop(loop)

    def _check_loop(self, loop: AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            self._loop_thread = threading.current_thread().name
            return
        gone = " (now closed)" if self._loop.is_closed() else ""
        raise PromptStateError(
            f"{type(self).__name__} belongs to the event loop it was first used in (thread "
            f"{self._loop_thread!r}{gone}) and was now used from another event loop (thread "
            f"{threading.current_thread().name!r}). Its connections and locks work only in "
            "their own loop: make one per event loop (for example one per thread or per "
            "asyncio.run), or call it from its own loop (asyncio.run_coroutine_threadsafe)."
        )

    async def _open(self) -> None:
        """Connect or prepare eagerly on ``async with`` (default: nothing, stay lazy)."""

    async def aclose(self) -> None:
        """Release what the object owns. Idempotent; it can't be used afterwards."""
        self._closed = True

    async def __aenter__(self: _R) -> _R:
        self._check_open()
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

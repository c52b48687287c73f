"""The lifecycle every connection-holding object shares (after anyio's ``AsyncResource``)."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

from promptstate.exceptions import ClosedError

__all__ = ["AsyncResource"]

_R = TypeVar("_R", bound="AsyncResource")


class AsyncResource:
    """An async context manager: ``__aenter__`` runs :meth:`_open` and returns the object,
    ``__aexit__`` calls :meth:`aclose`, and any use after ``aclose()`` raises
    :class:`~promptstate.exceptions.ClosedError` (via :meth:`_check_open`).

    Subclasses set ``self._closed = False`` in ``__init__``, override :meth:`_open` to connect
    eagerly, and extend :meth:`aclose` (calling ``super().aclose()``).
    """

    _closed: bool

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{type(self).__name__} is closed")

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

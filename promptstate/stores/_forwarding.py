"""Lease methods for stores that wrap another store (``CachedStore``, ``EncryptedStore``).

A wrapper has leases exactly when its inner store has them. Forwarding them through
``__getattr__`` is invisible to type checkers and, since Python 3.12, to ``isinstance`` with a
``runtime_checkable`` protocol (it no longer calls ``__getattr__``), so the pipeline took such
a wrapper for a store without leases and serialized its turns within one process only. The
wrappers therefore pick, at construction, a subclass that declares the lease methods.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ForwardedLeases"]


class ForwardedLeases:
    """Mixin: the protected lease methods, each the public one of ``self._inner`` (which
    checks again and refuses when the inner store is closed)."""

    _inner: Any

    async def _acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the inner store's lease on ``key`` (see :class:`~promptstate.LeasingStore`)."""
        return bool(await self._inner.acquire_lease(key, owner, ttl))

    async def _renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend the inner store's lease on ``key``."""
        return bool(await self._inner.renew_lease(key, owner, ttl))

    async def _release_lease(self, key: str, owner: str) -> bool:
        """Release the inner store's lease on ``key``."""
        return bool(await self._inner.release_lease(key, owner))

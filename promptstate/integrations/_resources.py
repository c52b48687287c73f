"""What a web application holds for its lifetime: a store, a pipeline and a manager."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING

from promptstate.exceptions import ValidationError
from promptstate.pipeline import Pipeline
from promptstate.sdk import ConversationManager
from promptstate.stores.base import Store
from promptstate.stores.url import open_store

if TYPE_CHECKING:
    from promptstate.providers.base import Provider

__all__ = ["AppResources"]

logger = logging.getLogger(__name__)


class AppResources:
    """A store, a :class:`~promptstate.pipeline.Pipeline` and a
    :class:`~promptstate.sdk.ConversationManager` sharing it, opened once per application.

    Args:
        store: A store URL (opened here) or a :class:`~promptstate.Store`.
        provider: The model provider.
        max_tokens: The prompt budget of the pipeline and the manager's default.
        close: Close the store and the provider in :meth:`aclose` (default). With
            ``close=False`` a store or provider you passed in is left open for you to close;
            a store opened from a URL is always closed.

    Use it as an async context manager, or call :meth:`aclose`.
    """

    def __init__(
        self,
        store: Store | str,
        provider: Provider,
        *,
        max_tokens: int | None = None,
        close: bool = True,
    ) -> None:
        if isinstance(store, str):
            self.store: Store = open_store(store)
            self._close_store = True
        elif isinstance(store, Store):
            self.store = store
            self._close_store = close
        else:
            raise ValidationError(f"store must be a Store or a store URL, got {store!r}")
        self.provider = provider
        self._close_provider = close
        self.pipeline: Pipeline = Pipeline(provider, store=self.store, max_tokens=max_tokens)
        self.manager: ConversationManager = ConversationManager(
            provider, self.store, max_tokens=max_tokens
        )
        self._opened = False

    def __repr__(self) -> str:
        return f"AppResources(store={self.store!r}, provider={self.provider!r})"

    async def open(self) -> AppResources:
        """Connect the store (so a bad URL or a server that is down fails at startup)."""
        if not self._opened:
            await self.store.__aenter__()
            self._opened = True
            logger.info("opened %s", type(self.store).__name__)
        return self

    async def aclose(self) -> None:
        """Close the manager and pipeline, then the store and provider if they are ours."""
        await self.manager.aclose()
        await self.pipeline.aclose()
        try:
            if self._close_store:
                await self.store.aclose()
                logger.info("closed %s", type(self.store).__name__)
        finally:
            if self._close_provider:
                await self.provider.aclose()

    async def __aenter__(self) -> AppResources:
        try:
            return await self.open()
        except BaseException:
            await self.aclose()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

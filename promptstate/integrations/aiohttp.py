"""aiohttp: open the store once per application with ``cleanup_ctx``; typed ``AppKey`` s.

::

    from aiohttp import web
    from promptstate.integrations.aiohttp import PIPELINE, promptstate_context

    app = web.Application()
    app.cleanup_ctx.append(promptstate_context("redis://localhost:6379/0", provider))

    async def chat(request: web.Request) -> web.Response:
        pipe = request.app[PIPELINE]          # typed: Pipeline
        result = await pipe.execute(request.match_info["session"], "user", await request.text())
        return web.json_response({"reply": result.response.content})

At startup the context opens an :class:`~promptstate.integrations.AppResources` and stores
its parts under :data:`RESOURCES`, :data:`STORE`, :data:`PIPELINE` and :data:`MANAGER`; at
cleanup it closes them. Needs ``pip install 'promptstate[aiohttp]'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "promptstate.integrations.aiohttp needs aiohttp: pip install 'promptstate[aiohttp]'"
    ) from exc

from promptstate.integrations._resources import AppResources
from promptstate.pipeline import Pipeline
from promptstate.sdk import ConversationManager
from promptstate.stores.base import Store

if TYPE_CHECKING:
    from promptstate.providers.base import Provider

__all__ = ["MANAGER", "PIPELINE", "RESOURCES", "STORE", "promptstate_context", "setup"]

#: The application's resources (store, pipeline, manager).
RESOURCES = web.AppKey("promptstate_resources", AppResources)
#: The application's store.
STORE = web.AppKey("promptstate_store", Store)
#: The application's pipeline.
PIPELINE = web.AppKey("promptstate_pipeline", Pipeline)
#: The application's conversation manager.
MANAGER = web.AppKey("promptstate_manager", ConversationManager)


def promptstate_context(
    store: Store | str,
    provider: Provider,
    *,
    max_tokens: int | None = None,
    close: bool = True,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that opens the store (and pipeline) once for the application.

    Args:
        store: A store URL or a :class:`~promptstate.Store`.
        provider: The model provider.
        max_tokens: The prompt budget (tokens) of the pipeline and of conversations.
        close: Close the store and provider at cleanup (a store opened from a URL is always
            closed).
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with AppResources(store, provider, max_tokens=max_tokens, close=close) as res:
            app[RESOURCES] = res
            app[STORE] = res.store
            app[PIPELINE] = res.pipeline
            app[MANAGER] = res.manager
            yield

    return context


def setup(
    app: web.Application,
    store: Store | str,
    provider: Provider,
    *,
    max_tokens: int | None = None,
    close: bool = True,
) -> None:
    """Append :func:`promptstate_context` to ``app.cleanup_ctx``."""
    app.cleanup_ctx.append(promptstate_context(store, provider, max_tokens=max_tokens, close=close))

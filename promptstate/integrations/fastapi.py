"""FastAPI: open the store once per application and hand it to handlers.

::

    from typing import Annotated
    from fastapi import FastAPI
    from promptstate.integrations.fastapi import ManagerDep, PipelineDep, promptstate_lifespan

    app = FastAPI(lifespan=promptstate_lifespan("redis://localhost:6379/0", provider))

    @app.post("/chat/{session_id}")
    async def chat(session_id: str, text: str, pipe: PipelineDep) -> dict[str, str]:
        result = await pipe.execute(session_id, "user", text)
        return {"reply": result.response.content}

The lifespan opens an :class:`~promptstate.integrations.AppResources` (store, pipeline and
conversation manager) at startup, puts it in the lifespan state (``request.state``) and in
``app.state.promptstate``, and closes it at shutdown. The dependencies
(:func:`get_store`, :func:`get_pipeline`, :func:`get_manager` and their ``Annotated``
aliases :data:`StoreDep`, :data:`PipelineDep`, :data:`ManagerDep`) return those same objects
to every request. Needs ``pip install 'promptstate[fastapi]'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

try:
    from fastapi import Depends, FastAPI, Request
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "promptstate.integrations.fastapi needs FastAPI: pip install 'promptstate[fastapi]'"
    ) from exc

from promptstate.exceptions import PromptStateError
from promptstate.integrations._resources import AppResources
from promptstate.pipeline import Pipeline
from promptstate.sdk import ConversationManager
from promptstate.stores.base import Store

if TYPE_CHECKING:
    from promptstate.providers.base import Provider

__all__ = [
    "ManagerDep",
    "PipelineDep",
    "ResourcesDep",
    "STATE_KEY",
    "StoreDep",
    "get_manager",
    "get_pipeline",
    "get_resources",
    "get_store",
    "promptstate_lifespan",
]

#: The name the resources have in the lifespan state and in ``app.state``.
STATE_KEY = "promptstate"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def promptstate_lifespan(
    store: Store | str,
    provider: Provider,
    *,
    max_tokens: int | None = None,
    close: bool = True,
    lifespan: Lifespan | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    """A FastAPI ``lifespan`` that opens the store (and pipeline) once for the application.

    Args:
        store: A store URL (``"redis://..."``, ``"postgresql://..."``, ``"sqlite:///..."``)
            or a :class:`~promptstate.Store`.
        provider: The model provider used by the pipeline and the conversation manager.
        max_tokens: The prompt budget (tokens) of the pipeline and of conversations.
        close: Close the store and provider at shutdown (a store opened from a URL is always
            closed).
        lifespan: Your own lifespan, run inside this one (so it can use the store).

    Returns:
        The function to pass as ``FastAPI(lifespan=...)``.
    """

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AppResources(store, provider, max_tokens=max_tokens, close=close) as res:
            app.state.promptstate = res
            state: dict[str, Any] = {STATE_KEY: res}
            try:
                if lifespan is None:
                    yield state
                else:
                    async with lifespan(app) as inner:
                        yield {**(inner or {}), **state}
            finally:
                del app.state.promptstate

    return run


def get_resources(request: Request) -> AppResources:
    """The application's :class:`~promptstate.integrations.AppResources` (a dependency)."""
    found = getattr(request.state, STATE_KEY, None)
    if found is None:
        found = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(found, AppResources):
        raise PromptStateError(
            "no promptstate resources on this app: create it with "
            "FastAPI(lifespan=promptstate_lifespan(...))"
        )
    return found


def get_store(request: Request) -> Store:
    """The application's store (a dependency)."""
    return get_resources(request).store


def get_pipeline(request: Request) -> Pipeline:
    """The application's pipeline (a dependency)."""
    return get_resources(request).pipeline


def get_manager(request: Request) -> ConversationManager:
    """The application's conversation manager (a dependency)."""
    return get_resources(request).manager


#: ``Annotated`` aliases: declare a handler parameter as ``store: StoreDep``.
ResourcesDep = Annotated[AppResources, Depends(get_resources)]
StoreDep = Annotated[Store, Depends(get_store)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
ManagerDep = Annotated[ConversationManager, Depends(get_manager)]

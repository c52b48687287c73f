"""A chat API on FastAPI: one store for the whole app, conversations that persist.

Run it (``pip install 'promptstate[fastapi]' uvicorn``)::

    PROMPTSTATE_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:app

    curl -X POST localhost:8000/conversations -H 'content-type: application/json' \\
         -d '{"user_id": "alice", "conversation_id": "alice:1"}'
    curl -X POST localhost:8000/conversations/alice:1/messages \\
         -H 'content-type: application/json' -d '{"content": "Hi, I am Alice"}'
    curl localhost:8000/conversations/alice:1/messages
    curl 'localhost:8000/conversations/alice:1/stream?content=Still+there%3F'
    curl 'localhost:8000/users/alice/conversations?limit=20'     # newest first, paged

Without PROMPTSTATE_URL it uses ``sqlite:///promptstate.db``; without OPENAI_API_KEY (or
OPENAI_BASE_URL for a local server) it answers with a mock model.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from promptstate import (
    ConflictError,
    ConversationConfig,
    InvalidKeyError,
    NotFoundError,
    PromptStateError,
    ProviderError,
    SessionBusyError,
    SessionInfo,
    Store,
    ValidationError,
)
from promptstate.integrations.fastapi import ManagerDep, PipelineDep, promptstate_lifespan
from promptstate.providers.base import Provider

try:
    from examples._provider import make_provider
except ImportError:  # run from inside examples/
    from _provider import make_provider  # type: ignore[no-redef]


class NewConversation(BaseModel):
    user_id: str | None = None
    conversation_id: str | None = None
    system_prompt: str | None = None
    max_tokens: int | None = None


class UserMessage(BaseModel):
    content: str


def _status(exc: PromptStateError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, (ValidationError, InvalidKeyError)):
        return 422
    if isinstance(exc, SessionBusyError):
        return 503
    if isinstance(exc, ProviderError):
        return 502
    return 500


def _summary(info: SessionInfo) -> dict[str, object]:
    return {
        "id": info.conversation_id,
        "title": info.metadata.get("title"),
        "messages": info.message_count,
        "tokens": info.token_count,
        "cost": info.total_cost,
        "updated_at": info.updated_at.isoformat(),
    }


def create_app(store: Store | str | None = None, provider: Provider | None = None) -> FastAPI:
    """The application; ``store`` is a Store or URL (default: $PROMPTSTATE_URL or SQLite)."""
    url = (
        store
        if store is not None
        else os.environ.get("PROMPTSTATE_URL", "sqlite:///promptstate.db")
    )
    app = FastAPI(
        title="promptstate chat",
        lifespan=promptstate_lifespan(url, provider or make_provider(), max_tokens=4000),
    )

    @app.exception_handler(PromptStateError)
    async def on_error(request: Request, exc: PromptStateError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=_status(exc))

    @app.post("/conversations", status_code=201)
    async def new_conversation(body: NewConversation, manager: ManagerDep) -> dict[str, str]:
        conv = await manager.new_conversation(
            None,
            ConversationConfig(
                user_id=body.user_id,
                conversation_id=body.conversation_id,
                system_prompt=body.system_prompt,
                max_tokens=body.max_tokens,
            ),
        )
        return {"id": conv.id}

    @app.post("/conversations/{conversation_id}/messages")
    async def send(
        conversation_id: str, body: UserMessage, manager: ManagerDep
    ) -> dict[str, object]:
        conv = await manager.get_conversation(conversation_id)
        resp = await conv.send(body.content)
        return {
            "content": resp.content,
            "usage": {"input": resp.usage.input_tokens, "output": resp.usage.output_tokens},
            "cost": resp.cost,
        }

    @app.get("/conversations/{conversation_id}/messages")
    async def history(
        conversation_id: str, manager: ManagerDep, last: int | None = None
    ) -> list[dict[str, str]]:
        conv = await manager.get_conversation(conversation_id)
        return [{"role": m.role, "content": m.content} for m in await conv.history(last=last)]

    @app.get("/conversations/{conversation_id}/stream")
    async def stream(conversation_id: str, content: str, manager: ManagerDep) -> StreamingResponse:
        conv = await manager.get_conversation(conversation_id)

        async def body() -> AsyncIterator[str]:
            async for chunk in conv.stream(content):
                if chunk.text and not chunk.done:
                    yield chunk.text

        return StreamingResponse(body(), media_type="text/plain")

    @app.delete("/conversations/{conversation_id}", status_code=204)
    async def delete(conversation_id: str, manager: ManagerDep) -> Response:
        if not await manager.delete_conversation(conversation_id):
            raise NotFoundError(f"no conversation with id {conversation_id!r}")
        return Response(status_code=204)

    @app.get("/users/{user_id}/conversations")
    async def by_user(
        user_id: str, manager: ManagerDep, limit: int = 20, cursor: str | None = None
    ) -> dict[str, object]:
        """A user's conversations, newest first, one page at a time: pass the response's
        ``next_cursor`` as ``cursor`` for the next page (``null`` on the last)."""
        page = await manager.list_conversations(user_id=user_id, limit=limit, cursor=cursor)
        return {"items": [_summary(info) for info in page.items], "next_cursor": page.next_cursor}

    @app.post("/chat/{session_id}")
    async def chat(session_id: str, body: UserMessage, pipe: PipelineDep) -> dict[str, str]:
        """The pipeline without the conversation layer: any session id, created on use."""
        result = await pipe.execute(session_id, "user", body.content)
        return {"reply": result.response.content}

    return app


app = create_app()

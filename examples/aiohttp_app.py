"""A chat API on aiohttp: one store for the whole app, conversations that persist.

Run it (``pip install 'promptstate[aiohttp]'``)::

    PROMPTSTATE_URL=redis://localhost:6379/0 python examples/aiohttp_app.py

    curl -X POST localhost:8080/conversations \\
         -d '{"user_id": "alice", "conversation_id": "alice:1"}'
    curl -X POST localhost:8080/conversations/alice:1/messages -d '{"content": "Hi, I am Alice"}'
    curl localhost:8080/conversations/alice:1/messages
    curl 'localhost:8080/users/alice/conversations?limit=20'     # newest first, paged

Without PROMPTSTATE_URL it uses ``sqlite:///promptstate.db``; without OPENAI_API_KEY (or
OPENAI_BASE_URL for a local server) it answers with a mock model.
"""

from __future__ import annotations

import json
import os

from aiohttp import web

from promptstate import (
    ConflictError,
    ConversationConfig,
    InvalidKeyError,
    NotFoundError,
    PromptStateError,
    ProviderError,
    SessionBusyError,
    Store,
    ValidationError,
)
from promptstate.integrations.aiohttp import MANAGER, PIPELINE, promptstate_context
from promptstate.providers.base import Provider

try:
    from examples._provider import make_provider
except ImportError:  # run from inside examples/
    from _provider import make_provider  # type: ignore[no-redef]

routes = web.RouteTableDef()


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


@web.middleware
async def errors(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PromptStateError as exc:
        return web.json_response({"error": str(exc)}, status=_status(exc))


async def _json(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _opt_str(body: dict[str, object], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"{key} must be a string")
    return value


@routes.post("/conversations")
async def new_conversation(request: web.Request) -> web.Response:
    body = await _json(request)
    conv = await request.app[MANAGER].new_conversation(
        None,
        ConversationConfig(
            user_id=_opt_str(body, "user_id"),
            conversation_id=_opt_str(body, "conversation_id"),
            system_prompt=_opt_str(body, "system_prompt"),
        ),
    )
    return web.json_response({"id": conv.id}, status=201)


@routes.post("/conversations/{cid}/messages")
async def send(request: web.Request) -> web.Response:
    content = _opt_str(await _json(request), "content")
    if content is None:
        raise web.HTTPBadRequest(text="content is required")
    conv = await request.app[MANAGER].get_conversation(request.match_info["cid"])
    resp = await conv.send(content)
    return web.json_response(
        {
            "content": resp.content,
            "usage": {"input": resp.usage.input_tokens, "output": resp.usage.output_tokens},
            "cost": resp.cost,
        }
    )


@routes.get("/conversations/{cid}/messages")
async def history(request: web.Request) -> web.Response:
    last = request.query.get("last")
    if last is not None and not last.isdigit():
        raise web.HTTPBadRequest(text="last must be a number")
    conv = await request.app[MANAGER].get_conversation(request.match_info["cid"])
    messages = await conv.history(last=int(last) if last is not None else None)
    return web.json_response([{"role": m.role, "content": m.content} for m in messages])


@routes.get("/conversations/{cid}/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    conv = await request.app[MANAGER].get_conversation(request.match_info["cid"])
    response = web.StreamResponse(headers={"content-type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    async for chunk in conv.stream(request.query.get("content", "")):
        if chunk.text and not chunk.done:
            await response.write(chunk.text.encode())
    await response.write_eof()
    return response


@routes.get("/users/{user_id}/conversations")
async def by_user(request: web.Request) -> web.Response:
    """A user's conversations, newest first, one page at a time: pass the response's
    ``next_cursor`` as ``cursor`` for the next page (``null`` on the last)."""
    limit = request.query.get("limit", "20")
    if not limit.isdigit():
        raise web.HTTPBadRequest(text="limit must be a number")
    page = await request.app[MANAGER].list_conversations(
        user_id=request.match_info["user_id"],
        limit=int(limit),
        cursor=request.query.get("cursor"),
    )
    items = [
        {
            "id": info.conversation_id,
            "title": info.metadata.get("title"),
            "messages": info.message_count,
            "tokens": info.token_count,
            "cost": info.total_cost,
            "updated_at": info.updated_at.isoformat(),
        }
        for info in page.items
    ]
    return web.json_response({"items": items, "next_cursor": page.next_cursor})


@routes.delete("/conversations/{cid}")
async def delete(request: web.Request) -> web.Response:
    cid = request.match_info["cid"]
    if not await request.app[MANAGER].delete_conversation(cid):
        raise NotFoundError(f"no conversation with id {cid!r}")
    return web.Response(status=204)


@routes.post("/chat/{session}")
async def chat(request: web.Request) -> web.Response:
    """The pipeline without the conversation layer: any session id, created on use."""
    content = _opt_str(await _json(request), "content") or ""
    result = await request.app[PIPELINE].execute(request.match_info["session"], "user", content)
    return web.json_response({"reply": result.response.content})


def create_app(
    store: Store | str | None = None, provider: Provider | None = None
) -> web.Application:
    """The application; ``store`` is a Store or URL (default: $PROMPTSTATE_URL or SQLite)."""
    url = (
        store
        if store is not None
        else os.environ.get("PROMPTSTATE_URL", "sqlite:///promptstate.db")
    )
    app = web.Application(middlewares=[errors])
    app.cleanup_ctx.append(promptstate_context(url, provider or make_provider(), max_tokens=4000))
    app.add_routes(routes)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))

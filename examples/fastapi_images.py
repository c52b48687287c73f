"""Ask about an uploaded image or file, on FastAPI; the upload is stored with the conversation.

Run it (``pip install 'promptstate[fastapi]' uvicorn``)::

    uvicorn examples.fastapi_images:app

    curl -X POST 'localhost:8000/conversations/alice:1/upload?question=What+is+this%3F' \\
         -H 'content-type: image/png' --data-binary @cat.png
    curl localhost:8000/conversations/alice:1/parts

The request body is the file itself and its ``content-type`` header its media type, so no
form parsing is needed (with ``python-multipart`` installed, an ``UploadFile`` parameter gives
the same ``await file.read()`` and ``file.content_type``). Without OPENAI_API_KEY (or
OPENAI_BASE_URL) it answers with a mock model.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request

from examples._provider import make_provider
from promptstate import (
    ConversationConfig,
    FilePart,
    ImagePart,
    Message,
    NotFoundError,
    Part,
    Store,
)
from promptstate.integrations.fastapi import ManagerDep, promptstate_lifespan
from promptstate.providers.base import Provider

#: Biggest upload accepted, in bytes.
MAX_UPLOAD = 20 * 1024 * 1024


def upload_part(data: bytes, media_type: str, name: str | None = None) -> Part:
    """An image part for images, a file part for anything else."""
    if media_type.startswith("image/"):
        return ImagePart(data=data, media_type=media_type)
    return FilePart(data=data, media_type=media_type, name=name)


def create_app(store: Store | str, provider: Provider) -> FastAPI:
    app = FastAPI(lifespan=promptstate_lifespan(store, provider))

    @app.post("/conversations/{cid}/upload")
    async def upload(
        cid: str, request: Request, manager: ManagerDep, question: str, name: str | None = None
    ) -> dict[str, object]:
        data = await request.body()
        if not data or len(data) > MAX_UPLOAD:
            raise HTTPException(413 if data else 400, "send the file as the request body")
        media_type = request.headers.get("content-type", "application/octet-stream")
        part = upload_part(data, media_type.split(";")[0].strip(), name)
        try:
            conv = await manager.get_conversation(cid)
        except NotFoundError:
            conv = await manager.new_conversation(None, ConversationConfig(conversation_id=cid))
        resp = await conv.send(Message("user", question, parts=(part,)))
        return {"content": resp.content, "cost": resp.cost}

    @app.get("/conversations/{cid}/parts")
    async def parts(cid: str, manager: ManagerDep) -> list[dict[str, object]]:
        conv = await manager.get_conversation(cid)
        return [
            {"role": m.role, "kind": type(p).__name__, "bytes": len(getattr(p, "data", b"") or b"")}
            for m in await conv.history()
            for p in m.parts
        ]

    return app


app = create_app("sqlite:///promptstate.db", make_provider())

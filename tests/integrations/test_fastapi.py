"""The FastAPI integration and example app, served by uvicorn on loopback."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from fastapi import FastAPI  # noqa: E402

from examples._provider import remembering_mock  # noqa: E402
from examples.fastapi_app import create_app  # noqa: E402
from promptstate import MemoryStore  # noqa: E402
from promptstate.integrations.fastapi import (  # noqa: E402
    ManagerDep,
    PipelineDep,
    StoreDep,
    promptstate_lifespan,
)
from promptstate.providers.mock import MockProvider  # noqa: E402
from tests.integrations.support import CountingStore, loopback_socket, many_sessions  # noqa: E402

pytestmark = pytest.mark.anyio


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; stop it on exit."""
    sock = loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


async def test_many_concurrent_sessions_share_one_store_and_shut_down_cleanly() -> None:
    store = CountingStore()
    provider = MockProvider(remembering_mock)
    app = create_app(store, provider)
    seen: set[tuple[int, int, int]] = set()

    @app.get("/_ids")
    async def ids(store: StoreDep, pipe: PipelineDep, manager: ManagerDep) -> list[int]:
        seen.add((id(store), id(pipe), id(manager)))
        return [id(store)]

    with serve(app) as base:
        await many_sessions(base, sessions=30, turns=4)
        async with httpx.AsyncClient(base_url=base) as client:
            responses = [await client.get("/_ids") for _ in range(5)]
            assert all(r.json() == [id(store)] for r in responses)

            r = await client.get("/users/u3/conversations")
            assert [c["id"] for c in r.json()["items"]] == ["user3:conv3"]

            r = await client.get("/conversations/user0:conv0/stream", params={"content": "more"})
            assert r.status_code == 200
            assert r.text == "You said 'more'; before that, '0.3'. This is turn 5."
            r = await client.get("/conversations/user0:conv0/messages", params={"last": 1})
            assert r.json() == [{"role": "assistant", "content": r.json()[0]["content"]}]
            assert r.json()[0]["content"].endswith("turn 5.")

            r = await client.post("/chat/raw-session", json={"content": "hello"})
            assert r.json() == {"reply": "You said 'hello'. This is our first turn."}

            r = await client.get("/conversations/nope/messages")
            assert r.status_code == 404
            assert "nope" in r.json()["error"]
            r = await client.post("/conversations", json={"conversation_id": "user0:conv0"})
            assert r.status_code == 409
            assert (await client.delete("/conversations/user0:conv0")).status_code == 204
            assert (await client.delete("/conversations/user0:conv0")).status_code == 404
        assert not store.closed
    assert len(seen) == 1  # the same store, pipeline and manager for every request
    assert store.opens == 1  # opened once for the app, never per request
    assert store.loads >= 30 * 4
    assert store.closed  # closed at shutdown
    with pytest.raises(Exception, match="closed"):
        await provider.complete([])


async def test_state_survives_a_server_restart(tmp_path: Path) -> None:
    pytest.importorskip("promptstate.stores.sqlite")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with serve(create_app(url, MockProvider(remembering_mock))) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            await client.post("/conversations", json={"conversation_id": "c1"})
            await client.post("/conversations/c1/messages", json={"content": "first"})
    with serve(create_app(url, MockProvider(remembering_mock))) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.post("/conversations/c1/messages", json={"content": "second"})
            assert r.json()["content"] == "You said 'second'; before that, 'first'. This is turn 2."


async def test_bad_store_url_fails_at_startup() -> None:
    app = FastAPI(lifespan=promptstate_lifespan("nope://x", MockProvider(["x"])))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="critical"))
    sock = loopback_socket()
    exits: list[object] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits with status 3 when startup fails
            exits.append(exc.code)

    try:
        with anyio.fail_after(15):
            await anyio.to_thread.run_sync(run)
    finally:
        sock.close()
    assert exits == [3]
    assert not server.started


async def test_user_lifespan_runs_inside() -> None:
    from contextlib import asynccontextmanager

    events: list[str] = []

    @asynccontextmanager
    async def mine(app: FastAPI):  # type: ignore[no-untyped-def]
        events.append(f"start {type(app.state.promptstate.store).__name__}")
        yield {"answer": 42}
        events.append("stop")

    store = CountingStore()
    app = FastAPI(lifespan=promptstate_lifespan(store, MockProvider(["x"]), lifespan=mine))

    @app.get("/")
    async def root(store: StoreDep) -> list[object]:
        return [type(store).__name__]

    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/")).json() == ["CountingStore"]
    assert events == ["start CountingStore", "stop"]
    assert store.closed


def test_without_fastapi_the_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "promptstate.integrations.fastapi", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(ImportError, match=r"pip install 'promptstate\[fastapi\]'"):
        import promptstate.integrations.fastapi  # noqa: F401


async def test_list_my_conversations_newest_first_a_page_at_a_time() -> None:
    app = create_app(MemoryStore(), MockProvider(remembering_mock))
    with serve(app) as base:
        await _list_pages(base)


async def _list_pages(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        for i in range(5):
            body = {"user_id": "alice", "conversation_id": f"alice:{i}"}
            assert (await client.post("/conversations", json=body)).status_code == 201
        await client.post("/conversations", json={"user_id": "bob", "conversation_id": "bob:0"})
        await client.post("/conversations/alice:1/messages", json={"content": "hi"})
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
            r = await client.get("/users/alice/conversations", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["items"]) <= 2
            seen += [c["id"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ["alice:1", "alice:4", "alice:3", "alice:2", "alice:0"]
        first = (await client.get("/users/alice/conversations")).json()["items"][0]
        assert (first["id"], first["messages"]) == ("alice:1", 2)
        assert first["tokens"] > 0
        r = await client.get("/users/alice/conversations", params={"cursor": "garbage"})
        assert r.status_code == 422
        r = await client.get("/users/nobody/conversations")
        assert r.json() == {"items": [], "next_cursor": None}


async def test_image_upload_example_stores_the_bytes() -> None:
    from examples.fastapi_images import create_app as create_images_app
    from promptstate import ImagePart, MemoryStore, Message

    seen: list[Message] = []

    def model(messages: list[Message]) -> str:
        seen.extend(messages)
        return f"I see {len(messages[-1].parts)} attachment(s)."

    store = MemoryStore()
    image = bytes(range(256)) * 10
    with serve(create_images_app(store, MockProvider(model))) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            sent = await client.post(
                "/conversations/alice:1/upload",
                params={"question": "What is this?"},
                content=image,
                headers={"content-type": "image/png"},
            )
            assert sent.status_code == 200, sent.text
            assert sent.json()["content"] == "I see 1 attachment(s)."
            pdf = await client.post(
                "/conversations/alice:1/upload",
                params={"question": "And this?", "name": "r.pdf"},
                content=b"%PDF-1.7",
                headers={"content-type": "application/pdf"},
            )
            assert pdf.status_code == 200, pdf.text
            listed = await client.get("/conversations/alice:1/parts")
            empty = await client.post(
                "/conversations/alice:1/upload", params={"question": "?"}, content=b""
            )
            history = (await store.get("alice:1")).messages  # before shutdown closes it
    assert listed.json() == [
        {"role": "user", "kind": "ImagePart", "bytes": 2560},
        {"role": "user", "kind": "FilePart", "bytes": 8},
    ]
    assert empty.status_code == 400
    assert seen[0].parts == (ImagePart(data=image, media_type="image/png"),)
    assert history[0].parts == (ImagePart(data=image, media_type="image/png"),)

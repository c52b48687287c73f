"""The aiohttp integration and example app, served by aiohttp's runner on loopback."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

pytest.importorskip("aiohttp")

from aiohttp import web

from examples._provider import remembering_mock
from examples.aiohttp_app import create_app
from promptstate import MemoryStore, Store
from promptstate.integrations.aiohttp import (
    MANAGER,
    PIPELINE,
    RESOURCES,
    STORE,
    promptstate_context,
    setup,
)
from promptstate.pipeline import Pipeline
from promptstate.providers.mock import MockProvider
from tests.integrations.support import CountingStore, loopback_socket, many_sessions

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` with aiohttp's AppRunner on a free loopback port; clean up on exit."""
    sock = loopback_socket()
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


async def test_many_concurrent_sessions_share_one_store_and_shut_down_cleanly() -> None:
    store = CountingStore()
    provider = MockProvider(remembering_mock)
    app = create_app(store, provider)
    seen: set[tuple[int, int, int]] = set()

    async def ids(request: web.Request) -> web.Response:
        s: Store = request.app[STORE]
        p: Pipeline = request.app[PIPELINE]
        seen.add((id(s), id(p), id(request.app[MANAGER])))
        return web.json_response([id(s)])

    app.router.add_get("/_ids", ids)
    async with serve(app) as base:
        assert app[RESOURCES].store is store
        await many_sessions(base, sessions=30, turns=4)
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(5):
                assert (await client.get("/_ids")).json() == [id(store)]
            r = await client.get("/conversations/user0:conv0/stream", params={"content": "more"})
            assert r.text == "You said 'more'; before that, '0.3'. This is turn 5."
            r = await client.post("/chat/raw", json={"content": "hello"})
            assert r.json() == {"reply": "You said 'hello'. This is our first turn."}
            r = await client.get("/conversations/nope/messages")
            assert r.status_code == 404
            r = await client.post("/conversations", json={"conversation_id": "user0:conv0"})
            assert r.status_code == 409
            r = await client.post("/conversations", content=b"not json")
            assert r.status_code == 400
            assert (await client.delete("/conversations/user0:conv0")).status_code == 204
        assert not store.closed
    assert len(seen) == 1
    assert store.opens == 1
    assert store.closed
    with pytest.raises(Exception, match="closed"):
        await provider.complete([])


async def test_setup_and_borrowed_resources() -> None:
    store = CountingStore()
    provider = MockProvider(["hi"])
    app = web.Application()
    setup(app, store, provider, close=False)

    async def hello(request: web.Request) -> web.Response:
        result = await request.app[PIPELINE].execute("s", "user", "hello")
        return web.Response(text=result.response.content)

    app.router.add_get("/", hello)
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/")).text == "hi"
    assert not store.closed  # borrowed with close=False
    assert len(await store.load("s")) == 2
    await store.aclose()


async def test_bad_store_url_fails_at_startup() -> None:
    app = web.Application()
    app.cleanup_ctx.append(promptstate_context("nope://x", MockProvider(["x"])))
    runner = web.AppRunner(app)
    with pytest.raises(Exception, match="unknown store URL scheme"):
        await runner.setup()
    await runner.cleanup()


def test_without_aiohttp_the_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "promptstate.integrations.aiohttp", raising=False)
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    with pytest.raises(ImportError, match=r"pip install 'promptstate\[aiohttp\]'"):
        import promptstate.integrations.aiohttp  # noqa: F401


async def test_list_my_conversations_newest_first_a_page_at_a_time() -> None:
    app = create_app(MemoryStore(), MockProvider(remembering_mock))
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
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

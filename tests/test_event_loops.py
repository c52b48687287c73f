"""One event loop per object: a pipeline, a manager or a store used from an event loop other
than the one it was first used in raises a clear PromptStateError at once (naming both
threads), instead of hanging (SQLite did) or failing with a bare RuntimeError deep in a
driver (Redis and PostgreSQL did). Each store's own check is in the conformance suite."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from promptstate import (
    ConversationManager,
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    PromptStateError,
    SQLiteStore,
)

pytestmark = pytest.mark.anyio


def _reply(messages: list[Message]) -> str:
    return f"{len(messages)} messages"


async def _from_another_loop(call: Callable[[], Awaitable[object]]) -> object:
    """Run ``call()`` under ``asyncio.run`` in a new thread named "worker-2"; its result or
    error (a hang fails the test)."""
    outcome: list[object] = []

    def run() -> None:
        async def bounded() -> object:
            return await asyncio.wait_for(call(), 10)  # type: ignore[arg-type]

        try:
            outcome.append(asyncio.run(bounded()))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="worker-2")
    thread.start()
    await anyio.to_thread.run_sync(thread.join, 20)
    assert outcome, "the call from another event loop never returned"
    return outcome[0]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_pipeline_refuses_another_loop_and_carries_on_in_its_own(
    tmp_path: Path, kind: str
) -> None:
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "p.db")
    async with store, Pipeline(MockProvider(_reply), store=store) as pipe:
        await pipe.execute("s", "user", "one")
        error = await _from_another_loop(lambda: pipe.execute("s", "user", "two"))
        assert isinstance(error, PromptStateError), error
        assert "Pipeline" in str(error)
        assert "worker-2" in str(error)
        assert threading.current_thread().name in str(error)
        assert [m.content for m in await store.load("s")] == ["one", "1 messages"]
        await pipe.execute("s", "user", "three")
        assert len(await store.load("s")) == 4


async def test_a_manager_refuses_another_loop(tmp_path: Path) -> None:
    async with ConversationManager(
        MockProvider(_reply), store=SQLiteStore(tmp_path / "m.db")
    ) as manager:
        conversation = await manager.new_conversation()
        await conversation.send("one")
        error = await _from_another_loop(lambda: manager.get_conversation(conversation.id))
        assert isinstance(error, PromptStateError), error
        assert "ConversationManager" in str(error)
        error = await _from_another_loop(lambda: conversation.send("two"))
        assert isinstance(error, PromptStateError), error
        await conversation.send("three")
        assert [m.content for m in await conversation.history()][-2:] == ["three", "3 messages"]

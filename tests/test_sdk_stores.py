"""Conversations and backups on the real backends: SQLite, Redis and PostgreSQL.

Each test gets isolated stores (a tmp file, a unique Redis key prefix, a unique PostgreSQL
table) from the ``stores`` fixture (tests/conftest.py), which removes what they wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from promptstate import (
    ConversationConfig,
    ConversationManager,
    Message,
    State,
    Store,
    export_states,
    import_states,
)
from promptstate.providers.mock import MockProvider
from promptstate.testing._backends import StoreMaker
from tests.backends import params

pytestmark = pytest.mark.anyio

Opener = Callable[[], Store]


@pytest.fixture(params=params("sqlite", "redis", "postgres"))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opener(backend: str, stores: StoreMaker) -> Opener:
    """A function that opens a new store object on the same isolated data, each call."""
    return stores.opener(backend)


def _reply(messages: list[Message]) -> str:
    system = messages[0].content if messages and messages[0].role == "system" else "-"
    users = [m.content for m in messages if m.role == "user"]
    return f"[{system}] turn {len(users)}: {users[-1]}"


async def test_conversation_resumes_on_a_new_store_object(opener: Opener) -> None:
    async with opener() as store, ConversationManager(MockProvider(_reply), store) as manager:
        conv = await manager.new_conversation(
            None,
            ConversationConfig(
                conversation_id="u1:c{1}%",  # braces and % are ordinary characters
                user_id="u1",
                system_prompt="Be nice.",
                metadata={"tier": "gold"},
            ),
        )
        await conv.send("one")
        await conv.send("two")
    # A new store object (as a new process would have) on the same data.
    async with opener() as store, ConversationManager(MockProvider(_reply), store) as manager:
        conv = await manager.get_conversation("u1:c{1}%")
        assert conv.system_prompt == "Be nice."
        assert conv.metadata == {"tier": "gold"}
        resp = await conv.send("three")
        assert resp.content == "[Be nice.] turn 3: three"
        state = await conv.state()
        assert len(state.messages) == 6
        assert state.user_id == "u1"
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        branch = await conv.fork("u1:c{1}%:b")
        await branch.send("branch")
        assert len(await conv.history()) == 6
        page = await manager.list_conversations("u1:c{1}%:")
        assert [i.conversation_id for i in page.items] == ["u1:c{1}%:b"]


async def test_rich_turns_through_the_manager_and_the_pipeline(opener: Opener) -> None:
    from promptstate import ImagePart, Pipeline, ReasoningPart, TextPart

    image = bytes(range(256)) * 64
    seen: list[list[Message]] = []

    def answer(messages: list[Message]) -> Message:
        seen.append(messages)
        last = messages[-1]
        sizes = [len(p.data) for p in last.parts if isinstance(p, ImagePart) and p.data]
        return Message(
            "assistant",
            f"{last.text} / {sizes}",
            parts=(ReasoningPart(text="counting bytes", signature="c2ln", provider="anthropic"),),
        )

    question = Message(
        "user", "how big?", parts=(ImagePart(data=image, media_type="image/png"), TextPart("pls"))
    )
    async with opener() as store, ConversationManager(MockProvider(answer), store) as manager:
        conv = await manager.new_conversation(None, ConversationConfig(conversation_id="rich"))
        resp = await conv.send(question)
        assert resp.content == "how big?\npls / [16384]"
        assert resp.parts == (
            ReasoningPart(text="counting bytes", signature="c2ln", provider="anthropic"),
        )
        async with Pipeline(MockProvider(answer), store=store) as pipeline:
            result = await pipeline.execute("rich", question)
        assert result.response.parts == resp.parts
    # The second call saw the first turn whole, parts included.
    assert seen[1][-3].parts == question.parts
    assert seen[1][-2].parts == resp.parts
    async with opener() as store:  # a new store object on the same data
        history = await store.load("rich")
    assert [m.parts for m in history] == [question.parts, resp.parts] * 2
    assert [m.content for m in history if m.role == "user"] == ["how big?"] * 2


async def test_two_store_objects_sending_at_once_lose_nothing(opener: Opener) -> None:
    async with (
        opener() as one,
        opener() as two,
        ConversationManager(MockProvider(_reply), one) as a,
        ConversationManager(MockProvider(_reply), two) as b,
    ):
        await a.new_conversation(None, ConversationConfig(conversation_id="shared"))
        ca, cb = await a.get_conversation("shared"), await b.get_conversation("shared")
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(ca.send, f"a{i}")
                tg.start_soon(cb.send, f"b{i}")
        history = await ca.history()
        assert len(history) == 24
        assert [m.role for m in history] == ["user", "assistant"] * 12


async def test_backup_round_trip_between_stores(opener: Opener, tmp_path: Path) -> None:
    from promptstate import MemoryStore

    source = MemoryStore()
    for i in range(25):
        await source.set(
            f"k{i:02d}",
            State(
                conversation_id=f"k{i:02d}",
                user_id="u",
                messages=[Message("user", f"hello {i}"), Message("assistant", "hi")],
                total_cost=0.5,
                metadata={"n": i},
            ),
        )
    lines = [line async for line in export_states(source)]
    async with opener() as store:
        result = await import_states(store, lines)
        assert (result.imported, result.skipped) == (25, 0)
        again = await import_states(store, lines)
        assert (again.imported, again.skipped) == (0, 25)
        back = [line async for line in export_states(store, "k1")]
        assert len(back) == 10
        for key in ("k00", "k24"):
            a, b = await source.get(key), await store.get(key)
            assert (b.messages, b.metadata, b.total_cost, b.user_id) == (
                a.messages,
                a.metadata,
                a.total_cost,
                a.user_id,
            )


async def test_branch_undo_open_and_list_on_every_backend(opener: Opener) -> None:
    async with opener() as store, ConversationManager(MockProvider(_reply), store) as manager:
        config = ConversationConfig(
            conversation_id="u1:chat", user_id="u1", system_prompt="Be nice."
        )
        conv = await manager.open_conversation(None, config)  # created
        for text in ("one", "two", "three"):
            await conv.send(text)
        again = await manager.open_conversation(None, config)  # got, settings as stored
        assert (again.id, again.system_prompt) == ("u1:chat", "Be nice.")
        assert len(await again.history()) == 6
        # Edit and resend: a branch before the second user message, then a new one on it.
        branch = await conv.branch("u1:chat:edit", at=2)
        assert branch.system_prompt == "Be nice."
        reply = await branch.send("TWO")
        assert reply.content == "[Be nice.] turn 2: TWO"
        assert [m.content for m in await conv.history()][-2:] == [
            "three",
            "[Be nice.] turn 3: three",
        ]
        # Regenerate: drop the last answer with its question, send the question again.
        removed = await conv.undo()
        assert [m.content for m in removed] == ["three", "[Be nice.] turn 3: three"]
        assert await store.count("u1:chat") == 4
        assert (await conv.send(removed[0].content)).content == "[Be nice.] turn 3: three"
        assert [m.content for m in await conv.undo(turns=2)] == [
            "two",
            "[Be nice.] turn 2: two",
            "three",
            "[Be nice.] turn 3: three",
        ]
        state = await conv.state()
        assert [m.content for m in state.messages] == ["one", "[Be nice.] turn 1: one"]
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        assert len(await conv.undo(turns=5)) == 2
        assert await conv.undo() == []
        page = await manager.list_conversations(user_id="u1")
        assert [i.conversation_id for i in page.items] == ["u1:chat", "u1:chat:edit"]
        assert [i.message_count for i in page.items] == [0, 4]

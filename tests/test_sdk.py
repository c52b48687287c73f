"""ConversationManager and Conversation on a MemoryStore (and SQLite across processes)."""

from __future__ import annotations

import sys
import textwrap
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from promptstate import (
    ClosedError,
    ConflictError,
    ConversationConfig,
    ConversationManager,
    CorruptStateError,
    InvalidKeyError,
    MemoryStore,
    Message,
    NotFoundError,
    PromptPackError,
    ProviderError,
    State,
    ToolCall,
    ValidationError,
)
from promptstate.providers.mock import MockProvider
from promptstate.sdk import METADATA_KEY, Response

pytestmark = pytest.mark.anyio

PACKS = Path(__file__).parent / "packs"
ROOT = Path(__file__).resolve().parent.parent


def _echo(messages: list[Message]) -> str:
    users = [m for m in messages if m.role == "user"]
    return f"turn {len(users)}: {users[-1].content if users else ''}"


def _alice() -> ConversationConfig:
    return ConversationConfig(
        user_id="u1",
        conversation_id="conv-1",
        prompt_name="assistant",
        variables={"user_name": "Alice"},
        metadata={"session_id": "sess-9"},
    )


async def test_send_uses_the_pack_and_stores_the_turn() -> None:
    provider = MockProvider(_echo, price=(0.001, 0.002))
    store = MemoryStore()
    async with ConversationManager(provider, store) as manager:
        pack = manager.load_pack(PACKS / "assistant.pack.json")
        conv = await manager.new_conversation(pack, _alice())
        assert conv.id == "conv-1"
        assert conv.user_id == "u1"
        assert conv.metadata == {"session_id": "sess-9"}
        assert conv.system_prompt == "You help Alice in English. Sign off as Ada."

        resp = await conv.send("My name is Alice")
        assert isinstance(resp, Response)
        assert resp.content == "turn 1: My name is Alice"
        assert resp.usage.input_tokens > 0
        assert resp.usage.output_tokens > 0
        assert resp.cost == pytest.approx(
            resp.usage.input_tokens * 0.001 + resp.usage.output_tokens * 0.002
        )
        # The model saw the rendered system prompt first, and the pack's options.
        first = provider.last_messages[0]
        assert (first.role, first.content) == ("system", conv.system_prompt)
        assert provider.last_options["temperature"] == 0.2
        assert provider.last_options["max_tokens"] == 300
        assert [t["function"]["name"] for t in provider.last_options["tools"]] == ["get_weather"]

        resp2 = await conv.send("And again")
        assert resp2.content == "turn 2: And again"
        state = await conv.state()
        assert [m.role for m in state.messages] == ["user", "assistant", "user", "assistant"]
        assert state.user_id == "u1"
        assert state.metadata["session_id"] == "sess-9"
        assert state.total_cost == pytest.approx(resp.cost + resp2.cost)
        assert state.token_count == sum(m.tokens or 0 for m in state.messages) > 0
        settings = state.metadata[METADATA_KEY]
        assert settings["pack"] == "test-assistant"
        assert settings["prompt"] == "assistant"
        assert settings["variables"] == {"user_name": "Alice"}
        # The system prompt is sent every turn, never stored as a message.
        assert all(m.role != "system" for m in state.messages)
    assert not store.closed  # borrowed


async def test_get_conversation_in_a_new_manager_carries_on() -> None:
    store = MemoryStore()
    first = ConversationManager(MockProvider(_echo), store)
    pack = first.load_pack(PACKS / "assistant.pack.json")
    conv = await first.new_conversation(pack, _alice())
    await conv.send("hello")
    await first.aclose()

    provider = MockProvider(_echo)
    async with ConversationManager(provider, store) as second:  # no pack loaded here
        again = await second.get_conversation("conv-1")
        assert again.prompt_name == "assistant"
        assert again.pack_id == "test-assistant"
        assert again.variables == {"user_name": "Alice"}
        assert again.user_id == "u1"
        assert again.metadata == {"session_id": "sess-9"}
        resp = await again.send("still me")
        assert resp.content == "turn 2: still me"
        assert provider.last_messages[0].content == "You help Alice in English. Sign off as Ada."
        assert provider.last_options["temperature"] == 0.2
        with pytest.raises(NotFoundError, match="no conversation with id 'nope'"):
            await second.get_conversation("nope")


async def test_get_conversation_from_another_process(tmp_path: Path) -> None:
    pytest.importorskip("promptstate.stores.sqlite")
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with ConversationManager(MockProvider(_echo), url) as manager:
        pack = manager.load_pack(PACKS / "assistant.pack.json")
        conv = await manager.new_conversation(pack, _alice())
        await conv.send("first")
    script = textwrap.dedent(
        f"""
        import anyio
        from promptstate import ConversationManager
        from promptstate.providers.mock import MockProvider

        def reply(messages):
            return messages[0].content + " | " + str(len(messages))

        async def main():
            async with ConversationManager(MockProvider(reply), {url!r}) as manager:
                conv = await manager.get_conversation("conv-1")
                print((await conv.send("second")).content)

        anyio.run(main)
        """
    )
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-c", script], cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr.decode()
    # The other process saw the same system prompt and the first turn from the store.
    assert done.stdout.decode().strip() == "You help Alice in English. Sign off as Ada. | 4"
    async with ConversationManager(MockProvider(_echo), url) as manager:
        conv = await manager.get_conversation("conv-1")
        assert [m.content for m in await conv.history()][-2:] == [
            "second",
            "You help Alice in English. Sign off as Ada. | 4",
        ]


async def test_new_conversation_errors_store_nothing() -> None:
    store = MemoryStore()
    async with ConversationManager(MockProvider(_echo), store) as manager:
        pack = manager.load_pack(PACKS / "assistant.pack.json")
        with pytest.raises(PromptPackError, match="required variable 'user_name' is not set"):
            await manager.new_conversation(
                pack, ConversationConfig(conversation_id="c", prompt_name="assistant")
            )
        with pytest.raises(PromptPackError, match="several prompts"):
            await manager.new_conversation(pack, ConversationConfig(conversation_id="c"))
        with pytest.raises(PromptPackError, match="no pack with id 'other'"):
            await manager.new_conversation("other", ConversationConfig(conversation_id="c"))
        with pytest.raises(PromptPackError, match="without a pack"):
            await manager.new_conversation(None, ConversationConfig(prompt_name="x"))
        with pytest.raises(ValidationError, match="reserved key"):
            await manager.new_conversation(None, ConversationConfig(metadata={METADATA_KEY: 1}))
        with pytest.raises(ValidationError, match="max_tokens"):
            await manager.new_conversation(None, ConversationConfig(max_tokens=0))
        with pytest.raises(ValidationError, match="JSON-compatible"):
            await manager.new_conversation(None, ConversationConfig(metadata={"x": object()}))
        with pytest.raises(InvalidKeyError, match="conversation_id"):
            await manager.new_conversation(None, ConversationConfig(conversation_id=""))
        assert [s async for s in store.list_all()] == []

        await manager.new_conversation("test-assistant", _alice())  # a loaded pack by id
        with pytest.raises(ConflictError, match="'conv-1' exists already"):
            await manager.new_conversation(pack, _alice())


async def test_conversation_without_pack_and_random_id() -> None:
    provider = MockProvider(_echo)
    async with ConversationManager(provider) as manager:
        conv = await manager.new_conversation()
        assert len(conv.id) == 32
        assert conv.system_prompt is None
        await conv.send("hi")
        assert provider.last_messages[0].role == "user"
        other = await manager.new_conversation(
            None, ConversationConfig(system_prompt="Be brief.", options={"temperature": 0})
        )
        await other.send("hi")
        assert provider.last_messages[0].content == "Be brief."
        assert provider.last_options == {"temperature": 0}
        await other.send("hi", temperature=1, seed=3)  # per-turn options override
        assert provider.last_options == {"temperature": 1, "seed": 3}


async def test_session_written_without_the_sdk_can_be_resumed() -> None:
    store = MemoryStore()
    await store.append("raw", [Message("user", "a"), Message("assistant", "b")])
    async with ConversationManager(MockProvider(_echo), store) as manager:
        conv = await manager.get_conversation("raw")
        assert conv.system_prompt is None
        assert (await conv.send("c")).content == "turn 2: c"


async def test_fork_history_and_delete() -> None:
    async with ConversationManager(MockProvider(_echo)) as manager:
        pack = manager.load_pack(PACKS / "assistant.pack.json")
        conv = await manager.new_conversation(pack, _alice())
        for text in ("one", "two", "three"):
            await conv.send(text)
        assert [m.content for m in await conv.history(last=2)] == ["three", "turn 3: three"]
        assert len(await conv.history()) == 6

        branch = await conv.fork("conv-2")
        assert branch.id == "conv-2"
        assert branch.system_prompt == conv.system_prompt
        assert (await branch.send("branch only")).content == "turn 4: branch only"
        assert len(await conv.history()) == 6  # the original is untouched
        assert len(await branch.history()) == 8
        assert (await branch.state()).metadata["session_id"] == "sess-9"
        with pytest.raises(ConflictError):
            await conv.fork("conv-2")
        anonymous = await conv.fork()
        assert len(anonymous.id) == 32

        assert await conv.delete() is True
        assert await conv.delete() is False
        assert await conv.history() == []
        with pytest.raises(NotFoundError):
            await conv.state()
        with pytest.raises(NotFoundError):
            await conv.fork("conv-3")
        assert len(await branch.history()) == 8


async def test_stream_yields_text_and_stores_after_the_end() -> None:
    async with ConversationManager(MockProvider(_echo)) as manager:
        conv = await manager.new_conversation()
        chunks = [chunk async for chunk in conv.stream("hello there")]
        assert chunks[-1].done
        assert chunks[-1].message is not None
        assert chunks[-1].message.content == "turn 1: hello there"
        assert "".join(c.text for c in chunks if not c.done) == "turn 1: hello there"
        assert [m.content for m in await conv.history()] == ["hello there", "turn 1: hello there"]

        # Leaving a stream early stores nothing.
        async with aclosing(conv.stream("abandoned")) as stream:
            async for _ in stream:
                break
        assert len(await conv.history()) == 2


async def test_max_tokens_truncates_what_the_model_sees() -> None:
    provider = MockProvider(_echo)
    async with ConversationManager(provider) as manager:
        conv = await manager.new_conversation(
            None, ConversationConfig(system_prompt="S", max_tokens=60)
        )
        for i in range(20):
            await conv.send(f"message number {i} " + "x" * 40)
        seen = provider.last_messages
        assert seen[0].content == "S"  # the system prompt is kept
        assert seen[-1].content.startswith("message number 19")
        assert len(seen) < 10
        assert len(await conv.history()) == 40  # the store keeps everything

        unlimited = await manager.new_conversation()
        for i in range(5):
            await unlimited.send(f"m{i} " + "x" * 40)
        assert len(provider.last_messages) == 9


async def test_manager_default_max_tokens_applies() -> None:
    provider = MockProvider(_echo)
    async with ConversationManager(provider, max_tokens=50) as manager:
        conv = await manager.new_conversation()
        for i in range(10):
            await conv.send("y" * 60 + str(i))
        assert len(provider.last_messages) < 5


async def test_provider_failure_stores_nothing() -> None:
    provider = MockProvider(["fine", ProviderError("model down", status_code=503)])
    async with ConversationManager(provider) as manager:
        conv = await manager.new_conversation()
        await conv.send("one")
        with pytest.raises(ProviderError, match="model down"):
            await conv.send("two")
        assert [m.content for m in await conv.history()] == ["one", "fine"]


async def test_tool_calls_round_trip() -> None:
    call = ToolCall("call-1", "get_weather", '{"city": "Paris"}')
    provider = MockProvider([Message("assistant", "", tool_calls=(call,)), "It is sunny."])
    async with ConversationManager(provider) as manager:
        conv = await manager.new_conversation()
        resp = await conv.send("Weather in Paris?")
        assert resp.tool_calls == (call,)
        final = await conv.send(Message("tool", '{"sky": "clear"}', tool_call_id="call-1"))
        assert final.content == "It is sunny."
        roles = [m.role for m in await conv.history()]
        assert roles == ["user", "assistant", "tool", "assistant"]


async def test_concurrent_sends_from_two_handles_lose_nothing() -> None:
    async def slow(messages: list[Message]) -> str:
        await anyio.sleep(0.001)
        return "ok"

    store = MemoryStore()
    async with (
        ConversationManager(MockProvider(slow), store) as one,
        ConversationManager(MockProvider(slow), store) as two,
    ):
        await one.new_conversation(None, ConversationConfig(conversation_id="shared"))
        a, b = await one.get_conversation("shared"), await two.get_conversation("shared")

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(a.send, f"a{i}")
                tg.start_soon(b.send, f"b{i}")
        history = await a.history()
        assert len(history) == 40
        # Turns never interleave: every user message is followed by its answer.
        assert [m.role for m in history] == ["user", "assistant"] * 20


async def test_list_conversations_by_prefix_and_user() -> None:
    async with ConversationManager(MockProvider(_echo)) as manager:
        for key, user in (("alice:1", "alice"), ("alice:2", "alice"), ("bob:1", "bob")):
            await manager.new_conversation(
                None, ConversationConfig(conversation_id=key, user_id=user)
            )
        page = await manager.list_conversations("alice:")
        assert sorted(i.conversation_id for i in page.items) == ["alice:1", "alice:2"]
        assert page.next_cursor is None
        page = await manager.list_conversations(user_id="bob")
        assert [i.conversation_id for i in page.items] == ["bob:1"]
        first = await manager.list_conversations(order="created_asc", limit=2)
        assert [i.conversation_id for i in first.items] == ["alice:1", "alice:2"]
        rest = await manager.list_conversations(
            order="created_asc", limit=2, cursor=first.next_cursor
        )
        assert ([i.conversation_id for i in rest.items], rest.next_cursor) == (["bob:1"], None)
        with pytest.raises(ValidationError):
            await manager.list_conversations(limit=0)
        assert await manager.delete_conversation("bob:1") is True
        assert await manager.delete_conversation("bob:1") is False


async def test_ownership_and_close() -> None:
    manager = ConversationManager(MockProvider(_echo))
    conv = await manager.new_conversation()
    owned = manager.store
    await manager.aclose()
    await manager.aclose()  # idempotent
    assert owned.closed
    assert manager.closed
    with pytest.raises(ClosedError):
        await manager.new_conversation()
    with pytest.raises(ClosedError):
        await conv.send("hi")
    with pytest.raises(ClosedError):
        await manager.get_conversation(conv.id)

    async with ConversationManager(MockProvider(_echo), "memory://") as by_url:
        assert isinstance(by_url.store, MemoryStore)
    assert by_url.store.closed


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValidationError, match="provider"):
        ConversationManager(object())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="store must be"):
        ConversationManager(MockProvider(_echo), 42)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="max_tokens"):
        ConversationManager(MockProvider(_echo), max_tokens=-1)
    with pytest.raises(ValidationError, match="unknown store URL scheme"):
        ConversationManager(MockProvider(_echo), "nope://x")


async def test_corrupt_settings_are_reported() -> None:
    store = MemoryStore()
    await store.set("bad", State(conversation_id="bad", metadata={METADATA_KEY: {"variables": 3}}))
    async with ConversationManager(MockProvider(_echo), store) as manager:
        with pytest.raises(CorruptStateError, match="'bad'"):
            await manager.get_conversation("bad")


async def test_one_pipeline_runs_every_budget() -> None:
    seen: list[int] = []

    def count(messages: list[Message]) -> str:
        seen.append(len(messages))
        return "ok"

    async with ConversationManager(MockProvider(count), max_tokens=10_000) as manager:
        pipe = manager._pipeline()
        # Budgets from 40 tokens up, and one window: each conversation's own limit holds.
        convs = [
            await manager.new_conversation(None, ConversationConfig(max_tokens=40 + 40 * i))
            for i in range(40)
        ]
        windowed = await manager.new_conversation(None, ConversationConfig(max_messages=3))
        plain = await manager.new_conversation()
        for _ in range(6):
            for conv in (*convs, windowed, plain):
                await conv.send("word " * 10)
        assert manager._pipeline() is pipe
        provider_calls = iter(seen)
        sent: dict[str, list[int]] = {}
        for _ in range(6):
            for conv in (*convs, windowed, plain):
                sent.setdefault(conv.id, []).append(next(provider_calls))
        assert sent[convs[0].id][-1] < sent[convs[-1].id][-1], "a small budget sends less"
        assert sent[windowed.id][-1] == 3, "the window: the newest 3 messages, the new one too"
        assert sent[plain.id][-1] == 11, "the manager's budget fits the whole history"
        for conv in convs:
            history = await conv.history()
            assert len(history) == 12, "every turn was stored whole"


async def test_custom_stages_are_built_once_and_take_each_conversations_budget() -> None:
    from promptstate.pipeline import default_stages
    from promptstate.truncation import SlidingWindow

    budgets: list[int | None] = []
    seen: list[str] = []

    async def log(ctx: object, call_next: object) -> None:
        seen.append("log")
        await call_next(ctx)  # type: ignore[operator]

    def stages(budget: int | None) -> list[object]:
        budgets.append(budget)
        return [log, *default_stages(budget)[:1], SlidingWindow(2), *default_stages(budget)[1:]]

    provider = MockProvider(_echo)
    async with ConversationManager(provider, stages=stages) as manager:  # type: ignore[arg-type]
        plain = await manager.new_conversation()
        budgeted = await manager.new_conversation(None, ConversationConfig(max_tokens=5))
        for i in range(4):
            await plain.send(f"p{i}")
        assert len(provider.last_messages) <= 2  # the factory's sliding window
        with pytest.raises(ValidationError, match="does not fit"):
            await budgeted.send("far too long for a budget of five tokens " * 3)
        assert await budgeted.history() == []
        assert seen == ["log"] * 5
        assert budgets == [None]  # built once, with the manager's default budget
    with pytest.raises(ValidationError, match="stages"):
        ConversationManager(provider, stages=[log])  # type: ignore[arg-type]


async def test_a_conversation_limit_the_stages_cannot_apply_is_refused() -> None:
    from promptstate.stages import CallProvider, LoadState, SaveState

    def stages(budget: int | None) -> list[object]:
        return [LoadState(), CallProvider(), SaveState()]

    async with ConversationManager(MockProvider(_echo), stages=stages) as manager:  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"max_tokens.*TokenBudget"):
            await manager.new_conversation(None, ConversationConfig(max_tokens=100))
        with pytest.raises(ValidationError, match=r"max_messages.*SlidingWindow"):
            await manager.new_conversation(None, ConversationConfig(max_messages=4))
        assert [s async for s in manager.store.list_keys("")] == []


async def test_open_conversation_gets_or_creates() -> None:
    async with ConversationManager(MockProvider(_echo)) as manager:
        config = ConversationConfig(conversation_id="c", user_id="u1", metadata={"n": 1})
        first = await manager.open_conversation(None, config)
        await first.send("hi")
        other = ConversationConfig(conversation_id="c", user_id="u1", metadata={"n": 2})
        second = await manager.open_conversation(None, other)
        assert second.metadata == {"n": 1}, "an existing conversation keeps what it had"
        assert len(await second.history()) == 2
        # Another user's id never opens this one.
        with pytest.raises(ConflictError, match="another user"):
            await manager.open_conversation(
                None, ConversationConfig(conversation_id="c", user_id="u2")
            )
        # Without a user, or without an id (a new random one), it opens as asked.
        assert (
            await manager.open_conversation(None, ConversationConfig(conversation_id="c"))
        ).id == "c"
        fresh = await manager.open_conversation()
        assert fresh.id != "c"

        # Many callers opening one new id at once: one creates it, all get the same.
        async def open_one(results: list[str]) -> None:
            conv = await manager.open_conversation(
                None, ConversationConfig(conversation_id="race", user_id="u1")
            )
            results.append(conv.id)

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(open_one, results)
        assert results == ["race"] * 10
        assert (await manager.store.get("race")).version == 1


async def test_branch_and_undo_refuse_bad_arguments() -> None:
    async with ConversationManager(MockProvider(_echo)) as manager:
        conv = await manager.new_conversation(None, ConversationConfig(conversation_id="c"))
        await conv.send("hi")
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValidationError):
                await conv.undo(bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await conv.branch("b", at=-1)
        with pytest.raises(ValidationError):
            await conv.branch("c", at=1)  # onto itself
        await manager.new_conversation(None, ConversationConfig(conversation_id="taken"))
        with pytest.raises(ConflictError):
            await conv.branch("taken", at=1)
        branch = await conv.branch(at=1)
        assert [m.content for m in await branch.history()] == ["hi"]
        # A conversation whose history starts with a stored system message keeps it.
        await manager.store.save("s", [Message("system", "rules"), Message("user", "q")])
        stored = await manager.get_conversation("s")
        assert [m.content for m in await stored.undo()] == ["q"]
        assert [m.content for m in await stored.history()] == ["rules"]

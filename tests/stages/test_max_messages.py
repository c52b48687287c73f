"""``max_messages=``: "the last N messages" in one argument, on Pipeline and conversations."""

from __future__ import annotations

import pytest

from promptstate import (
    ConversationConfig,
    ConversationManager,
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    ValidationError,
)
from promptstate.pipeline import default_stages
from promptstate.stages import CallProvider, CheckReply, LoadState, SaveState
from promptstate.truncation import SlidingWindow, TokenBudget

pytestmark = pytest.mark.anyio


class _Seen:
    """A responder that records what the model was shown."""

    def __init__(self) -> None:
        self.shown: list[list[Message]] = []

    def __call__(self, messages: list[Message]) -> str:
        self.shown.append(list(messages))
        return f"answer {len(self.shown)}"


async def test_pipeline_shows_only_the_newest_messages_and_stores_everything() -> None:
    seen = _Seen()
    store = MemoryStore()
    async with Pipeline(MockProvider(seen), store=store, max_messages=5, system="Be brief.") as p:
        for turn in range(8):
            await p.execute("s", "user", f"question {turn}")
    last = seen.shown[-1]
    assert (last[0].role, last[0].content) == ("system", "Be brief.")
    # The window holds the newest 5 messages, the new question included; cut at a turn
    # boundary that keeps them whole.
    assert [m.content for m in last[1:]] == [
        "question 5",
        "answer 6",
        "question 6",
        "answer 7",
        "question 7",
    ]
    assert len(await store.load("s")) == 16  # nothing stored was dropped


async def test_both_limits_hold_together() -> None:
    stages = default_stages(100, max_messages=3)
    assert [type(s) for s in stages] == [
        LoadState,
        SlidingWindow,
        TokenBudget,
        CallProvider,
        CheckReply,
        SaveState,
    ]
    seen = _Seen()
    async with Pipeline(MockProvider(seen), max_messages=3, max_tokens=10_000) as p:
        for turn in range(4):
            await p.execute("s", "user", f"q{turn}")
    assert len(seen.shown[-1]) == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, "5", True])
async def test_bad_max_messages_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="max_messages"):
        Pipeline(MockProvider(["x"]), max_messages=bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="max_messages"):
        ConversationManager(MockProvider(["x"]), max_messages=bad)  # type: ignore[arg-type]
    async with ConversationManager(MockProvider(["x"])) as manager:
        with pytest.raises(ValidationError, match="max_messages"):
            await manager.new_conversation(config=ConversationConfig(max_messages=bad))  # type: ignore[arg-type]


async def test_with_custom_middleware_it_says_where_the_window_goes() -> None:
    with pytest.raises(ValidationError, match=r"put a SlidingWindow\(4\) in it"):
        Pipeline(MockProvider(["x"]), middleware=default_stages(), max_messages=4)
    with pytest.raises(ValidationError, match=r"SlidingWindow\(4\)"):
        ConversationManager(MockProvider(["x"]), max_messages=4, stages=default_stages)


async def test_conversations_take_it_from_the_config_or_the_manager_and_keep_it() -> None:
    seen = _Seen()
    store = MemoryStore()
    async with ConversationManager(MockProvider(seen), store, max_messages=3) as manager:
        default = await manager.new_conversation(config=ConversationConfig(conversation_id="a"))
        own = await manager.new_conversation(
            config=ConversationConfig(conversation_id="b", max_messages=5)
        )
        assert (default.max_messages, own.max_messages) == (None, 5)
        for turn in range(4):
            await default.send(f"a{turn}")
            await own.send(f"b{turn}")
        shown_a, shown_b = seen.shown[-2], seen.shown[-1]
        assert len(shown_a) == 3
        assert len(shown_b) == 5
    # The conversation's own window is stored with it, and a new manager uses it.
    seen_again = _Seen()
    async with ConversationManager(MockProvider(seen_again), store) as manager:
        reopened = await manager.get_conversation("b")
        assert reopened.max_messages == 5
        await reopened.send("again")
        assert len(seen_again.shown[-1]) == 5

"""truncate_messages and the strategies: properties, tool pairs, windows, summaries."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptstate import (
    HeuristicTokenCounter,
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    ProviderError,
    SlidingWindow,
    Summarize,
    TimeWindow,
    TokenBudget,
    ToolCall,
    ValidationError,
    truncate_messages,
)
from promptstate._window import _truncate_blocks, _truncate_plain
from promptstate.stages import CallProvider, LoadState, SaveState
from promptstate.truncation import SUMMARY_KEY, repair_tool_pairs
from promptstate.types import utcnow
from tests.pipeline_support import LoadSpyStore

COUNTER = HeuristicTokenCounter()


def cost(messages: list[Message]) -> int:
    return sum(COUNTER.count(m) for m in messages)


def orphans(messages: list[Message]) -> list[Message]:
    """Tool messages that do not answer a call of the assistant message before their block."""
    bad = []
    open_ids: set[str] = set()
    for m in messages:
        if m.role == "tool":
            if m.tool_call_id not in open_ids:
                bad.append(m)
            continue
        if m.role == "system":
            continue
        open_ids = {c.id for c in m.tool_calls} if m.role == "assistant" else set()
    return bad


def unanswered(messages: list[Message]) -> list[Message]:
    """Assistant tool calls (not the last block) whose calls are not all answered."""
    bad = []
    non_system = [m for m in messages if m.role != "system"]
    for i, m in enumerate(non_system):
        if m.role == "assistant" and m.tool_calls:
            answers = set()
            j = i + 1
            while j < len(non_system) and non_system[j].role == "tool":
                answers.add(non_system[j].tool_call_id)
                j += 1
            if j < len(non_system) and answers != {c.id for c in m.tool_calls}:
                bad.append(m)
    return bad


# -- a generator of conversations, orphans and all ---------------------------------------------

_text = st.text(alphabet="abc xyz", max_size=60)


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    messages: list[Message] = []
    n_calls = 0
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["system", "user", "assistant", "tools", "orphan"]))
        if kind == "tools":
            k = draw(st.integers(1, 3))
            ids = [f"c{n_calls + j}" for j in range(k)]
            n_calls += k
            messages.append(
                Message("assistant", "", tool_calls=tuple(ToolCall(i, "f", "{}") for i in ids))
            )
            answered = draw(st.integers(0, k))  # sometimes not all answered
            for i in ids[:answered]:
                messages.append(Message("tool", draw(_text), tool_call_id=i))
        elif kind == "orphan":
            messages.append(Message("tool", draw(_text), tool_call_id=f"x{len(messages)}"))
        else:
            messages.append(Message(kind, draw(_text)))
    return messages


@settings(max_examples=300, deadline=None)
@given(conversations(), st.integers(0, 400))
def test_truncate_messages_properties(messages: list[Message], budget: int) -> None:
    kept = truncate_messages(messages, budget)
    system = [m for m in messages if m.role == "system"]
    # system messages are kept, all of them
    assert [m for m in kept if m.role == "system"] == system
    # order preserved: kept is a subsequence of messages (by identity)
    ids = [id(m) for m in messages]
    positions = [ids.index(id(m)) for m in kept]
    assert positions == sorted(positions)
    # within budget whenever the system messages fit
    if cost(system) <= budget:
        assert cost(kept) <= budget
    # no orphan tool messages, no unanswered tool calls mid-history
    assert orphans(kept) == []
    assert unanswered(kept) == []
    # newest kept: what is kept of the repaired history is its newest part (a suffix)
    repaired = [m for m in repair_tool_pairs(messages) if m.role != "system"]
    rest = [m for m in kept if m.role != "system"]
    assert rest == repaired[len(repaired) - len(rest) :]
    # and the newest message survives when it fits on its own with the system messages
    newest = repaired[-1] if repaired else None
    if (
        newest is not None
        and newest.role != "tool"
        and not newest.tool_calls
        and cost(system) + COUNTER.count(newest) <= budget
    ):
        assert rest[-1] is newest


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(Message, st.sampled_from(["system", "user", "assistant"]), _text), max_size=30
    ),
    st.integers(0, 300),
)
def test_the_fast_path_for_plain_histories_agrees_with_the_general_one(
    messages: list[Message], budget: int
) -> None:
    system = sum(COUNTER.count(m) for m in messages if m.role == "system")
    plain = _truncate_plain(messages, budget - system, COUNTER)
    general = _truncate_blocks(messages, budget - system, COUNTER)
    assert plain == general


@settings(max_examples=200, deadline=None)
@given(conversations())
def test_a_large_budget_keeps_the_repaired_history(messages: list[Message]) -> None:
    assert truncate_messages(messages, 10**9) == repair_tool_pairs(messages)


def test_drops_oldest_whole_turns() -> None:
    msgs = [
        Message("system", "sys"),
        Message("user", "u1 " * 10),
        Message("assistant", "a1 " * 10),
        Message("user", "u2 " * 10),
        Message("assistant", "a2 " * 10),
    ]
    budget = cost([msgs[0], *msgs[3:]]) + 5
    kept = truncate_messages(msgs, budget)
    assert kept == [msgs[0], msgs[3], msgs[4]]  # the whole first turn went, not just u1


def test_tool_block_kept_or_dropped_whole() -> None:
    call = Message("assistant", "", tool_calls=(ToolCall("1", "f", "{}"), ToolCall("2", "g", "{}")))
    t1 = Message("tool", "r1 " * 30, tool_call_id="1")
    t2 = Message("tool", "r2", tool_call_id="2")
    final = Message("assistant", "done")
    msgs = [Message("user", "q"), call, t1, t2, final]
    kept = truncate_messages(msgs, cost([final]) + cost([t2]) + 2)
    assert kept == [final]
    assert truncate_messages(msgs, cost(msgs)) == msgs


def test_repairs_orphans_and_unanswered_calls() -> None:
    orphan = Message("tool", "stale", tool_call_id="gone")
    call = Message("assistant", "", tool_calls=(ToolCall("1", "f", "{}"),))
    msgs = [orphan, Message("user", "q"), call, Message("user", "never answered"), call]
    assert repair_tool_pairs(msgs) == [msgs[1], msgs[3], msgs[4]]  # pending last call kept


def test_uses_kept_token_counts() -> None:
    msgs = [Message("user", "x", tokens=50), Message("assistant", "y", tokens=50)]
    assert truncate_messages(msgs, 60) == [msgs[1]]
    assert truncate_messages(msgs, 100) == msgs


@pytest.mark.parametrize("bad", [-1, 1.5, "10", None, True])
def test_bad_budget(bad: Any) -> None:
    with pytest.raises(ValidationError):
        truncate_messages([], bad)


def test_sliding_window() -> None:
    call = Message("assistant", "", tool_calls=(ToolCall("1", "f", "{}"),))
    msgs = [
        Message("system", "s"),
        Message("user", "1"),
        call,
        Message("tool", "r", tool_call_id="1"),
        Message("assistant", "2"),
    ]
    assert SlidingWindow(2).apply(msgs, COUNTER) == [msgs[0], msgs[4]]  # block not split
    assert SlidingWindow(3).apply(msgs, COUNTER) == [msgs[0], call, msgs[3], msgs[4]]
    with pytest.raises(ValidationError):
        SlidingWindow(0)


def test_time_window() -> None:
    now = utcnow()
    old = Message("user", "old", timestamp=now - timedelta(hours=2))
    new = Message("user", "new", timestamp=now - timedelta(minutes=1))
    sys = Message("system", "s", timestamp=now - timedelta(days=9))
    window = TimeWindow(timedelta(hours=1))
    assert window.apply([sys, old, new], COUNTER) == [sys, new]
    assert window.needs_more([new])
    assert not window.needs_more([old, new])
    assert TimeWindow(3600).max_age == timedelta(hours=1)
    for bad in (0, -5, "1h", float("inf")):
        with pytest.raises(ValidationError):
            TimeWindow(bad)  # type: ignore[arg-type]


# -- strategies in a pipeline ------------------------------------------------------------


async def _pipe(store: MemoryStore, stage: Any, provider: MockProvider) -> Pipeline:
    return Pipeline(
        provider, store=store, middleware=[LoadState(), stage, CallProvider(), SaveState()]
    )


@pytest.mark.anyio
async def test_token_budget_in_a_pipeline_keeps_the_prompt_under_budget() -> None:
    provider = MockProvider(lambda m: "answer " * 10)
    store = MemoryStore()
    pipe = await _pipe(store, TokenBudget(300), provider)
    for i in range(50):
        result = await pipe.execute("s", "user", f"question {i} " * 5)
        assert cost(result.messages) <= 300
        assert result.messages[-1].content.startswith(f"question {i}")
    assert len(await store.load("s")) == 100


@pytest.mark.anyio
async def test_summarize_keeps_a_long_conversation_under_budget() -> None:
    summaries: list[list[Message]] = []

    def summarizer(messages: list[Message]) -> str:
        summaries.append(messages)
        return f"summary #{len(summaries)}: user asked many questions"

    store = LoadSpyStore()
    model = MockProvider(lambda m: "a reasonably long answer " * 4)
    summarize = Summarize(400, keep_last=4, summarizer=MockProvider(summarizer, price=(1e-3, 0)))
    async with Pipeline(
        model, store=store, middleware=[LoadState(), summarize, CallProvider(), SaveState()]
    ) as pipe:
        sent_sizes = []
        for i in range(60):
            result = await pipe.execute("s", "user", f"question number {i} " * 3)
            sent_sizes.append(len(result.messages))
            assert cost(result.messages) <= 400
            assert result.messages[-1].content.startswith(f"question number {i}")
        # the summary is used: later turns start with the newest summary
        assert summaries, "the summarizer was never called"
        last = model.last_messages
        assert last[0].role == "system"
        assert last[0].content.startswith("Summary of the earlier conversation:\nsummary #")
        assert last[0].content.endswith(f"#{len(summaries)}: user asked many questions")
        # the previous summary is folded into the next one
        if len(summaries) > 1:
            assert "[earlier summary]" in summaries[-1][1].content
        # the full history is still loadable, summaries in it, every turn whole
        full = await store.load("s")
        turns = [m for m in full if SUMMARY_KEY not in m.metadata]
        assert len(turns) == 120
        assert [m.content for m in turns[::2]] == [f"question number {i} " * 3 for i in range(60)]
        assert sum(SUMMARY_KEY in m.metadata for m in full) == len(summaries)
        # the summarizer's cost was added to the state's cost
        assert (await store.get("s")).total_cost > 0
        # reads stay bounded: no turn late in the conversation read the whole history
        turn_loads = store.loads[:-1]  # the last one is the full load just above
        assert all(n is not None and n < 100 for n in turn_loads[-20:]), turn_loads


@pytest.mark.anyio
async def test_summarize_failure_stores_nothing() -> None:
    store = MemoryStore()
    for i in range(20):
        await store.append("s", [Message("user", f"q{i} " * 20), Message("assistant", "a " * 20)])
    before = await store.load("s")
    summarize = Summarize(200, keep_last=2, summarizer=MockProvider([ProviderError("down")]))
    async with Pipeline(
        MockProvider(["never"]),
        store=store,
        middleware=[LoadState(), summarize, CallProvider(), SaveState()],
    ) as pipe:
        with pytest.raises(ProviderError, match="down"):
            await pipe.execute("s", "user", "next")
    assert await store.load("s") == before


def test_summarize_arguments() -> None:
    with pytest.raises(ValidationError):
        Summarize(0, 2, MockProvider(["x"]))
    with pytest.raises(ValidationError):
        Summarize(100, -1, MockProvider(["x"]))
    with pytest.raises(ValidationError):
        Summarize(100, 2, object())  # type: ignore[arg-type]
    assert "keep_last=2" in repr(Summarize(100, 2, MockProvider(["x"])))


@pytest.mark.anyio
async def test_summarize_refuses_a_message_that_alone_exceeds_the_budget() -> None:
    store = MemoryStore()
    summarize = Summarize(50, keep_last=2, summarizer=MockProvider(["short"]))
    async with Pipeline(
        MockProvider(["never"]),
        store=store,
        middleware=[LoadState(), summarize, CallProvider(), SaveState()],
    ) as pipe:
        with pytest.raises(ValidationError, match="does not fit"):
            await pipe.execute("s", "user", "word " * 100)
    assert await store.load("s") == []


def _reference_truncate(messages: list[Message], max_tokens: int) -> list[Message]:
    """truncate_messages for histories without tools, written the slow and obvious way."""
    counter = HeuristicTokenCounter()

    def cost(m: Message) -> int:
        return counter.count(m) if m.tokens is None else m.tokens

    budget = max_tokens - sum(cost(m) for m in messages if m.role == "system")
    others = [i for i, m in enumerate(messages) if m.role != "system"]
    starts = [i for n, i in enumerate(others) if n == 0 or messages[i].role == "user"]

    def fits(start: int) -> bool:
        return sum(cost(messages[i]) for i in others if i >= start) <= budget

    fitting = [s for s in starts if fits(s)]
    if fitting:
        first = min(fitting)
    else:  # not even the newest turn: its newest messages that fit
        newest_turn = [i for i in others if i >= starts[-1]] if starts else []
        first = next((i for i in newest_turn if fits(i)), len(messages))
    return [m for i, m in enumerate(messages) if m.role == "system" or i >= first]


def test_truncate_messages_matches_the_obvious_version_on_random_histories() -> None:
    rnd = random.Random(20261204)
    for _ in range(20_000):
        messages = [
            Message(
                rnd.choice(["user", "assistant", "system", "user", "assistant"]),
                "x" * rnd.randint(0, 30),
                tokens=rnd.choice([None, 0, 1, 3, 5, 8]),
            )
            for _ in range(rnd.randint(0, 12))
        ]
        budget = rnd.randint(0, 40)
        assert truncate_messages(messages, budget) == _reference_truncate(messages, budget), (
            budget,
            [(m.role, m.tokens) for m in messages],
        )

"""Per-turn limits: ``execute(..., max_tokens=..., max_messages=...)`` on one pipeline."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import pytest

from promptstate import MemoryStore, Message, Pipeline, ValidationError
from promptstate.providers.mock import MockProvider
from promptstate.stages import CallProvider, LoadState, SaveState
from promptstate.truncation import SlidingWindow, Summarize, TokenBudget

pytestmark = pytest.mark.anyio


def _count(messages: list[Message]) -> str:
    return f"saw {len(messages)}"


async def _drain(chunks: Any) -> None:
    async with aclosing(chunks) as it:
        async for _ in it:
            pass


async def _fill(store: MemoryStore, session: str, turns: int) -> None:
    for i in range(turns):
        await store.append(session, [Message("user", f"q{i} " * 20), Message("assistant", "a")])


@pytest.mark.parametrize("how", ["execute", "stream"])
async def test_a_turns_budget_and_window_apply_to_that_turn_only(how: str) -> None:
    store = MemoryStore()
    await _fill(store, "s", 30)
    async with Pipeline(MockProvider(_count, cycle=True), store=store) as pipe:

        async def turn(**limits: Any) -> int:
            if how == "execute":
                result = await pipe.execute("s", "user", "hi", **limits)
                return len(result.messages)
            async with aclosing(pipe.stream("s", "user", "hi", **limits)) as chunks:
                return int([c async for c in chunks][-1].message.content.split()[1])  # type: ignore[union-attr]

        whole = await turn()
        assert whole == 61, "no limit on the pipeline: the whole history"
        assert await turn(max_messages=5) == 5
        budgeted = await turn(max_tokens=200)
        assert 1 < budgeted < 20
        assert await turn(max_tokens=200, max_messages=3) == 3
        assert await turn() == whole + 8, "the next turn is back to the pipeline's own limits"
    assert await store.count("s") == 60 + 10


async def test_a_turns_limit_replaces_the_pipelines() -> None:
    store = MemoryStore()
    await _fill(store, "s", 30)
    async with Pipeline(
        MockProvider(_count, cycle=True), store=store, max_tokens=100, max_messages=40
    ) as pipe:
        small = len((await pipe.execute("s", "user", "hi")).messages)
        large = len((await pipe.execute("s", "user", "hi", max_tokens=100_000)).messages)
        assert small < large == 40, "the turn's budget replaced 100; the window still holds"
        assert len((await pipe.execute("s", "user", "hi", max_messages=50)).messages) > small


async def test_a_turns_budget_reaches_summarize() -> None:
    summarizer = MockProvider(["the summary"], cycle=True)
    stages = [LoadState(), Summarize(100_000, 2, summarizer), CallProvider(), SaveState()]
    store = MemoryStore()
    await _fill(store, "s", 10)
    async with Pipeline(MockProvider(_count, cycle=True), store=store, middleware=stages) as pipe:
        await pipe.execute("s", "user", "hi")
        assert summarizer.calls == 0
        result = await pipe.execute("s", "user", "hi", max_tokens=60)
    assert summarizer.calls == 1
    assert result.messages[0].content.endswith("the summary")


@pytest.mark.parametrize(
    ("limits", "error"),
    [
        ({"max_tokens": 0}, "max_tokens must be None or an int >= 1"),
        ({"max_tokens": True}, "max_tokens must be None or an int >= 1"),
        ({"max_tokens": "100"}, "max_tokens must be None or an int >= 1"),
        ({"max_messages": -1}, "max_messages must be None or an int >= 1"),
        ({"max_messages": 2.5}, "max_messages must be None or an int >= 1"),
    ],
)
async def test_bad_turn_limits_are_refused_before_anything_runs(
    limits: dict[str, Any], error: str
) -> None:
    provider = MockProvider(_count)
    async with Pipeline(provider) as pipe:
        with pytest.raises(ValidationError, match=error):
            await pipe.execute("s", "user", "hi", **limits)
        with pytest.raises(ValidationError, match=error):
            await _drain(pipe.stream("s", "user", "hi", **limits))
        assert await pipe.store.count("s") == 0
    assert provider.calls == 0


async def test_a_limit_the_chain_cannot_apply_is_refused() -> None:
    stages = [LoadState(), SlidingWindow(4), CallProvider(), SaveState()]
    async with Pipeline(MockProvider(_count), middleware=stages) as pipe:
        with pytest.raises(ValidationError, match=r"max_tokens given for a turn.*TokenBudget"):
            await pipe.execute("s", "user", "hi", max_tokens=100)
        assert len((await pipe.execute("s", "user", "hi", max_messages=1)).messages) == 1
    stages = [LoadState(), TokenBudget(100), CallProvider(), SaveState()]
    async with Pipeline(MockProvider(_count), middleware=stages) as pipe:
        with pytest.raises(ValidationError, match=r"max_messages given.*SlidingWindow"):
            await pipe.execute("s", "user", "hi", max_messages=3)


async def test_each_budget_keeps_its_own_load_window() -> None:
    budget = TokenBudget(None)
    small = budget.for_turn(50, None)
    assert budget.for_turn(50, None) is small, "one variant per budget, reused across turns"
    assert budget.for_turn(None, 7) is budget, "a window does not change a token budget"
    assert budget.inactive
    assert not small.inactive
    assert budget.load_hint() is None
    assert small.load_hint() == 64
    small.apply([Message("user", "x")] * 10, MemoryStore().token_counter)
    assert small.load_hint() == 16, "it learned from its own turn"
    for n in range(100):
        budget.for_turn(1000 + n, None)
    assert len(budget._copies) <= 32, "variants are bounded"


async def test_an_inactive_window_does_not_make_the_load_read_everything() -> None:
    # SlidingWindow(None) is in the default chain; it must not turn off the tail read.
    store = MemoryStore()
    await _fill(store, "s", 500)
    loads: list[int | None] = []
    original = store.load

    async def load(session_id: str, *, last: int | None = None) -> list[Message]:
        loads.append(last)
        return await original(session_id, last=last)

    store.load = load  # type: ignore[method-assign]
    async with Pipeline(MockProvider(_count), store=store, max_tokens=300) as pipe:
        await pipe.execute("s", "user", "hi")
    assert loads
    assert all(last is not None and last < 1000 for last in loads), loads

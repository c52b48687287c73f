"""MockProvider: replies in turn, callables, streaming, usage, errors."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from promptstate import (
    ClosedError,
    Message,
    MockProvider,
    Provider,
    ProviderError,
    ToolCall,
    ValidationError,
)
from promptstate.tokens import HeuristicTokenCounter

pytestmark = pytest.mark.anyio

HI = [Message("user", "hi")]


async def test_replies_in_turn_then_runs_out() -> None:
    provider = MockProvider(["one", Message("assistant", "two", metadata={"k": 1})])
    assert isinstance(provider, Provider)
    first = await provider.complete(HI, temperature=0)
    assert first.message.content == "one"
    assert first.message.role == "assistant"
    assert first.finish_reason == "stop"
    assert first.model == "mock"
    assert provider.last_options == {"temperature": 0}
    assert (await provider.complete(HI)).message.metadata == {"k": 1}
    with pytest.raises(ProviderError, match="ran out"):
        await provider.complete(HI)
    assert provider.calls == 3


async def test_cycle() -> None:
    provider = MockProvider(["a", "b"], cycle=True)
    got = [(await provider.complete(HI)).message.content for _ in range(5)]
    assert got == ["a", "b", "a", "b", "a"]


async def test_exceptions_in_the_list_are_raised() -> None:
    provider = MockProvider([ProviderError("boom", status_code=500), "ok"])
    with pytest.raises(ProviderError, match="boom"):
        await provider.complete(HI)
    assert (await provider.complete(HI)).message.content == "ok"


async def test_plain_and_async_callables_see_the_messages() -> None:
    def plain(messages: list[Message]) -> str:
        return f"{len(messages)}:{messages[-1].content}"

    async def later(messages: list[Message]) -> Message:
        await anyio.lowlevel.checkpoint()
        return Message("assistant", "", tool_calls=(ToolCall("1", "f", "{}"),))

    assert (await MockProvider(plain).complete(HI)).message.content == "1:hi"
    completion = await MockProvider(later).complete(HI)
    assert completion.finish_reason == "tool_calls"
    bad = MockProvider(lambda m: 42)  # type: ignore[arg-type,return-value]
    with pytest.raises(ProviderError, match="int"):
        await bad.complete(HI)


async def test_usage_from_the_token_counter_and_price() -> None:
    counter = HeuristicTokenCounter()
    provider = MockProvider(["abcdefgh"], token_counter=counter, price=(0.5, 1.0))
    completion = await provider.complete(HI)
    assert completion.usage.input_tokens == counter.count(HI[0])
    assert completion.usage.output_tokens == counter.count(Message("assistant", "abcdefgh"))
    assert completion.cost == completion.usage.input_tokens * 0.5 + completion.usage.output_tokens


async def test_stream_splits_words_or_chunk_size() -> None:
    provider = MockProvider(["Hello big  world", "abcdefg"], chunk_size=None)
    chunks = [c async for c in provider.stream(HI)]
    assert [c.text for c in chunks] == ["Hello ", "big  ", "world", ""]
    assert chunks[-1].done
    assert chunks[-1].message is not None
    assert chunks[-1].message.content == "Hello big  world"
    assert chunks[-1].usage is not None
    sized = MockProvider(["abcdefg"], chunk_size=3)
    assert [c.text async for c in sized.stream(HI)] == ["abc", "def", "g", ""]


async def test_delay() -> None:
    provider = MockProvider(["x"], delay=0.05)
    started = anyio.current_time()
    await provider.complete(HI)
    assert anyio.current_time() - started >= 0.04


async def test_closed() -> None:
    async with MockProvider(["x"]) as provider:
        pass
    with pytest.raises(ClosedError):
        await provider.complete(HI)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("just a string",), {}),
        ((5,), {}),  # neither a list nor a callable: was a bare TypeError
        ((None,), {}),
        ((["ok", 3],), {}),
        ((["ok"],), {"chunk_size": 0}),
        ((["ok"],), {"delay": -1}),
    ],
)
async def test_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MockProvider(*args, **kwargs)


async def test_repr() -> None:
    assert repr(MockProvider(["a"])) == "MockProvider(1 replies, model='mock')"
    assert "callable" in repr(MockProvider(lambda m: "x"))

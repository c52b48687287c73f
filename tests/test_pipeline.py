"""Pipeline: turns, middleware, streaming, ownership, and bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import pytest

from promptstate import (
    ClosedError,
    ExecutionContext,
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    PromptStateError,
    ProviderError,
    SlidingWindow,
    TokenBudget,
    ToolCall,
    Usage,
    ValidationError,
)
from promptstate.pipeline import CallNext, default_stages
from promptstate.providers.base import Chunk, Completion
from promptstate.stages import CallProvider, LoadState, SaveState
from tests.pipeline_support import LoadSpyStore, drain

pytestmark = pytest.mark.anyio


def echo(messages: list[Message]) -> str:
    return f"echo:{messages[-1].content}"


async def test_execute_stores_the_turn_and_returns_the_result() -> None:
    provider = MockProvider(["Hello Alice!", "You are Alice."], price=(1e-6, 2e-6))
    async with Pipeline(provider, max_tokens=4000) as pipe:
        first = await pipe.execute("s", "user", "Hi, I'm Alice")
        assert first.response.role == "assistant"
        assert first.response.content == "Hello Alice!"
        assert [m.content for m in first.messages] == ["Hi, I'm Alice"]
        assert first.usage.input_tokens > 0
        assert first.usage.output_tokens > 0
        assert first.cost == pytest.approx(
            first.usage.input_tokens * 1e-6 + first.usage.output_tokens * 2e-6
        )
        assert first.message_count == 2
        second = await pipe.execute("s", "user", "What's my name?")
        assert [m.content for m in second.messages] == [
            "Hi, I'm Alice",
            "Hello Alice!",
            "What's my name?",
        ]
        assert second.message_count == 4
        state = await pipe.store.get("s")
        assert [m.role for m in state.messages] == ["user", "assistant"] * 2
        assert state.total_cost == pytest.approx(first.cost + second.cost)
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        assert all(m.tokens is not None for m in state.messages)
        assert state.messages[0].metadata == {"turn_id": first.turn_id}
        assert state.messages[2].metadata == {"turn_id": second.turn_id}


async def test_execute_takes_a_message_and_provider_options() -> None:
    provider = MockProvider(echo)
    async with Pipeline(provider) as pipe:
        msg = Message("user", "hi", metadata={"lang": "en"})
        result = await pipe.execute("s", msg, temperature=0.1, options={"metadata": {"a": 1}})
        assert result.response.content == "echo:hi"
        assert provider.last_options == {"temperature": 0.1, "metadata": {"a": 1}}
        stored = await pipe.store.load("s")
        assert stored[0].metadata["lang"] == "en"


async def test_system_prompt_is_sent_every_turn_and_never_stored() -> None:
    provider = MockProvider(echo)
    async with Pipeline(provider, system="Be terse.") as pipe:
        await pipe.execute("s", "user", "a")
        result = await pipe.execute("s", "user", "b")
        assert result.messages[0] == Message(
            "system",
            "Be terse.",
            timestamp=result.messages[0].timestamp,
            tokens=result.messages[0].tokens,
        )
        other = await pipe.execute("s", "user", "c", system="Be verbose.")
        assert other.messages[0].content == "Be verbose."
        assert all(m.role != "system" for m in await pipe.store.load("s"))


async def test_stream_yields_text_then_a_done_chunk_after_saving() -> None:
    provider = MockProvider(["one two three"])
    async with Pipeline(provider) as pipe:
        chunks = await drain(pipe.stream("s", "user", "count"))
        assert "".join(c.text for c in chunks) == "one two three"
        assert [c.done for c in chunks] == [False, False, False, True]
        done = chunks[-1]
        assert done.message is not None
        assert done.message.content == "one two three"
        assert done.usage is not None
        assert done.usage.output_tokens > 0
        assert [m.content for m in await pipe.store.load("s")] == ["count", "one two three"]


async def test_stream_left_before_the_end_saves_nothing_and_frees_the_session() -> None:
    provider = MockProvider(["one two three four", "fine"])
    async with Pipeline(provider, lock_timeout=1) as pipe:
        async with aclosing(pipe.stream("s", "user", "count")) as chunks:
            async for chunk in chunks:
                assert chunk.text == "one "
                break
        assert await pipe.store.load("s") == []
        # Even after the last text chunk, leaving before the done chunk saves nothing.
        provider2 = MockProvider(["a b"])
        async with Pipeline(provider2, store=pipe.store) as pipe2:
            async with aclosing(pipe2.stream("s", "user", "x")) as chunks:
                texts = []
                async for chunk in chunks:
                    texts.append(chunk.text)
                    if len(texts) == 2:
                        break
            assert texts == ["a ", "b"]
            assert await pipe.store.load("s") == []
        result = await pipe.execute("s", "user", "again")
        assert result.response.content == "fine"


async def test_stream_failure_saves_nothing_and_raises_provider_error() -> None:
    class Broken:
        async def complete(self, messages: Any, **options: Any) -> Completion:
            raise AssertionError("not used")

        async def stream(self, messages: Any, **options: Any) -> AsyncIterator[Chunk]:
            yield Chunk(text="partial ")
            raise OSError("connection reset")

        async def aclose(self) -> None:
            pass

    async with Pipeline(Broken()) as pipe:  # type: ignore[arg-type]
        with pytest.raises(ProviderError, match="connection reset") as info:
            await drain(pipe.stream("s", "user", "hi"))
        assert isinstance(info.value.__cause__, OSError)
        assert await pipe.store.load("s") == []


async def test_stream_of_a_provider_without_a_done_chunk_assembles_the_message() -> None:
    class Plain:
        async def complete(self, messages: Any, **options: Any) -> Completion:
            raise AssertionError("not used")

        async def stream(self, messages: Any, **options: Any) -> AsyncIterator[Chunk]:
            for text in ("a", "b", "c"):
                yield Chunk(text=text)

        async def aclose(self) -> None:
            pass

    async with Pipeline(Plain()) as pipe:  # type: ignore[arg-type]
        chunks = await drain(pipe.stream("s", "user", "hi"))
        assert chunks[-1].message is not None
        assert chunks[-1].message.content == "abc"
        assert [m.content for m in await pipe.store.load("s")] == ["hi", "abc"]


async def test_provider_error_leaves_history_unchanged() -> None:
    provider = MockProvider(["ok", ProviderError("rate limited", status_code=429, retryable=True)])
    async with Pipeline(provider) as pipe:
        await pipe.execute("s", "user", "first")
        before = await pipe.store.get("s")
        with pytest.raises(ProviderError, match="rate limited") as info:
            await pipe.execute("s", "user", "second")
        assert info.value.status_code == 429
        after = await pipe.store.get("s")
        assert after.messages == before.messages
        assert after.version == before.version


async def test_any_provider_exception_surfaces_as_provider_error() -> None:
    def boom(messages: list[Message]) -> str:
        raise KeyError("bad")

    async with Pipeline(MockProvider(boom)) as pipe:
        with pytest.raises(ProviderError) as info:
            await pipe.execute("s", "user", "hi")
        assert isinstance(info.value.__cause__, KeyError)
        assert await pipe.store.load("s") == []


async def test_middleware_order_first_listed_is_outermost_and_built_once() -> None:
    events: list[str] = []

    def tracer(name: str) -> Any:
        async def stage(ctx: ExecutionContext, call_next: CallNext) -> None:
            events.append(f"{name}>")
            await call_next(ctx)
            events.append(f"<{name}")

        return stage

    stages = [tracer("a"), tracer("b"), *default_stages(), tracer("z")]
    async with Pipeline(MockProvider(echo), middleware=stages) as pipe:
        chain = pipe._chain
        await pipe.execute("s", "user", "hi")
        assert pipe._chain is chain
    assert events == ["a>", "b>", "z>", "<z", "<b", "<a"]


async def test_a_guardrail_stage_can_stop_the_turn_before_the_provider() -> None:
    async def guardrail(ctx: ExecutionContext, call_next: CallNext) -> None:
        if "password" in ctx.input.content:
            raise ValidationError("refusing to send a password to the model")
        await call_next(ctx)

    provider = MockProvider(echo)
    async with Pipeline(
        provider, middleware=[LoadState(), guardrail, CallProvider(), SaveState()]
    ) as pipe:
        with pytest.raises(ValidationError):
            await pipe.execute("s", "user", "my password is hunter2")
        assert provider.calls == 0
        assert await pipe.store.load("s") == []
        assert (await pipe.execute("s", "user", "hello")).response.content == "echo:hello"


async def test_a_logging_stage_wrapping_the_chain_sees_the_result() -> None:
    seen: list[tuple[str, int | None]] = []

    async def log(ctx: ExecutionContext, call_next: CallNext) -> None:
        await call_next(ctx)
        assert ctx.response is not None
        seen.append((ctx.response.content, ctx.message_count))

    async with Pipeline(MockProvider(echo), middleware=[log, *default_stages(100)]) as pipe:
        await pipe.execute("s", "user", "x")
    assert seen == [("echo:x", 2)]


async def test_a_chain_that_never_sets_a_response_is_an_error() -> None:
    async def stop(ctx: ExecutionContext, call_next: CallNext) -> None:
        return None

    async with Pipeline(MockProvider(echo), middleware=[stop]) as pipe:
        with pytest.raises(PromptStateError, match="without a response"):
            await pipe.execute("s", "user", "x")


async def test_save_before_provider_is_an_error() -> None:
    async with Pipeline(MockProvider(echo), middleware=[LoadState(), SaveState()]) as pipe:
        with pytest.raises(PromptStateError, match="put it after CallProvider"):
            await pipe.execute("s", "user", "x")


async def test_load_asks_only_for_the_window_the_strategy_can_use() -> None:
    store = LoadSpyStore()
    await store.append(
        "s", [Message("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(1000)]
    )
    async with Pipeline(
        MockProvider(echo),
        store=store,
        middleware=[LoadState(), SlidingWindow(6), CallProvider(), SaveState()],
    ) as pipe:
        result = await pipe.execute("s", "user", "new")
    assert store.loads == [6]
    assert len(result.messages) == 6
    assert result.messages[-1].content == "new"


async def test_token_budget_load_grows_only_as_far_as_the_budget() -> None:
    store = LoadSpyStore()
    await store.append(
        "s", [Message("user" if i % 2 == 0 else "assistant", "word " * 20) for i in range(5000)]
    )
    async with Pipeline(MockProvider(echo), store=store, max_tokens=2000) as pipe:
        await pipe.execute("s", "user", "new")
        await pipe.execute("s", "user", "new")
    assert all(last is not None and last <= 4 * 64 for last in store.loads), store.loads
    # The second turn starts from what the first one needed: a single read.
    assert len(store.loads) <= 3


async def test_without_a_strategy_the_whole_history_is_loaded() -> None:
    store = LoadSpyStore()
    async with Pipeline(MockProvider(echo), store=store) as pipe:
        await pipe.execute("s", "user", "a")
    assert store.loads == [None]


async def test_load_state_with_an_explicit_window() -> None:
    store = LoadSpyStore()
    await store.append("s", [Message("user", str(i)) for i in range(10)])
    async with Pipeline(
        MockProvider(echo), store=store, middleware=[LoadState(last=3), CallProvider(), SaveState()]
    ) as pipe:
        result = await pipe.execute("s", "user", "x")
    assert store.loads == [3]
    assert [m.content for m in result.messages] == ["7", "8", "9", "x"]


async def test_new_message_that_alone_exceeds_the_budget_is_refused() -> None:
    async with Pipeline(MockProvider(echo), max_tokens=10) as pipe:
        with pytest.raises(ValidationError, match="does not fit"):
            await pipe.execute("s", "user", "word " * 100)
        assert await pipe.store.load("s") == []


async def test_tool_call_turns_are_stored_with_their_answers() -> None:
    call = Message("assistant", "", tool_calls=(ToolCall("c1", "clock", "{}"),))
    provider = MockProvider([call, "It is noon."])
    async with Pipeline(provider, max_tokens=1000) as pipe:
        first = await pipe.execute("s", "user", "time?")
        assert first.response.tool_calls == call.tool_calls
        second = await pipe.execute("s", Message("tool", "12:00", tool_call_id="c1"))
        assert second.response.content == "It is noon."
        assert [m.role for m in second.messages] == ["user", "assistant", "tool"]
        assert [m.role for m in await pipe.store.load("s")] == [
            "user",
            "assistant",
            "tool",
            "assistant",
        ]


async def test_usage_and_cost_come_from_the_provider() -> None:
    class Priced:
        async def complete(self, messages: Any, **options: Any) -> Completion:
            return Completion(message=Message("assistant", "ok"), usage=Usage(11, 3), cost=0.25)

        def stream(self, messages: Any, **options: Any) -> AsyncIterator[Chunk]:
            raise AssertionError("not used")

        async def aclose(self) -> None:
            pass

    async with Pipeline(Priced()) as pipe:  # type: ignore[arg-type]
        result = await pipe.execute("s", "user", "hi")
        await pipe.execute("s", "user", "hi")
        assert result.usage == Usage(11, 3)
        assert result.cost == 0.25
        assert (await pipe.store.get("s")).total_cost == 0.5


async def test_ownership_store_created_is_closed_store_given_is_borrowed() -> None:
    provider = MockProvider(echo)
    pipe = Pipeline(provider)
    async with pipe:
        await pipe.execute("s", "user", "x")
    assert pipe.closed
    assert pipe.store.closed
    with pytest.raises(ClosedError):
        await pipe.execute("s", "user", "x")
    with pytest.raises(ClosedError):
        await drain(pipe.stream("s", "user", "x"))
    await pipe.aclose()  # idempotent

    store = MemoryStore()
    async with Pipeline(provider, store=store) as pipe2:
        await pipe2.execute("s", "user", "x")
    assert not store.closed
    assert len(await store.load("s")) == 2
    assert provider.calls == 2  # the provider is borrowed: still usable
    await provider.complete([Message("user", "still open")])


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("", "user", "x"), {}, "session_id"),
        (("s\x00", "user", "x"), {}, "control"),
        ((123, "user", "x"), {}, "session_id"),
        (("s", "wizard", "x"), {}, "role"),
        (("s", "assistant", "x"), {}, "user or tool"),
        (("s", "system", "x"), {}, "user or tool"),
        (("s", "user", 42), {}, "content"),
        (("s", Message("user", "a"), "b"), {}, "either"),
        (("s", 3.5, "b"), {}, "role"),
    ],
)
async def test_bad_input_is_refused_before_any_io(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: str
) -> None:
    store = LoadSpyStore()
    provider = MockProvider(echo)
    async with Pipeline(provider, store=store) as pipe:
        with pytest.raises(PromptStateError, match=error):
            await pipe.execute(*args, **kwargs)
        with pytest.raises(PromptStateError, match=error):
            await drain(pipe.stream(*args, **kwargs))
    assert store.loads == []
    assert provider.calls == 0
    assert [key async for key in store.list_keys("")] == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lock_timeout": 0},
        {"lock_timeout": -1},
        {"lock_timeout": "5"},
        {"lease_ttl": 0},
        {"lease_ttl": None},
        {"store": "redis://x"},
        {"middleware": [object()]},
        {"max_tokens": 0},
        {"max_tokens": 1.5},
        {"system": [object()]},
    ],
)
async def test_bad_construction_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Pipeline(MockProvider(echo), **kwargs)


async def test_not_a_provider() -> None:
    with pytest.raises(ValidationError, match="provider"):
        Pipeline(object())  # type: ignore[arg-type]


async def test_bad_stage_arguments() -> None:
    with pytest.raises(ValidationError):
        LoadState(last=-1)
    with pytest.raises(ValidationError):
        SaveState(retries=-1)
    with pytest.raises(ValidationError):
        SaveState(timeout=0)
    with pytest.raises(ValidationError):
        SaveState(timeout="1")
    with pytest.raises(ValidationError):
        TokenBudget(0)


async def test_repr_and_properties() -> None:
    provider = MockProvider(echo)
    pipe = Pipeline(provider, max_tokens=100)
    assert "TokenBudget(100)" in repr(pipe)
    assert pipe.provider is provider
    assert len(pipe.middleware) == 6  # load, window, budget, call, check reply, save
    assert pipe.token_counter is pipe.store.token_counter
    await pipe.aclose()


async def test_concurrent_turns_on_different_sessions_run_in_parallel() -> None:
    async def slow(messages: list[Message]) -> str:
        await anyio.sleep(0.2)
        return "ok"

    async with Pipeline(MockProvider(slow)) as pipe:
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(pipe.execute, f"s{i}", "user", "x")
        assert anyio.current_time() - started < 1.0


async def test_a_stream_abandoned_without_aclosing_frees_the_session() -> None:
    """Breaking out of ``async for`` and dropping the generator: no error, nothing saved."""
    import gc

    provider = MockProvider(["one two three four", "fine"])
    pipe = Pipeline(provider, lock_timeout=2)
    try:
        async for chunk in pipe.stream("s", "user", "x"):
            assert chunk.text == "one "
            break
        gc.collect()
        await anyio.sleep(0.05)  # the finaliser closes the generator in a task of its own
        assert await pipe.store.load("s") == []
        result = await pipe.execute("s", "user", "y")  # the session is free
        assert result.response.content == "fine"
    finally:
        await pipe.aclose()


async def test_closing_the_pipeline_cancels_a_running_stream() -> None:
    async def slow(messages: list[Message]) -> str:
        await anyio.sleep(5)
        return "never"

    store = MemoryStore()
    pipe = Pipeline(MockProvider(slow), store=store)
    errors: list[BaseException] = []

    async def consume() -> None:
        try:
            await drain(pipe.stream("s", "user", "x"))
        except ClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.sleep(0.05)
        await pipe.aclose()
    assert len(errors) == 1
    assert await store.load("s") == []


async def test_an_output_guardrail_between_provider_and_save_stores_nothing() -> None:
    async def no_passwords_out(ctx: ExecutionContext, call_next: CallNext) -> None:
        if ctx.response is not None and "password" in ctx.response.content.lower():
            raise ValidationError("the answer looks like it leaks a password")
        await call_next(ctx)

    stages = [LoadState(), TokenBudget(4000), CallProvider(), no_passwords_out, SaveState()]
    provider = MockProvider(["the password is hunter2", "fine"])
    async with Pipeline(provider, middleware=stages) as pipe:
        with pytest.raises(ValidationError, match="leaks"):
            await pipe.execute("s", "user", "tell me")
        assert await pipe.store.load("s") == []
        assert (await pipe.execute("s", "user", "again")).response.content == "fine"

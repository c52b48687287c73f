"""The store conformance suite: every row of the store contract, on any store.

Subclass :class:`StoreConformance` in a pytest module and give it a ``store_factory`` fixture.
The tests are async and run under anyio's pytest plugin (``anyio_backend`` defaults to
asyncio here; override the fixture to run on trio too).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, TypeVar

import anyio
import msgspec
import pytest

from promptstate.exceptions import (
    ClosedError,
    ConflictError,
    CorruptStateError,
    InvalidKeyError,
    LeaseLostError,
    NotFoundError,
    PromptStateError,
    ValidationError,
)
from promptstate.stores.base import MAX_KEY_LENGTH, LeasingStore, Store
from promptstate.stores.turns import turn_refusal
from promptstate.types import (
    AudioPart,
    FilePart,
    ImagePart,
    Message,
    ReasoningPart,
    SessionInfo,
    State,
    TextPart,
    ToolCall,
)

__all__ = ["Corruption", "StoreConformance", "StoreFactory"]

#: ``await make(**options)`` returns a new, empty, isolated store; options are constructor
#: keywords such as ``ttl`` and ``touch_on_read``.
StoreFactory = Callable[..., Awaitable[Store]]

pytestmark = pytest.mark.anyio


class Corruption(msgspec.Struct, frozen=True):
    """One way to damage a stored session beneath its store, for the corruption tests.

    Attributes:
        damage: ``await damage(store, key)`` changes one stored field of the session ``key``
            the way another program or a damaged disk could (a wrong type, an impossible
            value), without going through the store.
        snapshot: ``await snapshot(store, key)`` returns the session's raw stored data, so
            the test can check that reading a corrupt session changes nothing.
        messages: Whether the damage is to the messages (so ``load`` must notice it too),
            rather than to the session's header.
        reads: Other reads that must notice it, by method name: ``"count"``,
            ``"get_metadata"``, ``"list_sessions"`` (those that read the damaged field).
    """

    damage: Callable[[Store, str], Awaitable[None]]
    snapshot: Callable[[Store, str], Awaitable[object]]
    messages: bool = False
    reads: tuple[str, ...] = ()


def _plain(message: Message) -> Message:
    """The message without the token count a store fills in."""
    return msgspec.structs.replace(message, tokens=None)


def _plain_all(messages: list[Message]) -> list[Message]:
    return [_plain(m) for m in messages]


def _sample_messages() -> list[Message]:
    t0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    return [
        Message("system", "You are terse.", timestamp=t0),
        Message(
            "user",
            "Wie spät ist es in 東京? 🕐 «quotes» \"double\" 'single' \\ back\nnew line\ttab",
            name="alice",
            timestamp=t0 + timedelta(seconds=1),
            metadata={"lang": "de", "nested": {"list": [1, 2.5, None, True, "x"]}},
        ),
        Message(
            "assistant",
            "",
            tool_calls=(
                ToolCall("call_1", "get_time", '{"city": "Tokyo"}'),
                ToolCall("call_2", "get_weather", '{"city": "東京", "units": "c"}'),
            ),
            timestamp=t0 + timedelta(seconds=2),
        ),
        Message("tool", "14:05", tool_call_id="call_1", name="get_time"),
        Message("tool", '{"temp": 21}', tool_call_id="call_2", name="get_weather"),
        Message("assistant", "It is 14:05 and 21 °C.", metadata={"model": "m-1"}),
    ]


#: Every byte value, so that no store may treat binary data as text.
_EVERY_BYTE = bytes(range(256))


def _part_messages() -> list[Message]:
    """Messages with every kind of part, binary data holding every byte value."""
    return [
        Message(
            "user",
            "What is in these?",
            parts=(
                TextPart("and in this text"),
                ImagePart(data=_EVERY_BYTE, media_type="image/png", detail="high"),
                ImagePart(url="https://example.com/cat.png"),
                ImagePart(url="data:image/gif;base64,R0lGODlhAQABAAAAACw="),
                AudioPart(data=_EVERY_BYTE[::-1] * 3, media_type="audio/wav", transcript="hi"),
                FilePart(
                    data=b"%PDF-1.7\n" + _EVERY_BYTE,
                    media_type="application/pdf",
                    name="report.pdf",
                ),
                FilePart(url="https://example.com/a.txt", media_type="text/plain"),
                ImagePart(data=b"", media_type="image/webp"),
            ),
        ),
        Message(
            "assistant",
            "",
            parts=(
                ReasoningPart(
                    text="The user wants…", signature="EqQBCgIYAhIM+/==", provider="anthropic"
                ),
                ReasoningPart(data="EmwKAhgBEgy3va3pzix/LafPsn4a", provider="anthropic"),
            ),
            tool_calls=(ToolCall("toolu_1", "describe", '{"n": 2}'),),
        ),
        Message("tool", "two images", tool_call_id="toolu_1", parts=(TextPart("ok"),)),
        Message(
            "assistant",
            "A cat and a PDF.",
            parts=(
                ReasoningPart(text="done", provider="openai"),
                AudioPart(data=b"\x00\xff" * 50, media_type="audio/mpeg"),
            ),
        ),
    ]


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _with_tokens(message: Message, tokens: object) -> Message:
    """A message holding a token count its constructor refuses (as a caller's mutation could)."""
    msgspec.structs.force_setattr(message, "tokens", tokens)
    return message


async def _outlives_its_first_ttl(
    lease: LeasingStore,
    prefix: str,
    extend: Callable[[str, float], Awaitable[bool]],
    what: str,
) -> None:
    """Take a lease for alice, ``extend(key, ttl)`` it halfway through its TTL, and check
    that bob cannot take it past the first TTL (within the new one). A run counts only when
    the machine did not stall past a TTL meanwhile; 5 tries."""
    ttl = 0.6
    for attempt in range(5):
        key = f"{prefix}{attempt}"
        taken = time.monotonic()
        assert await lease.acquire_lease(key, "alice", ttl)
        await anyio.sleep(ttl * 0.5)
        extended = await extend(key, ttl)
        extended_at = time.monotonic()
        await anyio.sleep(ttl * 0.7)  # past the first TTL, within the new one
        other = await lease.acquire_lease(key, "bob", ttl)
        checked = time.monotonic()
        if extended_at - taken < ttl * 0.9 and checked - extended_at < ttl * 0.9:
            assert extended, f"the holder could not {what} its lease"
            assert not other, f"a lease was taken over after its first TTL ({what})"
            assert await lease.release_lease(key, "alice")
            return
        # The machine stalled past a TTL: this run shows nothing; clean up and try again.
        for owner in ("alice", "bob"):
            await lease.release_lease(key, owner)
    pytest.fail(f"the machine was too busy to {what} within the TTL in 5 attempts")


def _turn(question: str, answer: str) -> list[Message]:
    return [Message("user", question), Message("assistant", answer)]


def _batch(tag: str, size: int) -> list[Message]:
    return [Message("user", f"{tag}/{i}", metadata={"batch": tag, "i": i}) for i in range(size)]


def _assert_whole_batches(messages: list[Message], size: int) -> list[str]:
    """Every batch in ``messages`` is whole and contiguous; returns the batch tags in order."""
    assert len(messages) % size == 0, f"{len(messages)} messages is not whole batches of {size}"
    tags = []
    for start in range(0, len(messages), size):
        chunk = messages[start : start + size]
        tag = chunk[0].metadata["batch"]
        assert [m.metadata for m in chunk] == [{"batch": tag, "i": i} for i in range(size)], (
            f"batch {tag} is split or interleaved"
        )
        tags.append(tag)
    assert len(set(tags)) == len(tags), "a batch was stored twice"
    return tags


_T = TypeVar("_T")


class _RefreshChain:
    """Times a chain of calls that each restart a session's TTL.

    Each call refreshes the TTL somewhere between its start and its end, and the next call
    sees the session somewhere between its own start and end; so the session is certainly
    alive for the next call only when that call ends within the TTL of the previous call's
    *start*. ``in_time`` turns false, for good, when a gap is too long for that.
    """

    def __init__(self, ttl: float) -> None:
        self._limit = ttl * 0.95
        self._started: float | None = None
        self.in_time = True

    async def step(self, call: Awaitable[_T]) -> _T:
        started = time.monotonic()
        result = await call
        if self._started is not None and time.monotonic() - self._started >= self._limit:
            self.in_time = False
        self._started = started
        return result


class StoreConformance:
    """The store contract as tests. Subclass it and define the ``store_factory`` fixture."""

    #: Seconds used as the TTL in expiry tests; raise it for slow backends.
    ttl_seconds: float = 1.0

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        raise NotImplementedError(
            "define a store_factory fixture in your StoreConformance subclass"
        )

    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> Store:
        return await store_factory()

    # -- get / set / delete ---------------------------------------------------------------

    @pytest.fixture
    def corruptions(self) -> dict[str, Corruption]:
        """Override: the ways to damage a session beneath this store, by name. A backend
        whose data nothing else can reach (an in-process dict) may leave it empty."""
        return {}

    async def test_get_missing_raises_not_found(self, store: Store) -> None:
        with pytest.raises(NotFoundError) as info:
            await store.get("no-such-session")
        assert isinstance(info.value, LookupError)
        assert "no-such-session" in str(info.value)

    async def test_round_trip_of_every_field(self, store: Store) -> None:
        created = datetime(2025, 12, 31, 23, 59, 59, 123456, tzinfo=timezone.utc)
        state = State(
            conversation_id="ignored: the key wins",
            user_id="user-ß-1",
            messages=_sample_messages(),
            total_cost=0.125,
            metadata={"prompt": "assistant", "vars": {"name": "Zoë"}, "n": 3, "f": 1.5},
            created_at=created,
        )
        stored = await store.set("conv:1", state)
        got = await store.get("conv:1")
        assert got.conversation_id == "conv:1" == stored.conversation_id
        assert got.user_id == "user-ß-1"
        assert _plain_all(got.messages) == state.messages
        assert got.total_cost == 0.125
        assert got.metadata == state.metadata
        assert got.created_at == created
        assert got.version == 1 == stored.version
        assert got.updated_at == stored.updated_at
        assert got.token_count == stored.token_count > 0
        assert all(m.tokens is not None and m.tokens > 0 for m in got.messages)
        assert got.token_count == sum(m.tokens or 0 for m in got.messages)
        assert got.messages[2].tool_calls[1] == ToolCall(
            "call_2", "get_weather", '{"city": "東京", "units": "c"}'
        )
        assert got.messages[3].tool_call_id == "call_1"

    async def test_parts_are_kept_exactly(self, store: Store) -> None:
        messages = _part_messages()
        await store.set("parts:set", State(conversation_id="parts:set", messages=messages))
        got = await store.get("parts:set")
        assert _plain_all(got.messages) == messages
        data = got.messages[0].parts[1]
        assert isinstance(data, ImagePart)
        assert type(data.data) is bytes
        assert data.data == _EVERY_BYTE
        assert got.messages[0].text == "What is in these?\nand in this text"
        assert await store.append("parts:append", messages[:2]) == 2
        assert await store.append("parts:append", messages[2:]) == 4
        assert _plain_all(await store.load("parts:append")) == messages
        assert _plain_all(await store.load("parts:append", last=1)) == messages[-1:]
        assert await store.append_turn("parts:turn", messages, cost=0.5, turn_id="t1") == 4
        assert await store.append_turn("parts:turn", messages, cost=0.5, turn_id="t1") == 4
        turn = [msgspec.structs.replace(messages[0], metadata={"turn_id": "t1"}), *messages[1:]]
        assert _plain_all((await store.get("parts:turn")).messages) == turn
        await store.fork("parts:set", "parts:fork")
        assert _plain_all(await store.load("parts:fork")) == messages
        await store.fork("parts:set", "parts:branch", at=2)
        assert _plain_all(await store.load("parts:branch")) == messages[:2]
        many = await store.get_many(["parts:set", "parts:turn"])
        assert [_plain_all(s.messages) if s else None for s in many] == [messages, turn]
        listed = [s async for s in store.list_by_prefix("parts:a")]
        assert [_plain_all(s.messages) for s in listed] == [messages]

    async def test_multi_megabyte_image_is_kept_byte_for_byte(self, store: Store) -> None:
        image = random.Random(13).randbytes(3 * 1024 * 1024) + _EVERY_BYTE
        message = Message("user", "look", parts=(ImagePart(data=image, media_type="image/png"),))
        await store.append("big", [message, Message("assistant", "seen")])
        got = await store.load("big")
        part = got[0].parts[0]
        assert isinstance(part, ImagePart)
        assert part.data == image
        assert _plain_all(got) == [
            message,
            Message("assistant", "seen", timestamp=got[1].timestamp),
        ]
        await store.set("big2", State(conversation_id="big2", messages=[message]))
        assert _plain_all((await store.get("big2")).messages) == [message]

    async def test_set_bumps_version_and_updated_at(self, store: Store) -> None:
        first = await store.set("k", State(conversation_id="k"))
        await anyio.sleep(0.002)
        second = await store.set("k", State(conversation_id="k", user_id="u"))
        assert (first.version, second.version) == (1, 2)
        assert second.updated_at > first.updated_at
        assert (await store.get("k")).version == 2

    async def test_expected_version_compare_and_set(self, store: Store) -> None:
        s = await store.set("cas", State(conversation_id="cas"), expected_version=0)
        assert s.version == 1
        with pytest.raises(ConflictError):
            await store.set("cas", State(conversation_id="cas", user_id="x"), expected_version=0)
        with pytest.raises(ConflictError):
            await store.set("cas", State(conversation_id="cas", user_id="x"), expected_version=7)
        got = await store.get("cas")
        assert got.version == 1, "a refused write changed the state"
        assert got.user_id is None, "a refused write changed the state"
        s2 = await store.set("cas", State(conversation_id="cas", user_id="y"), expected_version=1)
        assert s2.version == 2
        with pytest.raises(ConflictError):
            await store.set("absent", State(conversation_id="absent"), expected_version=1)
        with pytest.raises(NotFoundError):
            await store.get("absent")

    async def test_stored_state_is_isolated_from_caller_objects(self, store: Store) -> None:
        meta: dict[str, Any] = {"k": [1]}
        msg_meta: dict[str, Any] = {"x": 1}
        state = State(
            conversation_id="iso",
            messages=[Message("user", "a", metadata=msg_meta)],
            metadata=meta,
        )
        returned = await store.set("iso", state)
        meta["k"].append(2)
        msg_meta["x"] = 2
        state.messages.append(Message("user", "b"))
        returned.messages.append(Message("user", "c"))
        returned.metadata["new"] = True
        got = await store.get("iso")
        got.messages[0].metadata["x"] = 3
        got.metadata["k"] = "changed"
        again = await store.get("iso")
        assert [m.content for m in again.messages] == ["a"]
        assert again.messages[0].metadata == {"x": 1}
        assert again.metadata == {"k": [1]}
        loaded = await store.load("iso")
        loaded[0].metadata["y"] = 1
        loaded.append(Message("user", "d"))
        reloaded = await store.load("iso")
        assert [(m.content, m.metadata) for m in reloaded] == [("a", {"x": 1})]

    async def test_delete(self, store: Store) -> None:
        await store.set("d", State(conversation_id="d"))
        assert await store.delete("d") is True
        assert await store.delete("d") is False
        with pytest.raises(NotFoundError):
            await store.get("d")
        assert await store.load("d") == []

    # -- messages -------------------------------------------------------------------------

    async def test_load(self, store: Store) -> None:
        assert await store.load("unknown") == []
        assert await store.load("unknown", last=3) == []
        messages = _sample_messages()
        await store.set("l", State(conversation_id="l", messages=messages))
        assert _plain_all(await store.load("l")) == messages
        assert _plain_all(await store.load("l", last=2)) == messages[-2:]
        assert _plain_all(await store.load("l", last=1)) == messages[-1:]
        assert await store.load("l", last=0) == []
        assert _plain_all(await store.load("l", last=100)) == messages
        # Between the length and twice it: a negative slice start would drop the oldest ones.
        for last in (len(messages), len(messages) + 1, 2 * len(messages) - 1):
            assert _plain_all(await store.load("l", last=last)) == messages, last

    async def test_append(self, store: Store) -> None:
        assert await store.append("a", []) == 0
        with pytest.raises(NotFoundError):
            await store.get("a")
        assert await store.append("a", [Message("user", "1")]) == 1
        assert await store.append("a", [Message("assistant", "2"), Message("user", "3")]) == 3
        assert await store.append("a", []) == 3
        state = await store.get("a")
        assert [m.content for m in state.messages] == ["1", "2", "3"]
        assert state.version == 2  # append([]) writes nothing
        assert state.token_count == sum(m.tokens or 0 for m in state.messages) > 0
        assert [m.content for m in await store.load("a", last=2)] == ["2", "3"]
        pre_set = await store.set(
            "b", State(conversation_id="b", user_id="u", total_cost=1.5, metadata={"m": 1})
        )
        await store.append("b", [Message("user", "x")])
        b = await store.get("b")
        assert (b.user_id, b.total_cost, b.metadata) == ("u", 1.5, {"m": 1})
        assert b.version == pre_set.version + 1
        assert b.created_at == pre_set.created_at

    async def test_append_keeps_given_token_counts(self, store: Store) -> None:
        await store.append("t", [Message("user", "hello", tokens=42)])
        state = await store.get("t")
        assert state.messages[0].tokens == 42
        assert state.token_count == 42

    async def test_save_replaces_messages(self, store: Store) -> None:
        await store.save("s", [Message("user", "old")])
        await store.set("s", msgspec.structs.replace(await store.get("s"), user_id="keep"))
        await store.save("s", [Message("user", "new1"), Message("assistant", "new2")])
        state = await store.get("s")
        assert [m.content for m in state.messages] == ["new1", "new2"]
        assert state.user_id == "keep"
        assert state.version == 3
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        await store.save("s", [])
        assert await store.load("s") == []

    async def test_concurrent_appends_lose_nothing(self, store: Store) -> None:
        tasks, size = 40, 3

        async def add(i: int) -> None:
            await store.append("busy", _batch(f"t{i}", size))

        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(add, i)
        messages = await store.load("busy")
        tags = _assert_whole_batches(messages, size)
        assert sorted(tags) == sorted(f"t{i}" for i in range(tasks))
        assert (await store.get("busy")).version == tasks

    # -- cancellation: every write is settled when the call returns ------------------------

    #: Randomized cancellations per write and cancellation style; the environment variable
    #: ``PROMPTSTATE_CANCEL_TRIALS`` raises it for a long run.
    cancellation_trials: int = int(os.environ.get("PROMPTSTATE_CANCEL_TRIALS", "25"))

    async def _cancel_at_random(
        self, rng: random.Random, style: str, call: Callable[[], Awaitable[object]]
    ) -> bool:
        """Run ``call()`` and cancel it after a random delay (often before it even starts),
        with ``task.cancel()`` or an anyio cancel scope; True when it was cancelled."""
        delay = rng.choice((0.0, 0.0, rng.uniform(0, 0.001), rng.uniform(0, 0.006)))
        if style == "scope":
            with anyio.move_on_after(delay) as scope:
                await call()
            return scope.cancelled_caught
        task = asyncio.ensure_future(call())
        if delay:
            await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    def _styles(self) -> list[str]:
        # task.cancel() is asyncio's; on trio only cancel scopes exist.
        return ["task", "scope"] if asyncio._get_running_loop() is not None else ["scope"]

    async def _assert_settled(self, store: Store, key: str) -> list[Message]:
        """What is stored right after a cancelled call returned, checked again a little
        later: nothing of the cancelled write may land in between."""
        right_after = await store.load(key)
        await anyio.sleep(0.01)
        assert _plain_all(await store.load(key)) == _plain_all(right_after), (
            f"a cancelled write to {key!r} landed after its call had returned"
        )
        return right_after

    async def test_cancelled_appends_are_whole_settled_and_in_order(self, store: Store) -> None:
        rng = random.Random(20261204)
        for style in self._styles():
            key, cancelled = f"cancel-append-{style}", 0
            for trial in range(self.cancellation_trials):
                cancelled += await self._cancel_at_random(
                    rng, style, partial(store.append, key, _batch(f"a{trial}", 3))
                )
                before = await self._assert_settled(store, key)
                await store.append(key, _batch(f"b{trial}", 3))  # the caller's next write
                after = await store.load(key)
                assert _plain_all(after[: len(before)]) == _plain_all(before)
                assert [m.content for m in after[len(before) :]] == [
                    f"b{trial}/{i}" for i in range(3)
                ], "a cancelled append landed after the caller's next write"
            _assert_whole_batches(await store.load(key), 3)
            # (A store that never suspends, such as MemoryStore, is never cut inside a call:
            # an anyio scope cancels it only at its next checkpoint, after it finished.)
            if style == "task":
                assert cancelled, "no task.cancel() hit an append"

    async def test_cancelled_pops_are_whole_and_settled(self, store: Store) -> None:
        rng = random.Random(4122026)
        for style in self._styles():
            key = f"cancel-pop-{style}"
            for trial in range(self.cancellation_trials):
                await store.append(key, _batch(f"p{trial}", 2))
                await self._cancel_at_random(rng, style, partial(store.pop_messages, key, 2))
                left = await self._assert_settled(store, key)
                _assert_whole_batches(left, 2)  # a pop took both messages of a batch or none
                state = await store.get(key)
                assert state.token_count == sum(m.tokens or 0 for m in state.messages)

    async def test_cancelled_sets_and_saves_are_settled(self, store: Store) -> None:
        rng = random.Random(1204)
        for style in self._styles():
            key = f"cancel-set-{style}"
            state = await store.set(key, State(conversation_id=key))
            for trial in range(self.cancellation_trials):
                update = State(conversation_id=key, messages=_batch(f"s{trial}", 3))
                call: Callable[[], Awaitable[object]]
                if trial % 2:
                    call = partial(store.set, key, update, expected_version=state.version)
                else:
                    call = partial(store.save, key, _batch(f"v{trial}", 3))
                await self._cancel_at_random(rng, style, call)
                await self._assert_settled(store, key)
                state = await store.get(key)
                _assert_whole_batches(state.messages, 3)
                await anyio.sleep(0.005)
                assert (await store.get(key)).version == state.version

    async def test_cancelled_forks_and_turns_are_settled(self, store: Store) -> None:
        rng = random.Random(4)
        for style in self._styles():
            source = f"cancel-fork-{style}"
            await store.append(source, _batch("src", 4))
            for trial in range(self.cancellation_trials):
                target = f"{source}-{trial}"
                await self._cancel_at_random(rng, style, partial(store.fork, source, target))
                exists = await store.get_many([target])
                await anyio.sleep(0.005)
                if exists[0] is None:
                    assert (await store.get_many([target]))[0] is None, "a cancelled fork landed"
                else:
                    assert [m.content for m in exists[0].messages] == [
                        m.content for m in await store.load(source)
                    ]
            key = f"cancel-turn-{style}"
            for trial in range(self.cancellation_trials):
                count = len(await store.load(key))
                await self._cancel_at_random(
                    rng,
                    style,
                    partial(
                        store.append_turn,
                        key,
                        _batch(f"t{trial}", 2),
                        cost=0.5,
                        turn_id=f"{style}-{trial}",
                        expected_count=count,
                    ),
                )
                after = await self._assert_settled(store, key)
                assert len(after) in (count, count + 2)
            contents = [m.content for m in await store.load(key)]
            pairs = [contents[i : i + 2] for i in range(0, len(contents), 2)]
            assert all(a.split("/")[0] == b.split("/")[0] for a, b in pairs), pairs

    async def test_a_cancelled_pipeline_turn_leaves_the_session_free(self, store: Store) -> None:
        from promptstate.pipeline import Pipeline
        from promptstate.providers.mock import MockProvider

        rng = random.Random(99)
        provider = MockProvider(["ok"], cycle=True, delay=0.001)
        async with Pipeline(provider, store=store, lock_timeout=0.5) as pipe:
            for style in self._styles():
                for trial in range(self.cancellation_trials):
                    await self._cancel_at_random(
                        rng, style, partial(pipe.execute, "turns", "user", f"q{trial}")
                    )
                    # The next turn proceeds at once: nothing of the cancelled one holds the
                    # session (a lease left behind would raise SessionBusyError after 0.5 s).
                    await pipe.execute("turns", "user", f"next {trial}")
        contents = [m.content for m in await store.load("turns")]
        assert contents.count("ok") * 2 == len(contents)

    async def test_after_many_cancellations_every_connection_is_usable(self, store: Store) -> None:
        rng = random.Random(77)
        for style in self._styles():
            for trial in range(self.cancellation_trials):
                await self._cancel_at_random(
                    rng, style, partial(store.append, f"pool-{trial % 4}", _batch(str(trial), 2))
                )
        # A leaked or broken pooled connection shows as a hang or an error here.
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(store.append, f"pool-after-{n % 4}", _batch(f"x{n}", 2))
        for n in range(4):
            assert len(await store.load(f"pool-after-{n}")) == 20

    # -- fork -----------------------------------------------------------------------------

    async def test_fork_copies_and_stays_independent(self, store: Store) -> None:
        await store.set(
            "src",
            State(
                conversation_id="src",
                user_id="u",
                messages=_sample_messages(),
                total_cost=0.5,
                metadata={"a": 1},
            ),
        )
        forked = await store.fork("src", "dst")
        assert forked.conversation_id == "dst"
        assert forked.version == 1
        dst = await store.get("dst")
        src = await store.get("src")
        assert _plain_all(dst.messages) == _plain_all(src.messages)
        assert (dst.user_id, dst.total_cost, dst.metadata) == ("u", 0.5, {"a": 1})
        assert dst.token_count == src.token_count
        await store.append("dst", [Message("user", "only in dst")])
        await store.append("src", [Message("user", "only in src")])
        assert (await store.load("src", last=1))[0].content == "only in src"
        assert (await store.load("dst", last=1))[0].content == "only in dst"
        assert len(await store.load("src")) == len(await store.load("dst"))

    async def test_fork_errors(self, store: Store) -> None:
        with pytest.raises(NotFoundError):
            await store.fork("missing", "dst")
        await store.set("a", State(conversation_id="a", messages=[Message("user", "a")]))
        await store.set("b", State(conversation_id="b", messages=[Message("user", "b")]))
        with pytest.raises(ConflictError):
            await store.fork("a", "b")
        assert [m.content for m in await store.load("b")] == ["b"], "a refused fork wrote"
        forked = await store.fork("a", "b", overwrite=True)
        assert forked.version == 2
        assert [m.content for m in await store.load("b")] == ["a"]
        with pytest.raises(ValidationError):
            await store.fork("a", "a")

    # -- session facts: count, metadata, truncate, branches --------------------------------

    async def test_count(self, store: Store) -> None:
        assert await store.count("unknown") == 0
        await store.append("c", [Message("user", "1"), Message("assistant", "2")])
        assert await store.count("c") == 2
        await store.append("c", [Message("user", "3")])
        assert await store.count("c") == 3
        await store.set("s", State(conversation_id="s", messages=_sample_messages()))
        assert await store.count("s") == len(_sample_messages())
        await store.set("empty", State(conversation_id="empty"))
        assert await store.count("empty") == 0
        await store.delete("c")
        assert await store.count("c") == 0

    async def test_get_metadata(self, store: Store) -> None:
        with pytest.raises(NotFoundError):
            await store.get_metadata("absent")
        meta = {"title": "Zoë's trip", "tags": ["a", "b"], "n": 3, "nested": {"x": None}}
        await store.set("m", State(conversation_id="m", metadata=meta))
        got = await store.get_metadata("m")
        assert got == meta
        got["title"] = "changed"
        got["tags"].append("c")
        assert await store.get_metadata("m") == meta, "the returned dict is the store's own"
        await store.append("plain", [Message("user", "x")])
        assert await store.get_metadata("plain") == {}

    async def test_merge_metadata(self, store: Store) -> None:
        created = await store.merge_metadata("new", {"title": "first"})
        assert created == {"title": "first"}
        new = await store.get("new")
        assert (new.version, new.messages, new.metadata) == (1, [], {"title": "first"})

        before = await store.set(
            "mm",
            State(
                conversation_id="mm",
                user_id="u",
                messages=_sample_messages(),
                total_cost=0.5,
                metadata={"title": "old", "keep": 1, "drop": True},
            ),
        )
        await anyio.sleep(0.002)
        merged = await store.merge_metadata(
            "mm", {"title": "new", "tags": ["x"]}, remove=["drop", "never-there"]
        )
        assert merged == {"title": "new", "keep": 1, "tags": ["x"]}
        after = await store.get("mm")
        assert after.metadata == merged
        assert after.version == before.version + 1, "merge_metadata must bump the version"
        assert after.updated_at > before.updated_at
        assert after.created_at == before.created_at
        assert (after.user_id, after.total_cost) == ("u", 0.5)
        assert after.messages == before.messages, "merge_metadata touched the messages"
        assert after.token_count == before.token_count
        assert await store.get_metadata("mm") == merged
        assert await store.merge_metadata("mm", {}, remove=("title", "tags", "keep")) == {}
        assert (await store.get("mm")).version == before.version + 2
        # The caller's objects are not the store's.
        value: dict[str, Any] = {"k": [1]}
        await store.merge_metadata("mm", {"v": value})
        value["k"].append(2)
        assert await store.get_metadata("mm") == {"v": {"k": [1]}}

    async def test_merge_metadata_keeps_every_value_type(self, store: Store) -> None:
        many = {f"k{i:02d}": i * 1000 for i in range(40)}  # past 15 and 255 bytes: longer maps
        old: dict[str, Any] = {
            "f": 1.5,
            "neg": -(2**40),
            "big": 2**63 - 1,
            "none": None,
            "flag": False,
            "text": "ü" * 300,
            "nested": {"a": [1, {"b": "x" * 70_000}], "e": {}},
            **many,
        }
        await store.set("types", State(conversation_id="types", metadata=old))
        merged = await store.merge_metadata(
            "types", {"f": 2.5, "new": {"n": [None]}, "k00": "changed"}, remove=["k01", "none"]
        )
        expected = {**old, "f": 2.5, "new": {"n": [None]}, "k00": "changed"}
        del expected["k01"], expected["none"]
        assert merged == expected
        got = await store.get_metadata("types")
        assert got == expected
        assert list(got) == list(expected), "kept keys keep their place, new ones come last"
        assert (await store.get("types")).metadata == expected

    async def test_merge_metadata_refuses_bad_arguments(self, store: Store) -> None:
        await store.set("b", State(conversation_id="b", metadata={"a": 1}))
        bad_calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.merge_metadata("b", [("a", 2)]),  # type: ignore[arg-type]
            lambda: store.merge_metadata("b", {1: "int key"}),  # type: ignore[dict-item]
            lambda: store.merge_metadata("b", {"o": object()}),
            lambda: store.merge_metadata("b", {"big": 2**80}),
            lambda: store.merge_metadata("b", {"deep": _nested(5000)}),
            lambda: store.merge_metadata("b", {"a": 2}, remove="a"),
            lambda: store.merge_metadata("b", {}, remove=[1]),  # type: ignore[list-item]
            lambda: store.merge_metadata("b", {"a": 2}, remove=["a"]),
        ]
        for call in bad_calls:
            with pytest.raises(ValidationError):
                await call()
        with pytest.raises(InvalidKeyError):
            await store.merge_metadata("bad\x00key", {"a": 1})
        state = await store.get("b")
        assert (state.metadata, state.version) == ({"a": 1}, 1)

    async def test_concurrent_merges_and_appends_lose_nothing(self, store: Store) -> None:
        await store.append("cm", [Message("user", "start")])
        merges, appends, size = 25, 15, 2

        async def merge(i: int) -> None:
            await store.merge_metadata("cm", {f"k{i}": i})

        async def add(i: int) -> None:
            await store.append("cm", _batch(f"t{i}", size))

        async with anyio.create_task_group() as tg:
            for i in range(max(merges, appends)):
                if i < merges:
                    tg.start_soon(merge, i)
                if i < appends:
                    tg.start_soon(add, i)
        state = await store.get("cm")
        assert state.metadata == {f"k{i}": i for i in range(merges)}, "a merge was lost"
        tags = _assert_whole_batches(state.messages[1:], size)
        assert sorted(tags) == sorted(f"t{i}" for i in range(appends)), "an append was lost"
        assert state.version == 1 + merges + appends
        assert await store.count("cm") == 1 + appends * size
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)

    async def test_truncate(self, store: Store) -> None:
        with pytest.raises(NotFoundError):
            await store.truncate("absent", 0)
        messages = _sample_messages()
        before = await store.set(
            "tr", State(conversation_id="tr", messages=messages, total_cost=1.5, metadata={"a": 1})
        )
        assert await store.truncate("tr", len(messages) + 5) == len(messages)
        assert await store.truncate("tr", len(messages)) == len(messages)
        assert (await store.get("tr")).version == before.version, "a no-op truncate wrote"
        assert await store.truncate("tr", 4) == 4
        state = await store.get("tr")
        assert _plain_all(state.messages) == messages[:4]
        assert state.version == before.version + 1
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        assert state.token_count < before.token_count
        assert (state.total_cost, state.metadata) == (1.5, {"a": 1})
        assert await store.count("tr") == 4
        assert _plain_all(await store.load("tr", last=2)) == messages[2:4]
        # Appends after a truncation carry on at the new end.
        assert await store.append("tr", [Message("user", "again")]) == 5
        assert [m.content for m in await store.load("tr", last=2)] == [
            messages[3].content,
            "again",
        ]
        assert await store.truncate("tr", 0) == 0
        assert await store.load("tr") == []
        assert (await store.get("tr")).token_count == 0
        assert await store.append("tr", [Message("user", "fresh")]) == 1
        for bad in (-1, 1.5, "2", None, True):
            with pytest.raises(ValidationError):
                await store.truncate("tr", bad)  # type: ignore[arg-type]
        assert await store.count("tr") == 1

    async def test_pop_messages(self, store: Store) -> None:
        assert await store.pop_messages("absent") == []
        assert await store.count("absent") == 0, "a pop from nothing created a session"
        messages = _sample_messages()
        state = State(conversation_id="pop", messages=messages, total_cost=1.5, metadata={"a": 1})
        before = await store.set("pop", state)
        assert await store.pop_messages("pop", 0) == []
        assert (await store.get("pop")).version == before.version, "pop_messages(0) wrote"
        popped = await store.pop_messages("pop")
        assert _plain_all(popped) == messages[-1:]
        assert popped[0].tokens is not None, "a popped message lost its token count"
        assert _plain_all(await store.pop_messages("pop", 2)) == messages[-3:-1]
        state = await store.get("pop")
        assert _plain_all(state.messages) == messages[:3]
        assert state.version == before.version + 2
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        assert (state.total_cost, state.metadata) == (1.5, {"a": 1})
        assert await store.count("pop") == 3
        # Appends after a pop carry on at the new end; asking for more pops what is there.
        assert await store.append("pop", [Message("user", "again")]) == 4
        assert [m.content for m in await store.load("pop", last=2)] == [
            messages[2].content,
            "again",
        ]
        assert _plain_all(await store.pop_messages("pop", 99))[0] == messages[0]
        assert await store.load("pop") == []
        assert (await store.get("pop")).token_count == 0
        version = (await store.get("pop")).version
        assert await store.pop_messages("pop") == []
        assert (await store.get("pop")).version == version, "a pop from an empty session wrote"
        for bad in (-1, 1.5, "2", None, True):
            with pytest.raises(ValidationError):
                await store.pop_messages("pop", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            await store.pop_messages("")

    async def test_concurrent_pops_never_return_a_message_twice(self, store: Store) -> None:
        # Pops race each other and appends: every message is popped at most once, none is
        # lost, and what is left plus what was popped is exactly what was appended.
        start, appends, pops = 30, 10, 30
        await store.append("race", [Message("user", f"m{i}") for i in range(start)])
        popped: list[str] = []

        async def pop() -> None:
            popped.extend(m.content for m in await store.pop_messages("race"))

        async def add(i: int) -> None:
            await store.append("race", [Message("user", f"a{i}")])

        async with anyio.create_task_group() as tg:
            for i in range(max(pops, appends)):
                if i < pops:
                    tg.start_soon(pop)
                if i < appends:
                    tg.start_soon(add, i)
        left = [m.content for m in await store.load("race")]
        assert len(popped) == len(set(popped)), "a message was popped twice"
        assert len(popped) == pops
        expected = {f"m{i}" for i in range(start)} | {f"a{i}" for i in range(appends)}
        assert sorted(popped + left) == sorted(expected), "a message was lost or duplicated"
        state = await store.get("race")
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)

    async def test_fork_at_makes_a_branch(self, store: Store) -> None:
        messages = _sample_messages()
        await store.set(
            "src",
            State(
                conversation_id="src",
                user_id="u",
                messages=messages,
                total_cost=0.5,
                metadata={"title": "t"},
            ),
        )
        for at, expected in ((0, []), (3, messages[:3]), (6, messages), (100, messages)):
            branch = await store.fork("src", f"b{at}", at=at)
            assert _plain_all(branch.messages) == expected, at
            got = await store.get(f"b{at}")
            assert _plain_all(got.messages) == expected, at
            assert got.token_count == sum(m.tokens or 0 for m in got.messages), at
            assert (got.user_id, got.total_cost, got.metadata) == ("u", 0.5, {"title": "t"})
            assert await store.count(f"b{at}") == len(expected)
        await store.append("b3", [Message("user", "only in the branch")])
        assert _plain_all(await store.load("src")) == messages, "the branch changed its source"
        assert [m.content for m in await store.load("b3", last=1)] == ["only in the branch"]
        assert await store.count("b3") == 4
        with pytest.raises(ConflictError):
            await store.fork("src", "b3", at=1)
        assert await store.count("b3") == 4, "a refused fork wrote"
        assert len((await store.fork("src", "b3", at=1, overwrite=True)).messages) == 1
        assert await store.count("b3") == 1
        with pytest.raises(NotFoundError):
            await store.fork("absent", "x", at=1)
        for bad in (-1, 1.5, "2", True):
            with pytest.raises(ValidationError):
                await store.fork("src", "bad", at=bad)  # type: ignore[arg-type]
        with pytest.raises(NotFoundError):
            await store.get("bad")

    # -- list_sessions ----------------------------------------------------------------------

    @staticmethod
    async def _all_pages(store: Store, limit: int, **options: Any) -> list[SessionInfo]:
        items: list[SessionInfo] = []
        cursor: str | None = None
        for _ in range(10_000):
            page = await store.list_sessions(limit=limit, cursor=cursor, **options)
            assert len(page.items) <= limit
            items.extend(page.items)
            if page.next_cursor is None:
                return items
            assert page.items, "an empty page with a next cursor"
            cursor = page.next_cursor
        raise AssertionError("paging never ended")

    @staticmethod
    def _expected_order(states: list[State], order: str) -> list[str]:
        field = "created_at" if order.startswith("created") else "updated_at"
        ranked = sorted(states, key=lambda s: (getattr(s, field), s.conversation_id))
        if order.endswith("_desc"):
            ranked.reverse()
        return [s.conversation_id for s in ranked]

    async def test_list_sessions_gives_the_facts_without_messages(self, store: Store) -> None:
        created = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
        await store.set(
            "info",
            State(
                conversation_id="info",
                user_id="alice",
                messages=_sample_messages(),
                total_cost=0.25,
                metadata={"title": "Trip"},
                created_at=created,
            ),
        )
        await store.append("info", [Message("user", "more")])
        page = await store.list_sessions()
        assert page.next_cursor is None
        state = await store.get("info")
        assert page.items == [
            SessionInfo(
                conversation_id="info",
                user_id="alice",
                message_count=len(_sample_messages()) + 1,
                token_count=state.token_count,
                total_cost=0.25,
                metadata={"title": "Trip"},
                created_at=created,
                updated_at=state.updated_at,
                version=2,
            )
        ]
        empty = await store.list_sessions(prefix="nothing-here")
        assert (empty.items, empty.next_cursor) == ([], None)

    async def test_list_sessions_orders_and_breaks_ties_by_key(self, store: Store) -> None:
        t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
        # Equal creation times in groups of three (ties), written in a shuffled key order.
        keys = [f"o:{i:02d}" for i in range(14)]
        rng = random.Random(7)
        rng.shuffle(keys)
        for i, key in enumerate(keys):
            await store.set(
                key,
                State(
                    conversation_id=key,
                    created_at=t0 + timedelta(seconds=i // 3),
                    messages=[Message("user", key)],
                ),
            )
        # A few updates so that updated order differs from the creation order.
        for key in keys[:4]:
            await store.append(key, [Message("assistant", "later")])
        states = [await store.get(k) for k in keys]
        for order in ("updated_desc", "updated_asc", "created_desc", "created_asc"):
            expected = self._expected_order(states, order)
            for limit in (1, 2, 3, 5, 14, 50):
                got = await self._all_pages(store, limit, order=order)
                assert [i.conversation_id for i in got] == expected, (order, limit)
            # The same page twice is the same page (stable cursors).
            first = await store.list_sessions(order=order, limit=4)
            assert first.next_cursor is not None
            again = await store.list_sessions(order=order, limit=4, cursor=first.next_cursor)
            twice = await store.list_sessions(order=order, limit=4, cursor=first.next_cursor)
            assert again == twice
        default = await self._all_pages(store, 4)
        assert [i.conversation_id for i in default] == self._expected_order(states, "updated_desc")

    async def test_list_sessions_while_the_store_is_written(self, store: Store) -> None:
        for i in range(30):
            await store.append(f"w:{i:02d}", [Message("user", str(i))])
        for order in ("updated_desc", "updated_asc", "created_desc"):
            before = {k.conversation_id for k in await self._all_pages(store, 100)}
            updated: set[str] = set()
            seen: list[str] = []
            cursor: str | None = None
            step = 0
            while True:
                page = await store.list_sessions(order=order, limit=4, cursor=cursor)
                seen.extend(i.conversation_id for i in page.items)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
                step += 1
                # Between pages: update one session already seen and one not yet seen,
                # create one and delete one that was never listed.
                listed = set(seen)
                pending = sorted(before - listed - updated)
                if listed:
                    done = sorted(listed)[step % len(listed)]
                    await store.append(done, [Message("user", "update")])
                    updated.add(done)
                if pending:
                    todo = pending[step % len(pending)]
                    await store.append(todo, [Message("user", "update")])
                    updated.add(todo)
                await store.append(f"w:new:{order}:{step}", [Message("user", "new")])
            counts: dict[str, int] = {}
            for key in seen:
                counts[key] = counts.get(key, 0) + 1
            for key in before - updated:
                assert counts.get(key) == 1, f"{order}: {key} listed {counts.get(key, 0)} times"
            for key, n in counts.items():
                assert n == 1 or key in updated, f"{order}: {key} listed {n} times"

    async def test_list_sessions_filters_by_user_and_prefix(self, store: Store) -> None:
        layout = {
            "alice:1": "alice",
            "alice:2": "alice",
            "alice:3": None,
            "bob:1": "bob",
            "bob:2": "alice",
            "carol:1": "alice:x",
            "alicex:1": "alice",
        }
        for key, user in layout.items():
            await store.set(key, State(conversation_id=key, user_id=user))

        async def keys(**options: Any) -> list[str]:
            return sorted(i.conversation_id for i in await self._all_pages(store, 2, **options))

        assert await keys(user_id="alice") == ["alice:1", "alice:2", "alicex:1", "bob:2"]
        assert await keys(prefix="alice:") == ["alice:1", "alice:2", "alice:3"]
        assert await keys(prefix="alice:", user_id="alice") == ["alice:1", "alice:2"]
        assert await keys(prefix="bob:", user_id="alice") == ["bob:2"]
        assert await keys(prefix="bob:", user_id="carol") == []
        assert await keys(user_id="alice:x") == ["carol:1"]
        assert await keys(user_id="") == []
        assert await keys(prefix="zzz") == []
        page = await store.list_sessions(user_id="alice")
        assert all(i.user_id == "alice" for i in page.items)

    async def test_list_sessions_prefixes_are_literal(self, store: Store) -> None:
        for key in self.SPECIAL_KEYS:
            await store.set(key, State(conversation_id=key, user_id="u"))
        for prefix in ("a*", "a?", "a_", "a%", "a\\", "[a]", "a[", "a{", "a}", "a^", "a.", "a", ""):
            expected = sorted(k for k in self.SPECIAL_KEYS if k.startswith(prefix))
            for user in (None, "u"):
                got = await self._all_pages(store, 3, prefix=prefix, user_id=user)
                assert sorted(i.conversation_id for i in got) == expected, (prefix, user)

    async def test_list_sessions_never_lists_deleted_sessions(self, store: Store) -> None:
        for i in range(6):
            await store.append(f"d:{i}", [Message("user", "x")])
        await store.delete("d:1")
        assert await store.delete_by_prefix("d:4") == 1
        await store.merge_metadata("d:2", {"t": 1})
        await store.truncate("d:3", 0)
        got = await self._all_pages(store, 2, prefix="d:")
        assert sorted(i.conversation_id for i in got) == ["d:0", "d:2", "d:3", "d:5"]
        await store.delete_by_prefix("d:")
        assert (await store.list_sessions()).items == []

    async def test_list_sessions_never_lists_expired_sessions(
        self, store_factory: StoreFactory
    ) -> None:
        store = await store_factory(ttl=self.ttl_seconds)
        await store.append("exp:1", [Message("user", "a")])
        await store.merge_metadata("exp:2", {"title": "t"})
        await store.set("exp:3", State(conversation_id="exp:3", user_id="u"))
        assert len((await store.list_sessions()).items) == 3
        await anyio.sleep(self.ttl_seconds * 1.5)
        assert (await store.list_sessions()).items == []
        assert (await store.list_sessions(user_id="u")).items == []
        assert (await store.list_sessions(prefix="exp:", order="created_asc")).items == []
        assert await store.count("exp:1") == 0
        with pytest.raises(NotFoundError):
            await store.get_metadata("exp:2")
        with pytest.raises(NotFoundError):
            await store.truncate("exp:1", 0)
        assert await store.pop_messages("exp:1") == []
        await store.append("exp:1", [Message("user", "again")])
        assert [i.conversation_id for i in (await store.list_sessions()).items] == ["exp:1"]

    async def test_list_sessions_refuses_bad_arguments(self, store: Store) -> None:
        for i in range(3):
            await store.append(f"v:{i}", [Message("user", "x")])
        page = await store.list_sessions(limit=1)
        cursor = page.next_cursor
        assert cursor is not None
        bad: list[dict[str, Any]] = [
            {"limit": 0},
            {"limit": -1},
            {"limit": 10**6},
            {"limit": 1.5},
            {"limit": True},
            {"limit": "5"},
            {"order": "newest"},
            {"order": None},
            {"order": "UPDATED_DESC"},
            {"user_id": 5},
            {"cursor": ""},
            {"cursor": "not a cursor"},
            {"cursor": "x" * 5000},
            {"cursor": 5},
            {"cursor": cursor[:-3]},
            {"cursor": cursor + "AAAA"},
            {"cursor": "W10"},  # base64 of "[]"
            {"cursor": cursor, "order": "updated_asc"},
            {"cursor": cursor, "prefix": "v:"},
            {"cursor": cursor, "user_id": "u"},
        ]
        for options in bad:
            with pytest.raises(ValidationError):
                await store.list_sessions(**options)
        with pytest.raises(InvalidKeyError):
            await store.list_sessions(prefix="a\x00")
        assert len((await store.list_sessions(limit=1, cursor=cursor)).items) == 1

    async def test_new_methods_after_close_raise(self, store_factory: StoreFactory) -> None:
        store = await store_factory()
        await store.append("c", [Message("user", "x")])
        await store.aclose()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.count("c"),
            lambda: store.get_metadata("c"),
            lambda: store.merge_metadata("c", {"a": 1}),
            lambda: store.truncate("c", 0),
            lambda: store.pop_messages("c"),
            lambda: store.fork("c", "d", at=0),
            lambda: store.list_sessions(),
        ]
        for call in calls:
            with pytest.raises(ClosedError):
                await call()

    # -- listing --------------------------------------------------------------------------

    SPECIAL_KEYS = (
        "a*b:1",
        "a*bc",
        "axb:1",
        "a?:1",
        "ab:1",
        "a_:1",
        "aZ:1",
        "a%:1",
        "a%%",
        "a\\:1",
        "a\\\\",
        "[a]:1",
        "a[b]:1",
        "ab]:1",
        "a:1",
        "b:1",
        "a{x}:1",
        "a}{",
        "a^:1",
        "a.:1",
    )

    async def test_list_by_prefix_is_literal(self, store: Store) -> None:
        for key in self.SPECIAL_KEYS:
            await store.set(key, State(conversation_id=key))
        for prefix in ("a*", "a?", "a_", "a%", "a\\", "[a]", "a[", "a{", "a}", "a^", "a.", "a", ""):
            expected = sorted(k for k in self.SPECIAL_KEYS if k.startswith(prefix))
            got = sorted([s.conversation_id async for s in store.list_by_prefix(prefix)])
            assert got == expected, f"prefix {prefix!r}"
            keys = sorted([k async for k in store.list_keys(prefix)])
            assert keys == expected, f"list_keys prefix {prefix!r}"

    async def test_list_all_sees_only_this_store(self, store_factory: StoreFactory) -> None:
        one, two = await store_factory(), await store_factory()
        await one.set("x:1", State(conversation_id="x:1"))
        await one.set("x:2", State(conversation_id="x:2"))
        await two.set("x:3", State(conversation_id="x:3"))
        assert sorted([s.conversation_id async for s in one.list_all()]) == ["x:1", "x:2"]
        assert [s.conversation_id async for s in two.list_all()] == ["x:3"]
        with pytest.raises(NotFoundError):
            await one.get("x:3")

    async def test_delete_by_prefix_is_literal(self, store: Store) -> None:
        for key in self.SPECIAL_KEYS:
            await store.set(key, State(conversation_id=key))
        assert await store.delete_by_prefix("a_") == 1
        assert await store.delete_by_prefix("a%") == 2
        assert await store.delete_by_prefix("a*") == 2
        assert await store.delete_by_prefix("zzz") == 0
        left = sorted([s.conversation_id async for s in store.list_all()])
        gone = {"a_:1", "a%:1", "a%%", "a*b:1", "a*bc"}
        assert left == sorted(set(self.SPECIAL_KEYS) - gone)

    async def test_many_sessions_list_and_delete(self, store: Store) -> None:
        for i in range(120):
            await store.append(f"bulk:{i:03d}", [Message("user", str(i))])
        await store.append("other:1", [Message("user", "x")])
        listed = [s async for s in store.list_by_prefix("bulk:")]
        assert sorted(s.conversation_id for s in listed) == [f"bulk:{i:03d}" for i in range(120)]
        assert all(len(s.messages) == 1 for s in listed)
        assert await store.delete_by_prefix("bulk:") == 120
        assert [s.conversation_id async for s in store.list_all()] == ["other:1"]

    async def test_get_many(self, store: Store) -> None:
        await store.set("g1", State(conversation_id="g1", user_id="1"))
        await store.set("g2", State(conversation_id="g2", user_id="2"))
        got = await store.get_many(["g2", "missing", "g1", "g2"])
        assert [s.user_id if s else None for s in got] == ["2", None, "1", "2"]
        assert await store.get_many([]) == []

    # -- keys -----------------------------------------------------------------------------

    BAD_KEYS: tuple[object, ...] = (
        "",
        "a\x00b",
        "a\nb",
        "tab\there",
        "\x7f",
        "\x85",
        "x" * (MAX_KEY_LENGTH + 1),
        "\ud800",
        123,
        None,
        b"bytes",
    )

    async def test_invalid_keys_are_refused_before_io(self, store: Store) -> None:
        await store.set("good", State(conversation_id="good"))
        for bad in self.BAD_KEYS:
            calls: list[tuple[str, tuple[object, ...]]] = [
                ("get", (bad,)),
                ("set", (bad, State(conversation_id="x"))),
                ("delete", (bad,)),
                ("load", (bad,)),
                ("append", (bad, [Message("user", "x")])),
                ("save", (bad, [])),
                ("fork", ("good", bad)),
                ("fork", (bad, "good2")),
                ("get_many", (["good", bad],)),
            ]
            for method, args in calls:
                with pytest.raises(InvalidKeyError):
                    await getattr(store, method)(*args)
        with pytest.raises(InvalidKeyError):
            store.list_by_prefix("a\x00")
        with pytest.raises(InvalidKeyError):
            await store.delete_by_prefix(None)  # type: ignore[arg-type]
        assert [s.conversation_id async for s in store.list_all()] == ["good"]

    ODD_KEYS = (
        "{",
        "}",
        "{a}",
        "}{",
        "{{x}}",
        "a b",
        "  lead",
        "trail ",
        "'\"`",
        "日本語/会話",
        "emoji 🧠",
        "user:1/conv#2?x=y&z",
        "%25%7B",
        "x" * MAX_KEY_LENGTH,
    )

    async def test_odd_but_valid_keys_work(self, store: Store) -> None:
        for key in self.ODD_KEYS:
            await store.append(key, [Message("user", key[:20])])
            assert (await store.get(key)).conversation_id == key
            assert [m.content for m in await store.load(key, last=1)] == [key[:20]]
        listed = sorted([s.conversation_id async for s in store.list_all()])
        assert listed == sorted(self.ODD_KEYS)
        for key in self.ODD_KEYS:
            expected = sorted(k for k in self.ODD_KEYS if k.startswith(key))
            assert sorted([k async for k in store.list_keys(key)]) == expected, key
            assert await store.delete(key) is True
        assert [k async for k in store.list_keys("")] == []

    # -- bad input ------------------------------------------------------------------------

    async def test_bad_arguments_raise_validation_error(self, store: Store) -> None:
        await store.append("v", [Message("user", "keep")])
        bad_calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.set("v", {"messages": []}),  # type: ignore[arg-type]
            lambda: store.set("v", State(conversation_id="v"), expected_version=-1),
            # PostgresStore raised CorruptStateError, the others ConflictError.
            lambda: store.set("v", State(conversation_id="v"), expected_version=2**70),
            lambda: store.set("v", State(conversation_id="v", messages=[{"role": "user"}])),  # type: ignore[list-item]
            lambda: store.append("v", [{"role": "user", "content": "x"}]),  # type: ignore[list-item]
            lambda: store.append("v", Message("user", "not a list")),  # type: ignore[arg-type]
            lambda: store.append("v", "text"),  # type: ignore[arg-type]
            lambda: store.save("v", [None]),  # type: ignore[list-item]
            lambda: store.load("v", last=-1),
            lambda: store.load("v", last=1.5),  # type: ignore[arg-type]
            lambda: store.get_many("v"),
        ]
        for call in bad_calls:
            with pytest.raises(ValidationError):
                await call()
        state = await store.get("v")
        assert [m.content for m in state.messages] == ["keep"]
        assert state.version == 1

    async def test_load_with_a_huge_last_returns_everything(self, store: Store) -> None:
        # Redis (LRANGE) and PostgreSQL (LIMIT) used to refuse a last beyond 64 bits.
        await store.append("h", [Message("user", "a"), Message("assistant", "b")])
        for last in (2, 10**6, 2**63, 10**30):
            assert [m.content for m in await store.load("h", last=last)] == ["a", "b"]

    async def test_unstorable_values_are_refused_and_the_session_stays_readable(
        self, store: Store
    ) -> None:
        await store.append("u", [Message("user", "keep")])
        # A non-str metadata key used to be written and then make every read of the session fail.
        bad_messages = [
            Message("user", "x", metadata={1: "int key"}),  # type: ignore[dict-item]
            Message("user", "x", metadata={"o": object()}),
            Message("user", "x", metadata={"big": 2**80}),
            Message("user", "x", metadata={"nested": {(1, 2): "tuple key"}}),
            Message("user", "lone \ud800 surrogate"),
            Message("user", 5),  # type: ignore[arg-type]
            Message("user", "x", timestamp="yesterday"),  # type: ignore[arg-type]
            Message("assistant", tool_calls=({"id": "c1"},)),  # type: ignore[arg-type]
            _with_tokens(Message("user", "x"), -5),  # made token_count negative
        ]
        for bad in bad_messages:
            for call in (store.append, store.save):
                with pytest.raises(ValidationError):
                    await call("u", [bad])
            with pytest.raises(ValidationError):
                await store.set("u", State(conversation_id="u", messages=[bad]))
        bad_states = [
            State(conversation_id="u", total_cost=float("nan")),
            State(conversation_id="u", total_cost=float("inf")),
            State(conversation_id="u", metadata={1: "int key"}),  # type: ignore[dict-item]
            State(conversation_id="u", metadata={"o": {1, object()}}),
            State(conversation_id="u", user_id=5),  # type: ignore[arg-type]
            State(conversation_id="u", created_at="yesterday"),  # type: ignore[arg-type]
            State(conversation_id="u", metadata={"deep": _nested(5000)}),  # RecursionError
        ]
        for state in bad_states:
            with pytest.raises(ValidationError):
                await store.set("u", state)
        stored = await store.get("u")
        assert [m.content for m in stored.messages] == ["keep"]
        assert stored.version == 1
        assert [m.content for m in await store.load("u")] == ["keep"]

    # -- event loops ----------------------------------------------------------------------

    async def test_use_from_another_event_loop_is_refused_at_once_or_works(
        self, store: Store
    ) -> None:
        await store.append("loop", [Message("user", "here")])
        outcome: list[object] = []

        def elsewhere() -> None:
            async def use() -> object:
                await store.append("loop", [Message("user", "there")])
                return await store.load("loop")

            try:
                outcome.append(asyncio.run(asyncio.wait_for(use(), 10)))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=elsewhere, name="other-loop")
        thread.start()
        await anyio.to_thread.run_sync(thread.join, 20)
        assert outcome, "the call from another event loop never returned"
        [result] = outcome
        if store.loop_bound:
            assert isinstance(result, PromptStateError), result
            assert "other-loop" in str(result), result
            assert [m.content for m in await store.load("loop")] == ["here"]
        else:
            assert not isinstance(result, BaseException), result
            assert [m.content for m in await store.load("loop")] == ["here", "there"]
        # Its own loop carries on.
        await store.append("loop", [Message("user", "again")])
        assert (await store.load("loop"))[-1].content == "again"

    # -- corrupt stored data --------------------------------------------------------------

    async def test_corrupt_stored_data_raises_and_reading_changes_nothing(
        self, store: Store, corruptions: dict[str, Corruption]
    ) -> None:
        if not corruptions:
            pytest.skip(f"{type(store).__name__}'s data cannot be changed beneath it")
        await store.append("corrupt:ok", [Message("user", "untouched")])
        for number, (name, corruption) in enumerate(corruptions.items()):
            key = f"corrupt:{number}"
            await store.append(key, [Message("user", "a"), Message("assistant", "b", tokens=3)])
            await corruption.damage(store, key)
            before = await corruption.snapshot(store, key)
            reads: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("get", partial(store.get, key)),
                ("get_many", partial(store.get_many, [key, "corrupt:ok"])),
            ]
            if corruption.messages:
                reads.append(("load", partial(store.load, key)))
            extra: dict[str, Callable[[], Awaitable[object]]] = {
                "count": partial(store.count, key),
                "get_metadata": partial(store.get_metadata, key),
                "list_sessions": partial(store.list_sessions, prefix=key),
            }
            reads += [(what, extra[what]) for what in corruption.reads]
            for what, read in reads:
                for _ in range(2):
                    with pytest.raises(CorruptStateError) as info:
                        await read()
                    assert repr(key) in str(info.value), (name, what, info.value)
            assert await corruption.snapshot(store, key) == before, f"reading {name} changed it"
            # The damage stays with its session, which can still be deleted and written anew.
            assert [m.content for m in await store.load("corrupt:ok")] == ["untouched"]
            assert await store.delete(key)
            await store.append(key, [Message("user", "new")])
            assert [m.content for m in (await store.get(key)).messages] == ["new"]

    # -- TTL ------------------------------------------------------------------------------

    async def test_ttl_expires_whole_session(self, store_factory: StoreFactory) -> None:
        store = await store_factory(ttl=self.ttl_seconds)
        await store.append("ttl:1", [Message("user", "a"), Message("assistant", "b")])
        await store.set("ttl:2", State(conversation_id="ttl:2"))
        assert len(await store.load("ttl:1")) == 2
        await anyio.sleep(self.ttl_seconds * 1.5)
        with pytest.raises(NotFoundError):
            await store.get("ttl:1")
        assert await store.load("ttl:1") == []
        assert await store.get_many(["ttl:1", "ttl:2"]) == [None, None]
        assert [s async for s in store.list_by_prefix("ttl:")] == []
        assert [k async for k in store.list_keys("")] == []
        with pytest.raises(NotFoundError):
            await store.fork("ttl:1", "ttl:3")
        # An expired session starts afresh when written again.
        assert await store.append("ttl:1", [Message("user", "c")]) == 1

    async def test_a_ttl_no_backend_can_hold_is_refused(self, store_factory: StoreFactory) -> None:
        # It used to be accepted, then every write failed (each backend differently).
        for ttl in (1e300, timedelta(days=999_999_999)):
            with pytest.raises(ValidationError, match="ttl"):
                await store_factory(ttl=ttl)
        store = await store_factory(ttl=timedelta(days=365 * 300))
        assert await store.append("long", [Message("user", "x")]) == 1
        assert len(await store.load("long")) == 1

    async def test_ttl_is_refreshed_by_writes(self, store_factory: StoreFactory) -> None:
        store = await store_factory(ttl=timedelta(seconds=self.ttl_seconds))
        for attempt in range(5):
            key = f"ttl{attempt}"
            chain = _RefreshChain(self.ttl_seconds)
            await chain.step(store.append(key, [Message("user", "a")]))
            for i in range(3):
                await anyio.sleep(self.ttl_seconds * 0.6)
                await chain.step(store.append(key, [Message("user", str(i))]))
            count = len(await chain.step(store.load(key)))
            if chain.in_time:  # else the machine was too busy to write within the TTL
                assert count == 4
                return
        pytest.fail("the machine was too busy to write within the TTL in 5 attempts")

    async def test_ttl_is_refreshed_by_reads_when_asked(self, store_factory: StoreFactory) -> None:
        plain = await store_factory(ttl=self.ttl_seconds)
        touching = await store_factory(ttl=self.ttl_seconds, touch_on_read=True)
        for attempt in range(5):
            key = f"r{attempt}"
            await plain.append(key, [Message("user", "a")])
            plain_written = time.monotonic()
            chain = _RefreshChain(self.ttl_seconds)
            await chain.step(touching.append(key, [Message("user", "a")]))
            for _ in range(3):
                await anyio.sleep(self.ttl_seconds * 0.6)
                await chain.step(touching.load(key, last=1))
                await plain.load(key, last=1)
            touched = len(await chain.step(touching.load(key)))
            plain_read = time.monotonic()
            plain_left = await plain.load(key)
            if chain.in_time:  # else the machine was too busy to read within the TTL: try again
                assert touched == 1
                if plain_read - plain_written > self.ttl_seconds * 1.05:
                    assert plain_left == []
                return
        pytest.fail("the machine was too busy to read within the TTL in 5 attempts")

    async def test_count_and_get_metadata_refresh_the_ttl_when_asked(
        self, store_factory: StoreFactory
    ) -> None:
        touching = await store_factory(ttl=self.ttl_seconds, touch_on_read=True)
        for attempt in range(5):
            key = f"f{attempt}"
            chain = _RefreshChain(self.ttl_seconds)
            await chain.step(touching.append(key, [Message("user", "a")]))
            seen: list[object] = []
            for i in range(5):
                await anyio.sleep(self.ttl_seconds * 0.6)
                if i % 2:
                    seen.append(await chain.step(touching.get_metadata(key)))
                else:
                    seen.append(await chain.step(touching.count(key)))
            # Asserted only when every read came within the TTL of the one before (which
            # refreshed it); a machine too busy for that (seen with the suite beside other
            # jobs) tries again.
            if chain.in_time:
                assert seen == [1, {}, 1, {}, 1]
                return
        pytest.fail("the machine was too busy to read within the TTL in 5 attempts")

    # -- lifecycle ------------------------------------------------------------------------

    async def test_use_after_close_raises(self, store_factory: StoreFactory) -> None:
        store = await store_factory()
        async with store:
            await store.append("c", [Message("user", "x")])
        await store.aclose()  # idempotent
        assert store.closed
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get("c"),
            lambda: store.set("c", State(conversation_id="c")),
            lambda: store.delete("c"),
            lambda: store.load("c"),
            lambda: store.append("c", [Message("user", "y")]),
            lambda: store.fork("c", "d"),
            lambda: store.delete_by_prefix(""),
            lambda: store.get_many(["c"]),
        ]
        for call in calls:
            with pytest.raises(ClosedError):
                await call()
        with pytest.raises(ClosedError):
            store.list_all()
        with pytest.raises(ClosedError):
            async with store:
                pass

    # -- turns (append_turn) --------------------------------------------------------------

    async def test_append_turn_adds_cost_and_checks_count(self, store: Store) -> None:
        turn = [Message("user", "q1"), Message("assistant", "a1")]
        assert await store.append_turn("t", turn, cost=0.25, expected_count=0) == 2
        with pytest.raises(ConflictError):
            await store.append_turn("t", [Message("user", "late")], expected_count=0)
        assert await store.append_turn("t", [Message("user", "q2")], cost=0.5) == 3
        state = await store.get("t")
        assert [m.content for m in state.messages] == ["q1", "a1", "q2"]
        assert state.total_cost == 0.75
        assert state.token_count == sum(m.tokens or 0 for m in state.messages)
        with pytest.raises(ConflictError):
            await store.append_turn("absent", [Message("user", "x")], expected_count=3)
        assert await store.load("absent") == []

    async def test_append_turn_is_retry_safe(self, store: Store) -> None:
        turn = [Message("user", "q"), Message("assistant", "a")]
        assert await store.append_turn("r", turn, cost=0.1, turn_id="turn-1") == 2
        # The reply was lost and the turn is sent again: nothing is stored twice.
        assert await store.append_turn("r", turn, cost=0.1, turn_id="turn-1") == 2
        assert await store.append_turn("r", turn, cost=0.1, turn_id="turn-1", expected_count=0) == 2
        state = await store.get("r")
        assert [m.content for m in state.messages] == ["q", "a"]
        assert state.total_cost == pytest.approx(0.1)
        assert state.messages[0].metadata.get("turn_id") == "turn-1"
        assert await store.append_turn("r", turn, turn_id="turn-2") == 4

    async def test_concurrent_turns_lose_nothing(self, store: Store) -> None:
        async def turn(i: int) -> None:
            await store.append_turn(
                "ct",
                [Message("user", f"q{i}"), Message("assistant", f"a{i}")],
                cost=0.5,
                turn_id=f"id{i}",
            )

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(turn, i)
        state = await store.get("ct")
        assert len(state.messages) == 40
        for start in range(0, 40, 2):
            q, a = state.messages[start], state.messages[start + 1]
            assert (q.content[1:], q.role, a.role) == (a.content[1:], "user", "assistant")
        assert state.total_cost == 10.0

    async def test_append_turn_refusals_read_the_same_on_every_store(self, store: Store) -> None:
        """The rules and messages are promptstate.stores.turns', whatever does the I/O."""
        turn = [Message("user", "q"), Message("assistant", "a")]
        assert await store.append_turn("m", turn, turn_id="t1") == 2
        with pytest.raises(ConflictError) as conflict:
            await store.append_turn("m", turn, turn_id="t2", expected_count=5)
        assert str(conflict.value) == str(turn_refusal("m", 2, expected_count=5))
        # A stored turn goes first: its retry is no conflict.
        assert await store.append_turn("m", turn, turn_id="t1", expected_count=5) == 2
        if not isinstance(store, LeasingStore):
            return
        # The lease goes before the count, and a refused turn stores nothing.
        with pytest.raises(LeaseLostError) as lost:
            await store.append_turn(
                "m", turn, turn_id="t2", expected_count=5, release_lease="nobody"
            )
        assert str(lost.value) == str(turn_refusal("m", 2, expected_count=5, lease_held=False))
        assert await store.count("m") == 2
        assert await store.acquire_lease("m", "me", 5.0)
        assert await store.append_turn("m", turn, turn_id="t3", release_lease="me") == 4
        assert await store.acquire_lease("m", "other", 5.0), "the write kept the lease"
        # A retry of a stored turn is answered whoever holds the lease now, and leaves it be.
        assert await store.append_turn("m", turn, turn_id="t3", release_lease="me") == 4
        assert not await store.acquire_lease("m", "third", 5.0), "another owner's lease went"
        assert await store.release_lease("m", "other")

    # -- leases (stores that declare them: promptstate.LeasingStore) -------------------------

    def _leasing(self, store: Store) -> LeasingStore:
        if not isinstance(store, LeasingStore):
            pytest.skip(f"{type(store).__name__} has no cross-process leases")
        return store

    async def test_lease_calls_are_checked_before_any_io(self, store_factory: StoreFactory) -> None:
        store = await store_factory()
        if not isinstance(store, LeasingStore):
            await store.aclose()
            pytest.skip(f"{type(store).__name__} has no cross-process leases")
        bad: list[tuple[type[Exception], Callable[[], Awaitable[object]]]] = [
            (InvalidKeyError, lambda: store.acquire_lease("", "me", 5.0)),
            (InvalidKeyError, lambda: store.renew_lease("a\x00b", "me", 5.0)),
            (InvalidKeyError, lambda: store.release_lease(7, "me")),  # type: ignore[arg-type]
            (ValidationError, lambda: store.acquire_lease("k", "", 5.0)),
            (ValidationError, lambda: store.acquire_lease("k", None, 5.0)),  # type: ignore[arg-type]
            (ValidationError, lambda: store.release_lease("k", b"me")),  # type: ignore[arg-type]
            (ValidationError, lambda: store.acquire_lease("k", "me", float("nan"))),
            (ValidationError, lambda: store.renew_lease("k", "me", 0)),
            (ValidationError, lambda: store.acquire_and_load("k", "me", -1.0, last=None)),
        ]
        for error, call in bad:
            with pytest.raises(error):
                await call()
        assert await store.acquire_lease("k", "me", 5.0), "a refused call took the lease"
        await store.aclose()
        for call in (
            lambda: store.acquire_lease("k", "other", 5.0),
            lambda: store.renew_lease("k", "me", 5.0),
            lambda: store.release_lease("k", "me"),
            lambda: store.acquire_and_load("k", "me", 5.0, last=None),
        ):
            with pytest.raises(ClosedError):
                await call()

    async def test_leases_exclude_renew_release_and_expire(self, store: Store) -> None:
        lease = self._leasing(store)
        assert await lease.acquire_lease("L", "alice", 5.0) is True
        assert await lease.acquire_lease("L", "bob", 5.0) is False
        assert await lease.renew_lease("L", "bob", 5.0) is False
        assert await lease.renew_lease("L", "alice", 5.0) is True
        assert await lease.release_lease("L", "bob") is False
        assert await lease.acquire_lease("L", "bob", 5.0) is False
        assert await lease.release_lease("L", "alice") is True
        assert await lease.release_lease("L", "alice") is False, "released twice"
        assert await lease.renew_lease("L", "alice", 5.0) is False, "a released lease renewed"
        assert await lease.acquire_lease("L", "bob", 0.3) is True
        await anyio.sleep(0.6)
        assert await lease.renew_lease("L", "bob", 5.0) is False, "an expired lease renewed"
        assert await lease.acquire_lease("L", "carol", 5.0) is True, "expired lease not taken"
        assert await lease.release_lease("L", "bob") is False
        assert await lease.release_lease("L", "carol") is True
        # One lease per session: another session's lease is independent.
        assert await lease.acquire_lease("L1", "alice", 5.0) is True
        assert await lease.acquire_lease("L2", "bob", 5.0) is True
        assert await lease.release_lease("L1", "alice") is True
        assert await lease.release_lease("L2", "bob") is True
        # Leases are not sessions: none of this is listed, counted or stored.
        assert [k async for k in store.list_keys("")] == []
        assert (await store.list_sessions()).items == []
        assert await store.load("L") == []

    async def test_a_renewed_lease_outlives_its_first_ttl(self, store: Store) -> None:
        lease = self._leasing(store)
        await _outlives_its_first_ttl(
            lease, "renew", lambda key, ttl: lease.renew_lease(key, "alice", ttl), "renew"
        )

    async def test_the_holder_takes_its_own_lease_again(self, store: Store) -> None:
        # An acquire sent again after its reply was lost (redis-py retries by default; a
        # caller may too) finds the lease its first try took: it is taken again, its TTL set
        # anew, by acquire_lease and acquire_and_load alike; nobody else gets in.
        lease = self._leasing(store)
        await store.append("again", [*_turn("q1", "a1")])
        assert await lease.acquire_lease("again", "alice", 30.0)
        assert await lease.acquire_lease("again", "alice", 30.0), "the holder was refused"
        found = await lease.acquire_and_load("again", "alice", 30.0, last=1)
        assert found is not None, "the holder's acquire_and_load was refused"
        assert [m.content for m in found] == ["a1"]
        assert not await lease.acquire_lease("again", "bob", 30.0)
        assert await lease.acquire_and_load("again", "bob", 30.0, last=1) is None
        assert await lease.release_lease("again", "alice")
        assert not await lease.release_lease("again", "alice"), "one release was not enough"
        await _outlives_its_first_ttl(
            lease,
            "again",
            lambda key, ttl: lease.acquire_lease(key, "alice", ttl),
            "take the lease again",
        )

    async def test_acquire_and_load_reads_only_with_the_lease(self, store: Store) -> None:
        lease = self._leasing(store)
        await store.append("conv", [*_turn("q1", "a1"), *_turn("q2", "a2")])
        found = await lease.acquire_and_load("conv", "owner-a", 30.0, last=3)
        assert found is not None
        assert [m.content for m in found] == ["a1", "q2", "a2"]
        # Another owner: refused, and nothing read (None, not a list).
        assert await lease.acquire_and_load("conv", "owner-b", 30.0, last=3) is None
        assert await lease.acquire_and_load("conv", "owner-b", 30.0, last=None) is None
        assert not await lease.acquire_lease("conv", "owner-b", 30.0)
        # The holder's lease is untouched by the refusals.
        assert await lease.release_lease("conv", "owner-a")
        everything = await lease.acquire_and_load("conv", "owner-b", 30.0, last=None)
        assert everything is not None
        assert [m.content for m in everything] == ["q1", "a1", "q2", "a2"]
        assert await lease.release_lease("conv", "owner-b")
        assert await lease.acquire_and_load("conv", "owner-c", 30.0, last=0) == []
        assert await lease.release_lease("conv", "owner-c")
        # An unknown session: the lease is taken and the history is empty.
        assert await lease.acquire_and_load("new", "owner-d", 30.0, last=5) == []
        assert not await lease.acquire_lease("new", "owner-e", 30.0)
        assert await lease.release_lease("new", "owner-d")
        # What it reads is the caller's own copy.
        again = await lease.acquire_and_load("conv", "owner-f", 30.0, last=2)
        assert again is not None
        again.append(Message("user", "mine"))
        assert [m.content for m in await store.load("conv")] == ["q1", "a1", "q2", "a2"]
        assert await lease.release_lease("conv", "owner-f")

    async def test_acquire_and_load_takes_over_an_expired_lease(self, store: Store) -> None:
        lease = self._leasing(store)
        await store.append("conv", _turn("q", "a"))
        assert await lease.acquire_lease("conv", "dead", 0.05)
        await anyio.sleep(0.2)
        found = await lease.acquire_and_load("conv", "alive", 30.0, last=10)
        assert found is not None
        assert [m.content for m in found] == ["q", "a"]
        assert not await lease.renew_lease("conv", "dead", 30.0)
        assert not await lease.release_lease("conv", "dead")
        assert await lease.release_lease("conv", "alive")

    async def test_acquire_and_load_refuses_bad_arguments_and_takes_nothing(
        self, store: Store
    ) -> None:
        lease: Any = self._leasing(store)
        bad: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (("", "o", 1.0), {"last": 1}),
            (("k\x00", "o", 1.0), {"last": 1}),
            ((5, "o", 1.0), {"last": 1}),
            (("k", "", 1.0), {"last": 1}),
            (("k", 5, 1.0), {"last": 1}),
            (("k", "o", 0), {"last": 1}),
            (("k", "o", -1.0), {"last": 1}),
            (("k", "o", float("nan")), {"last": 1}),
            (("k", "o", float("inf")), {"last": 1}),
            (("k", "o", True), {"last": 1}),
            (("k", "o", "1"), {"last": 1}),
            (("k", "o", 1.0), {"last": -1}),
            (("k", "o", 1.0), {"last": "3"}),
            (("k", "o", 1.0), {"last": True}),
        ]
        for args, kwargs in bad:
            with pytest.raises((ValidationError, InvalidKeyError)):
                await lease.acquire_and_load(*args, **kwargs)
        # Nothing was taken.
        assert await lease.acquire_lease("k", "probe", 1.0)
        assert await lease.release_lease("k", "probe")

    async def test_append_turn_releases_only_the_given_owners_lease(self, store: Store) -> None:
        lease = self._leasing(store)
        await store.append("conv", _turn("q0", "a0"))
        assert await lease.acquire_lease("conv", "owner-a", 30.0)
        # Not the holder: nothing written, and the holder's lease stays.
        with pytest.raises(LeaseLostError):
            await lease.append_turn(
                "conv", _turn("q1", "a1"), turn_id="t1", release_lease="owner-b"
            )
        assert [m.content for m in await store.load("conv")] == ["q0", "a0"]
        assert not await lease.acquire_lease("conv", "owner-c", 30.0)
        # The holder: written, and its lease released in the same step.
        count = await lease.append_turn(
            "conv", _turn("q1", "a1"), cost=0.5, turn_id="t1", release_lease="owner-a"
        )
        assert count == 4
        state = await store.get("conv")
        assert state.total_cost == pytest.approx(0.5)
        assert state.messages[2].metadata.get("turn_id") == "t1"
        assert not await lease.release_lease("conv", "owner-a")  # already gone
        # A retry of that save (its reply was lost) after someone else took the lease: the
        # turn is recognised as stored, nothing is written twice, the new holder keeps its lease.
        assert await lease.acquire_lease("conv", "owner-c", 30.0)
        again = await lease.append_turn(
            "conv", _turn("q1", "a1"), cost=0.5, turn_id="t1", release_lease="owner-a"
        )
        assert again == 4
        assert [m.content for m in await store.load("conv")] == ["q0", "a0", "q1", "a1"]
        assert (await store.get("conv")).total_cost == pytest.approx(0.5)
        assert not await lease.acquire_lease("conv", "owner-d", 30.0)
        # A new turn by someone without the lease is refused while owner-c holds it.
        with pytest.raises(LeaseLostError):
            await lease.append_turn(
                "conv", _turn("q2", "a2"), turn_id="t2", release_lease="owner-a"
            )
        assert [m.content for m in await store.load("conv")] == ["q0", "a0", "q1", "a1"]
        assert await lease.release_lease("conv", "owner-c")

    async def test_append_turn_with_no_or_an_expired_lease_stores_nothing(
        self, store: Store
    ) -> None:
        lease = self._leasing(store)
        # Nobody holds the lease.
        with pytest.raises(LeaseLostError):
            await lease.append_turn("conv", _turn("q", "a"), turn_id="t", release_lease="ghost")
        # The holder's lease expired (nobody took it over).
        assert await lease.acquire_lease("conv", "slow", 0.05)
        await anyio.sleep(0.2)
        with pytest.raises(LeaseLostError):
            await lease.append_turn("conv", _turn("q", "a"), turn_id="t", release_lease="slow")
        assert await store.load("conv") == []
        assert await store.get_many(["conv"]) == [None]
        # The same on a session that has a history: the history is left as it was.
        await store.append("old", _turn("q0", "a0"))
        assert await lease.acquire_lease("old", "slow", 0.05)
        await anyio.sleep(0.2)
        with pytest.raises(LeaseLostError):
            await lease.append_turn("old", _turn("q", "a"), cost=1.0, release_lease="slow")
        state = await store.get("old")
        assert [m.content for m in state.messages] == ["q0", "a0"]
        assert (state.version, state.total_cost) == (1, 0.0)
        assert await lease.acquire_lease("old", "next", 30.0)
        assert await lease.release_lease("old", "next")

    async def test_append_turn_release_lease_on_a_new_session_and_a_conflict(
        self, store: Store
    ) -> None:
        lease = self._leasing(store)
        assert await lease.acquire_lease("fresh", "me", 30.0)
        assert (
            await lease.append_turn("fresh", _turn("q", "a"), turn_id="t", release_lease="me") == 2
        )
        assert await lease.acquire_lease("fresh", "next", 30.0)
        # expected_count conflicts leave the lease with its holder (the turn's finally frees it).
        with pytest.raises(ConflictError):
            await lease.append_turn(
                "fresh", _turn("q2", "a2"), turn_id="t2", expected_count=5, release_lease="next"
            )
        assert [m.content for m in await store.load("fresh")] == ["q", "a"]
        assert not await lease.acquire_lease("fresh", "third", 30.0)
        assert await lease.release_lease("fresh", "next")
        with pytest.raises(ValidationError):
            await lease.append_turn("fresh", _turn("q", "a"), release_lease="")
        with pytest.raises(ValidationError):
            await lease.append_turn("fresh", _turn("q", "a"), release_lease=5)  # type: ignore[arg-type]

    async def test_append_turn_with_the_lease_recognises_a_turn_stored_already(
        self, store: Store
    ) -> None:
        # The holder saves a turn whose id is already where the turn would start (stored by
        # an earlier attempt): nothing is written twice, and the lease is released all the same.
        lease = self._leasing(store)
        assert await lease.acquire_lease("conv", "first", 30.0)
        assert (
            await lease.append_turn("conv", _turn("q", "a"), turn_id="t", release_lease="first")
            == 2
        )
        assert await lease.acquire_lease("conv", "second", 30.0)
        assert (
            await lease.append_turn("conv", _turn("q", "a"), turn_id="t", release_lease="second")
            == 2
        )
        assert [m.content for m in await store.load("conv")] == ["q", "a"]
        assert await lease.acquire_lease("conv", "third", 30.0)
        # Another turn id: written.
        assert (
            await lease.append_turn("conv", _turn("q", "a"), turn_id="u", release_lease="third")
            == 4
        )

    async def test_append_turn_release_lease_needs_a_leasing_store(self, store: Store) -> None:
        if isinstance(store, LeasingStore):
            pytest.skip(f"{type(store).__name__} has leases")
        with pytest.raises(ValidationError, match="no leases"):
            await store.append_turn("conv", _turn("q", "a"), release_lease="me")
        assert await store.load("conv") == []

    async def test_cancelled_lease_calls_are_settled(self, store: Store) -> None:
        lease = self._leasing(store)
        rng = random.Random(14)
        # The atomic form (a backend's own _append_turn): the turn is stored exactly when the
        # lease is released. The base class's default renews, appends, then releases.
        atomic = type(store)._append_turn is not LeasingStore._append_turn
        stored_turns = 0
        for style in self._styles():
            key, hits = f"cancel-lease-{style}", {"acquire_and_load": 0, "acquire_lease": 0}
            for trial in range(self.cancellation_trials):
                owner = f"{style}-{trial}"
                count = len(await store.load(key))
                # Both ways of taking the lease, in turn.
                acquire = (
                    partial(lease.acquire_and_load, key, owner, 30.0, last=4)
                    if trial % 2 == 0
                    else partial(lease.acquire_lease, key, owner, 30.0)
                )
                cancelled = await self._cancel_at_random(rng, style, acquire)
                # Settled: the lease is this owner's or nobody's, and stays so.
                held = await lease.renew_lease(key, owner, 30.0)
                await anyio.sleep(0.005)
                assert await lease.renew_lease(key, owner, 30.0) == held
                hits[acquire.func.__name__] += cancelled
                if not held:
                    assert cancelled, (
                        f"{acquire.func.__name__} returned without taking a free lease"
                    )
                    assert await lease.acquire_lease(key, owner, 30.0), "the lease is not free"
                await self._cancel_at_random(
                    rng,
                    style,
                    partial(
                        lease.append_turn,
                        key,
                        _batch(f"t{trial}", 2),
                        cost=0.5,
                        turn_id=owner,
                        release_lease=owner,
                    ),
                )
                after = await self._assert_settled(store, key)
                stored = len(after) == count + 2
                assert stored or len(after) == count, "a cancelled turn is stored in part"
                held = await lease.renew_lease(key, owner, 30.0)
                await anyio.sleep(0.005)
                assert await lease.renew_lease(key, owner, 30.0) == held
                stored_turns += stored
                if not stored:
                    assert held, "a turn that was not stored gave the lease away"
                elif atomic:
                    assert not held, "a stored turn kept its lease"
                if held:
                    assert await lease.release_lease(key, owner)
                # Nothing of this trial holds the session now.
                assert await lease.acquire_lease(key, "probe", 30.0)
                assert await lease.release_lease(key, "probe")
            contents = [m.content for m in await store.load(key)]
            pairs = [contents[i : i + 2] for i in range(0, len(contents), 2)]
            assert all(a.split("/")[0] == b.split("/")[0] for a, b in pairs), pairs
            if style == "task":
                assert all(hits.values()), f"task.cancel() missed a way to acquire: {hits}"
        assert stored_turns, "no turn was stored: the checks of a stored turn never ran"

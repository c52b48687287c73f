"""export_states / import_states: round trips, conflicts, corrupt lines, streaming."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from promptstate import (
    AudioPart,
    ClosedError,
    CorruptStateError,
    FilePart,
    ImagePart,
    MemoryStore,
    Message,
    ReasoningPart,
    State,
    TextPart,
    ValidationError,
    decode_state,
    encode_state,
    export_states,
    import_states,
)
from promptstate.backup import BATCH_SIZE

pytestmark = pytest.mark.anyio


def _state(key: str, n: int = 2, *, user: str | None = "alice") -> State:
    return State(
        conversation_id=key,
        user_id=user,
        messages=[Message("user" if i % 2 == 0 else "assistant", f"{key} #{i}") for i in range(n)],
        total_cost=0.25,
        metadata={"topic": key, "promptstate": {"prompt": "chat"}},
    )


async def _fill(store: MemoryStore, keys: list[str]) -> None:
    for key in keys:
        await store.set(key, _state(key))


async def _export(store: MemoryStore, prefix: str = "") -> list[bytes]:
    return [line async for line in export_states(store, prefix)]


async def test_round_trip_keeps_everything_but_the_version() -> None:
    source, target = MemoryStore(), MemoryStore()
    keys = [f"alice:{i}" for i in range(40)] + ["bob:1"]
    await _fill(source, keys)
    lines = await _export(source)
    assert len(lines) == len(keys)
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)

    result = await import_states(target, lines)
    assert (result.imported, result.skipped, result.failed) == (len(keys), 0, 0)
    for key in keys:
        before, after = await source.get(key), await target.get(key)
        assert after.messages == before.messages
        assert after.user_id == before.user_id
        assert after.metadata == before.metadata
        assert after.total_cost == before.total_cost
        assert after.token_count == before.token_count
        assert after.created_at == before.created_at
        assert after.version == 1


async def test_parts_survive_export_and_import_byte_for_byte() -> None:
    every = bytes(range(256))
    big = every * 8192  # 2 MiB
    messages = [
        Message(
            "user",
            "see",
            parts=(
                TextPart("more"),
                ImagePart(data=big, media_type="image/png", detail="low"),
                ImagePart(url="https://example.com/x.png"),
                AudioPart(data=every, media_type="audio/wav", transcript="t"),
                FilePart(data=every[::-1], media_type="application/pdf", name="a.pdf"),
            ),
        ),
        Message(
            "assistant",
            "ok",
            parts=(ReasoningPart(text="hm", signature="s==", provider="anthropic"),),
        ),
    ]
    source, target = MemoryStore(), MemoryStore()
    await source.set("r", State(conversation_id="r", messages=messages))
    lines = await _export(source)
    doc = json.loads(lines[0])
    image = doc["messages"][0]["parts"][1]
    assert (image["type"], image["media_type"]) == ("image", "image/png")
    assert base64.b64decode(image["data"]) == big  # base64 in the JSON wire format
    assert (await import_states(target, lines)).imported == 1
    got = await target.get("r")
    assert got.messages == (await source.get("r")).messages
    assert [m.parts for m in got.messages] == [m.parts for m in messages]


async def test_export_prefix_is_literal() -> None:
    store = MemoryStore()
    await _fill(store, ["a%b:1", "a%b:2", "axb:1", "a_b:1"])
    lines = await _export(store, "a%b:")
    assert sorted(decode_state(line).conversation_id for line in lines) == ["a%b:1", "a%b:2"]
    assert await _export(store, "zzz") == []


async def test_existing_states_are_skipped_unless_overwrite() -> None:
    source, target = MemoryStore(), MemoryStore()
    await _fill(source, ["k1", "k2", "k3"])
    await target.set("k2", State(conversation_id="k2", messages=[Message("user", "keep me")]))
    lines = await _export(source)

    result = await import_states(target, lines)
    assert (result.imported, result.skipped) == (2, 1)
    assert result.skipped_ids == ["k2"]
    assert [m.content for m in await target.load("k2")] == ["keep me"]

    again = await import_states(target, lines)  # running it again changes nothing
    assert (again.imported, again.skipped) == (0, 3)

    result = await import_states(target, lines, overwrite=True)
    assert (result.imported, result.skipped) == (3, 0)
    assert [m.content for m in await target.load("k2")] == ["k2 #0", "k2 #1"]


async def test_corrupt_line_is_fatal_by_default_and_names_its_line() -> None:
    store = MemoryStore()
    lines = [encode_state(_state("ok1")), b"{not json", encode_state(_state("ok2"))]
    with pytest.raises(CorruptStateError, match=r"^line 2: state data is not valid JSON"):
        await import_states(store, lines)
    assert (await store.get("ok1")).messages  # lines before the bad one were written
    assert await store.load("ok2") == []


async def test_corrupt_lines_can_be_skipped() -> None:
    store = MemoryStore()
    lines = [
        encode_state(_state("ok1")),
        b'{"schema_version": 1, "conversation_id": 5}',
        b"",
        b"[1, 2]",
        encode_state(_state("ok2")),
        json.dumps({"schema_version": 99, "conversation_id": "x"}).encode(),
        encode_state(_state("bad\x00key")),
    ]
    result = await import_states(store, lines, on_error="skip")
    assert (result.imported, result.skipped, result.failed) == (2, 0, 4)
    assert [issue.line for issue in result.errors] == [2, 4, 6, 7]
    assert "newer than this release" in result.errors[2].message
    assert "control character" in result.errors[3].message
    assert sorted([s.conversation_id async for s in store.list_all()]) == ["ok1", "ok2"]


async def test_invalid_key_is_fatal_by_default() -> None:
    with pytest.raises(CorruptStateError, match=r"^line 1: conversation_id must not be empty"):
        await import_states(MemoryStore(), [encode_state(State(conversation_id=""))])


async def test_accepts_text_lines_files_and_async_iterables(tmp_path: Path) -> None:
    source = MemoryStore()
    await _fill(source, ["a", "b"])
    path = tmp_path / "backup.jsonl"
    with path.open("wb") as f:
        async for line in export_states(source):
            f.write(line)

    with path.open("rb") as f:
        assert (await import_states(MemoryStore(), f)).imported == 2
    with path.open(encoding="utf-8") as text:
        assert (await import_states(MemoryStore(), text)).imported == 2
    assert (await import_states(MemoryStore(), io.StringIO(path.read_text()))).imported == 2

    async def agen() -> AsyncIterator[bytes]:
        for line in path.read_bytes().splitlines(keepends=True):
            yield line

    assert (await import_states(MemoryStore(), agen())).imported == 2


async def test_older_schema_is_migrated_on_import() -> None:
    v0 = {"id": "old", "user": "carol", "history": [{"role": "user", "text": "hi", "ts": 0}]}
    store = MemoryStore()
    result = await import_states(store, [json.dumps(v0)])
    assert result.imported == 1
    state = await store.get("old")
    assert state.user_id == "carol"
    assert [m.content for m in state.messages] == ["hi"]


async def test_same_id_twice_last_line_wins() -> None:
    store = MemoryStore()
    first, second = _state("dup", 1), _state("dup", 3)
    result = await import_states(store, [encode_state(first), encode_state(second)], overwrite=True)
    assert result.imported == 2
    assert len(await store.load("dup")) == 3


async def test_bad_arguments() -> None:
    store = MemoryStore()
    with pytest.raises(ValidationError, match="on_error"):
        await import_states(store, [], on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not one str or bytes"):
        await import_states(store, b"{}")
    with pytest.raises(ValidationError, match="takes a Store"):
        await import_states("memory://", [])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="takes a Store"):
        [x async for x in export_states(None)]  # type: ignore[arg-type]
    await store.aclose()
    with pytest.raises(ClosedError):
        await import_states(store, [encode_state(_state("x"))])
    with pytest.raises(ClosedError):
        [x async for x in export_states(store)]


class CountingStore(MemoryStore):
    """A MemoryStore that counts reads and writes."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.sets = 0

    async def get(self, key: str) -> State:
        self.gets += 1
        return await super().get(key)

    async def set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        self.sets += 1
        return await super().set(key, state, expected_version=expected_version)

    async def list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        async for key in self.list_keys(prefix):
            yield await self.get(key)


async def test_export_streams_one_state_at_a_time() -> None:
    store = CountingStore()
    for i in range(500):
        await store.append(f"s{i}", [Message("user", "x")])
    lines = export_states(store)
    first = await lines.__anext__()
    assert decode_state(first).conversation_id.startswith("s")
    assert store.gets == 1  # one state read for one line, not the whole store
    await lines.aclose()


async def test_import_streams_in_small_batches() -> None:
    store = CountingStore()
    produced = 0
    most_ahead = 0

    def lines() -> Iterator[bytes]:
        nonlocal produced, most_ahead
        for i in range(2000):
            produced += 1
            most_ahead = max(most_ahead, produced - store.sets)
            yield encode_state(State(conversation_id=f"s{i}"))

    result = await import_states(store, lines())
    assert result.imported == 2000
    assert most_ahead <= BATCH_SIZE + 1  # never more than a batch read ahead of the writes

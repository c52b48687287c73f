from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from promptstate import (
    HeuristicTokenCounter,
    Message,
    State,
    TimeWindow,
    ToolCall,
    Usage,
    ValidationError,
)


def test_message_positional_role_and_content() -> None:
    m = Message("user", "hi")
    assert (m.role, m.content) == ("user", "hi")
    assert m.timestamp.tzinfo is not None
    assert m.timestamp.utcoffset() == timezone.utc.utcoffset(None)
    assert Message(role="assistant").content == ""


def test_message_other_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Message("user", "hi", "name")  # type: ignore[misc]


def test_message_is_frozen() -> None:
    m = Message("user", "hi")
    with pytest.raises(AttributeError):
        m.content = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("role", ["", "User", "bot", "function"])
def test_message_rejects_unknown_roles(role: str) -> None:
    with pytest.raises(ValidationError, match="role"):
        Message(role, "x")


def test_message_defaults_are_not_shared() -> None:
    a, b = Message("user"), Message("user")
    a.metadata["x"] = 1
    assert b.metadata == {}


def test_usage_adds_up() -> None:
    total = Usage(1, 2) + Usage(10, 20)
    assert total == Usage(11, 22)
    assert total.total_tokens == 33


def test_state_defaults() -> None:
    s = State(conversation_id="c")
    assert s.version == 0
    assert s.messages == []
    assert s.created_at <= s.updated_at
    assert s.schema_version == 2
    t = State(conversation_id="d")
    s.messages.append(Message("user"))
    assert t.messages == []


def test_tool_call_round_trip() -> None:
    call = ToolCall("id1", "f", '{"a": 1}')
    m = Message("assistant", tool_calls=(call,))
    assert msgspec.json.decode(msgspec.json.encode(m), type=Message) == m


def test_message_timestamp_keeps_microseconds() -> None:
    ts = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)
    m = Message("user", "x", timestamp=ts)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(m), type=Message).timestamp == ts


def test_timestamps_are_aware_utc_whatever_was_given() -> None:
    # A naive timestamp used to be kept naive (by every store too) and then broke every
    # comparison with an aware one: TimeWindow raised TypeError for the whole session.
    naive = datetime(2020, 1, 1, 12, 0)
    plus5 = datetime(2020, 1, 1, 17, 0, tzinfo=timezone(timedelta(hours=5)))
    expected = datetime(2020, 1, 1, 12, 0, tzinfo=timezone.utc)
    for given in (naive, plus5):
        message = Message("user", "x", timestamp=given)
        assert message.timestamp == expected
        assert message.timestamp.tzinfo is timezone.utc
        state = State(conversation_id="c", created_at=given, updated_at=given)
        assert state.created_at.tzinfo is state.updated_at.tzinfo is timezone.utc
        assert state.created_at == state.updated_at == expected
    # Data stored naive by an earlier release reads back aware.
    stored = msgspec.msgpack.encode({"role": "user", "timestamp": "2020-01-01T12:00:00"})
    assert msgspec.msgpack.decode(stored, type=Message).timestamp == expected
    old = [Message("user", "old", timestamp=naive), Message("user", "new")]
    assert [m.content for m in TimeWindow(3600).apply(old, HeuristicTokenCounter())] == ["new"]


def test_messages_and_what_they_hold_are_not_tracked_by_the_cycle_collector() -> None:
    # A worker holds the windows of many turns at once: tracked messages made every
    # collector pass walk them (in the pipeline benchmark at 64 sessions, most of what the
    # pipeline added over the bare store). gc=False is safe for them: no field can lead
    # back to the message but its JSON metadata.
    import gc

    from promptstate import AudioPart, FilePart, ImagePart, ReasoningPart, TextPart, ToolCall
    from promptstate.providers import Chunk, Completion
    from promptstate.serialization import pack, unpack_messages
    from promptstate.types import Usage

    parts = (
        TextPart("t"),
        ImagePart(url="https://example.com/i.png"),
        AudioPart(b"RIFF", "audio/wav"),
        FilePart(data=b"%PDF", media_type="application/pdf"),
        ReasoningPart(text="r"),
    )
    message = Message(
        "assistant",
        "x",
        tool_calls=(ToolCall("c1", "f", "{}"),),
        metadata={"nested": {"list": [1, "a"]}},
        parts=parts,
    )
    built = [message, *parts, message.tool_calls[0], Usage(1, 2)]
    built += [Completion(message=message), Chunk(text="t", message=message)]
    decoded = unpack_messages([pack(message)], key="k")
    assert [type(o).__name__ for o in [*built, *decoded] if gc.is_tracked(o)] == []
    assert decoded == [message]

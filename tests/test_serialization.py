from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from promptstate import CorruptStateError, Message, State, ToolCall, decode_state, encode_state
from promptstate.serialization import SCHEMA_VERSION, pack, unpack_message


def _state() -> State:
    return State(
        conversation_id="c-1",
        user_id="u",
        messages=[
            Message("system", "be brief"),
            Message("assistant", tool_calls=(ToolCall("1", "f", "{}"),)),
            Message("tool", "ok", tool_call_id="1", metadata={"ms": 3}),
        ],
        token_count=12,
        total_cost=0.25,
        metadata={"k": [1, "two"]},
        version=4,
    )


def test_round_trip() -> None:
    state = _state()
    data = encode_state(state)
    assert isinstance(data, bytes)
    assert json.loads(data)["schema_version"] == SCHEMA_VERSION
    assert decode_state(data) == state
    assert decode_state(data.decode()) == state
    assert decode_state(bytearray(data)) == state


def test_current_data_read_through_generic_path_too() -> None:
    # Pretty-printed current data misses the fast path and must still decode.
    state = _state()
    data = json.dumps(json.loads(encode_state(state)), indent=2).encode()
    assert decode_state(data) == state


VERSION_0 = b"""{
  "id": "legacy-7",
  "user": "bob",
  "history": [
    {"role": "user", "text": "hello", "ts": 1700000000},
    {"role": "assistant", "text": "hi bob", "ts": 1700000001.5}
  ],
  "cost": 0.002,
  "created": 1699999999,
  "meta": {"source": "v0"}
}"""


def test_version_0_document_is_migrated() -> None:
    state = decode_state(VERSION_0)
    assert state.schema_version == SCHEMA_VERSION
    assert state.conversation_id == "legacy-7"
    assert state.user_id == "bob"
    assert [(m.role, m.content) for m in state.messages] == [
        ("user", "hello"),
        ("assistant", "hi bob"),
    ]
    assert state.messages[1].timestamp == datetime(2023, 11, 14, 22, 13, 21, 500000, timezone.utc)
    assert state.created_at == datetime(2023, 11, 14, 22, 13, 19, tzinfo=timezone.utc)
    assert state.total_cost == 0.002
    assert state.metadata == {"source": "v0"}
    # Re-encoding writes the current schema.
    assert json.loads(encode_state(state))["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b'{"schema_version": 1, "conversation_id": 5}', "not a valid state"),
        (b'{"schema_version":1,"conversation_id":5}', "not a valid state"),
        (b'{"schema_version": 99, "conversation_id": "x"}', "newer"),
        (b'{"schema_version": -1}', "invalid schema_version"),
        (b'{"schema_version": "1"}', "invalid schema_version"),
        (b'{"history": []}', 'no "schema_version" field'),
        (b'{"id": "x", "history": [{"text": "no role"}]}', "has no 'role' field"),
        (b'{"id": "x", "history": [{"role": "wizard"}]}', "not a valid state"),
        (b'{"schema_version":1,"conversation_id":"x","messages":[{"role":"x"}]}', "valid state"),
    ],
)
def test_bad_bytes_raise_corrupt_state_error(data: bytes, match: str) -> None:
    with pytest.raises(CorruptStateError, match=match):
        decode_state(data, key="the-key")
    with pytest.raises(CorruptStateError, match="the-key"):
        decode_state(data, key="the-key")


_DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("lone \ud800 surrogate", "not valid Unicode"),
        (b'{"id": "x", "history": [{"role": "user", "ts": 1e300}]}', "could not be migrated"),
        (b'{"id": "x", "created": 1e20}', "could not be migrated"),
        (None, "bytes or str"),
        (5, "bytes or str"),
        (b'{"schema_version":1,"conversation_id":"x","metadata":{"a":%s}}' % _DEEP, "deeply"),
        (_DEEP, "deeply"),
        (b'{"id": "x", "meta": %s}' % _DEEP, "deeply"),
    ],
)
def test_odd_input_never_leaks_a_bare_error(data: object, match: str) -> None:
    with pytest.raises(CorruptStateError, match=match):
        decode_state(data, key="the-key")  # type: ignore[arg-type]
    with pytest.raises(CorruptStateError, match="the-key"):
        decode_state(data, key="the-key")  # type: ignore[arg-type]


def test_corrupt_error_chains_the_cause() -> None:
    with pytest.raises(CorruptStateError) as info:
        decode_state(b"{")
    assert info.value.__cause__ is not None


def test_internal_message_encoding() -> None:
    m = Message("user", "x", metadata={"a": 1})
    assert unpack_message(pack(m)) == m
    with pytest.raises(CorruptStateError, match="k1"):
        unpack_message(b"\xc1", key="k1")

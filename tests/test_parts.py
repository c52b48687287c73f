"""Message parts: the types, ``Message.text``, validation and both encodings."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest

import promptstate
from promptstate import (
    AudioPart,
    FilePart,
    ImagePart,
    Message,
    ReasoningPart,
    State,
    TextPart,
    ValidationError,
    decode_state,
    encode_state,
)
from promptstate.serialization import pack, unpack_message

EVERY = bytes(range(256))


def test_parts_default_to_empty_and_are_re_exported() -> None:
    assert Message("user", "hi").parts == ()
    for name in ("TextPart", "ImagePart", "AudioPart", "FilePart", "ReasoningPart", "Part"):
        assert name in promptstate.__all__
        assert getattr(promptstate, name) is getattr(promptstate.types, name)


def test_text_is_content_then_text_parts_in_order() -> None:
    m = Message(
        "user",
        "first",
        parts=(TextPart("second"), ImagePart(url="https://x/y.png"), TextPart("third")),
    )
    assert m.text == "first\nsecond\nthird"
    assert Message("user", "", parts=(TextPart("only"),)).text == "only"
    assert Message("user", "plain").text == "plain"
    assert Message("assistant", "", parts=(ReasoningPart(text="not text"),)).text == ""


def test_a_list_of_parts_is_kept_as_a_tuple() -> None:
    m = Message("user", "x", parts=[TextPart("a")])  # type: ignore[arg-type]
    assert m.parts == (TextPart("a"),)
    assert isinstance(m.parts, tuple)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ImagePart(), "exactly one of url and data"),
        (lambda: ImagePart(url="https://x", data=b"1", media_type="image/png"), "exactly one"),
        (lambda: ImagePart(data=b"1"), "needs a media_type"),
        (lambda: FilePart(), "exactly one of url and data"),
        (lambda: FilePart(url="u", data=b"d"), "exactly one of url and data"),
        (lambda: Message("user", "x", parts=("text",)), "got str"),  # type: ignore[arg-type]
        (lambda: Message("user", "x", parts=TextPart("a")), "got TextPart"),  # type: ignore[arg-type]
    ],
)
def test_bad_parts_raise_validation_error(make: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        make()  # type: ignore[operator]


def test_parts_are_frozen() -> None:
    part = TextPart("a")
    with pytest.raises(AttributeError):
        part.text = "b"  # type: ignore[misc]


def _rich() -> Message:
    return Message(
        "user",
        "see",
        parts=(
            TextPart("t"),
            ImagePart(data=EVERY, media_type="image/png", detail="auto"),
            AudioPart(data=EVERY, media_type="audio/wav"),
            FilePart(data=EVERY, name="f.bin"),
            ReasoningPart(text="r", signature="s", data="d", provider="anthropic"),
        ),
    )


def test_msgpack_keeps_bytes_as_bin() -> None:
    m = _rich()
    packed = pack(m)
    # MessagePack bin 8: 0xc4, length 255 is 0xff ... length 256 needs bin 16 (0xc5 0x01 0x00).
    assert b"\xc5\x01\x00" + EVERY in packed
    assert base64.b64encode(EVERY) not in packed
    assert unpack_message(packed) == m
    assert type(unpack_message(packed).parts[1].data) is bytes  # type: ignore[union-attr]


def test_json_wire_format_has_tagged_parts_and_base64_bytes() -> None:
    state = State(conversation_id="c", messages=[_rich()])
    data = encode_state(state)
    assert data.startswith(b'{"schema_version":2,')
    parts = json.loads(data)["messages"][0]["parts"]
    assert [p["type"] for p in parts] == ["text", "image", "audio", "file", "reasoning"]
    assert parts[1] == {
        "type": "image",
        "data": base64.b64encode(EVERY).decode(),
        "media_type": "image/png",
        "detail": "auto",
    }
    assert parts[3] == {"type": "file", "data": base64.b64encode(EVERY).decode(), "name": "f.bin"}
    assert decode_state(data) == state
    # The same document with its keys in another order takes the slow path: same result.
    doc = json.loads(data)
    shuffled = json.dumps({"conversation_id": "c", **doc}).encode()
    assert decode_state(shuffled) == state


def test_an_unknown_part_type_is_corrupt_data() -> None:
    doc = json.loads(encode_state(State(conversation_id="c", messages=[_rich()])))
    doc["messages"][0]["parts"][0]["type"] = "video"
    with pytest.raises(promptstate.CorruptStateError, match="video"):
        decode_state(json.dumps(doc))
    doc["messages"][0]["parts"][0] = {"type": "image", "data": "AAAA"}  # no media_type
    with pytest.raises(promptstate.CorruptStateError, match="media_type"):
        decode_state(json.dumps(doc))
    with pytest.raises(promptstate.CorruptStateError):
        unpack_message(msgspec.msgpack.encode({"role": "user", "parts": [{"type": "nope"}]}))

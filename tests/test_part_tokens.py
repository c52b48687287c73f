"""Token counts of message parts: image sizes from headers, the OpenAI tile formula, audio,
files, reasoning; truncation keeps reasoning with its message and tool calls with results;
validators read ``message.text``."""

from __future__ import annotations

import base64
import io
import struct
import warnings
import wave
import zlib

import pytest

from promptstate import (
    AudioPart,
    FilePart,
    HeuristicTokenCounter,
    ImagePart,
    Message,
    ReasoningPart,
    TextPart,
    ToolCall,
    truncate_messages,
)
from promptstate.tokens import (
    FILE_TOKENS,
    IMAGE_TOKENS,
    PDF_PAGE_TOKENS,
    image_size,
    image_tokens,
    part_tokens,
)

pytestmark = pytest.mark.anyio

#: Real 16 x 16 images written by real encoders (CPython's imghdr test data).
REAL_16x16 = {
    "png": (
        "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAMAAAAoLQ9TAAAAIGNIUk0AAHomAACAhAAA+gAAAIDoAAB1MAAA6mAA"
        "ADqYAAAXcJy6UTwAAAHFUExURQAAAE6NwEqGujxxnjdolgAAAAAAAAAAAAAAAAAAAE6PxEyKv0iFtkN9rT10oTls"
        "ljZmkAAAAAAAAFKRxv3dSvnVPgAAADJghwAAAP3VNgAAADVokgAAAOzORQAAADZpkxsxRQAAAAAAAOLDRf3ZQQAA"
        "AEaBsjZnkQAAAPLhbv3pav3LG0N9rhwyS/Xjb/PBGkB1oz1zogAAAMKaEgAAAAAAAAAAAAAAAAAAAOjHPevFNOvC"
        "Kuu+Ieu7GMabEgAAAAAAAAAAAAAAAAAAAAAAAAAAAP3eTgAAAAAAAAAAAAAAAPHQP/rTOf3SL/rHGcCXEgAAAAAA"
        "AAAAAAAAAAAAAAAAAEiDtER+rUB4p0yKvP///0V/r0F5qD50ojpvmzZplEmFt0aAsUJ7qj51oztwnTdqljhsl0+N"
        "wUuIu0R9rUB4pj1zoDltmf/iVVCPw0yJvEiEtT10of/eS//aQU2LvkaAsDtwnP/aQv/WN//TLUqHuUeBskN8qz92"
        "pf/XOP/PI//mYf/jV//fTf/bQv/TLv/PJP/rbP/nYf/bQ//XOf/MHDpwnP/nYv/jWP/fTv/TL//bRP/XOv/TMP/Q"
        "Jf/YOv/UMP/QJpJJAAIAAABWdFJOUwCv7feSCwMoQRV+oKGjp6qqSBi994IKtkPtJPdPiD22XExHa/dG96pOpvf3"
        "11uzwm/3S3o0CCE8NaqpqampeSACCRMSLB73QBwFAUzM99h7Ox1CRTgf+DIQcQAAAAFiS0dEWgO7paIAAAD1SURB"
        "VBjTY2AAAkamsPAIZhZWNgYoiIyKjomNi2dnhQkkJCYlp6TGc3CCeVzcPLx8/AJp8fGCQiC+cHpGWGZWdk48UCBX"
        "RFSMIS+/IDqmMA7IF5coKpaUYihJKE1KLkuNlxaXkS2vqJRjqKquqZVXUBRU4lBWqausV2VQy8xS19DUamhsaq5r"
        "adVWYtCJKdTVa2tvbOrobGnt0udgMDDsNmrr6e3r6Oxv7eoyNmEwNTO3APItraxtbG3tOOwZHBydnHv7JkycNLmL"
        "w8LFFeJ6twlTpk6L0nb3cPT0Agt4+/hO6/LzD3CGec400CJIKTgk1BTIBgBAYkJ/yC2b5QAAACV0RVh0ZGF0ZTpj"
        "cmVhdGUAMjAxNC0wMS0yNlQyMDo1OTozNyswMjowMPuaB3cAAAAldEVYdGRhdGU6bW9kaWZ5ADIwMTQtMDEtMjZU"
        "MjA6NTk6MDArMDI6MDDB74amAAAAAElFTkSuQmCC"
    ),
    "jpg": (
        "/9j/4AAQSkZJRgABAQEAAQABAAD/2wBDAAMCAgICAgMCAgIDAwMDBAYEBAQEBAgGBgUGCQgKCgkICQkKDA8MCgsO"
        "CwkJDRENDg8QEBEQCgwSExIQEw8QEBD/2wBDAQMDAwQDBAgEBAgQCwkLEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ"
        "EBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBD/wAARCAAQABADASIAAhEBAxEB/8QAFgABAQEAAAAAAAAAAAAAAAAA"
        "BwQF/8QAJBAAAQQBBAICAwAAAAAAAAAAAQIDBAYFBwgSExEiABQJMTL/xAAVAQEBAAAAAAAAAAAAAAAAAAAABv/E"
        "ACMRAAECBQMFAAAAAAAAAAAAAAECEQMEBQYhABIxFRZhgeH/2gAMAwEAAhEDEQA/ABSm0mobc8HmExLUlRzzEWPk"
        "JWW+ulrsaUVAseUgslSlH9LKuPryIKuWPZdskzXmm3fX5m2nF4GlVxx/HOpx4ks51+MiU/Iaad7UcUo4tILoS4kq"
        "cWkezS0hO/HvuRp0rO6hWnWO1UisZVuFi4GFeyEpmGepa5S5SWVPuciFKRFLgSrwetnyPIB+Vb4N9mKhQMzo5po9"
        "XLdDs9d6ZVix2VEhiL9kuNPxw2gEKcDQ/rs8AuA8VAe0vdl7VOYn+27flGAUgmITjbhSmCg3BYlyeWDkMolvw4KO"
        "p1KM6iCNvngZHwetf//Z"
    ),
    "gif": (
        "R0lGODlhEAAQAPZkAOu7GOu+IfPBGvrHGf3LG//MHOvCKv/PI//PJP/QJf/QJv/TLf3SL//TLv/TL+vFNOjHPf/T"
        "MP/UMP3VNv/WN/rTOf/XOP/XOf/XOvnVPv/YOuzORf3ZQf/aQf/aQv/bQv/bQ//bRP3dSv/eS//fTf3eTv/fTv/i"
        "Vf/jV//jWP/mYf/nYf/nYvLhbvXjb/3pav/rbDJghzZmkDZnkTVokjZpkzZplDdoljdqljlsljhslzltmTpvmzpw"
        "nDtwnDtwnTxxnj1zoD1zoj10oT50oj51oz92pUB4pkB4p0F5qEJ7qkN8q0N9rUN9rkR9rUR+rUV/r0aAsEaAsUaB"
        "skeBskiDtEiEtUiFtkmFt0qHuUqGukuIu0yJvEyKvE2LvkyKv06NwE+NwVCPw1KRxv///wAAAAAAAAAAAAAAAAAA"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        "ACH5BAEAAGUAIf8LSW1hZ2VNYWdpY2sHZ2FtbWE9MAAsAAAAABAAEAAAB6iAZYJlYVpSTEZAN4OMgl1kUkpEPTiN"
        "jFeRRD44NZZlX1dMRDkyOTiVjGNhXFVQR0A8NadlJyMZZWJfVFBKsDW/MWUjHROfV1SSQKczwRvEC2XHS0edjR0X"
        "Cwdlh0czZS0vLCcmHRoLCARlTJJlLjAsKSYhFxEIBQKCQj5l7/Hl5wUKWIJnAsIDAwEAAPAUb16EBAI9lZF3QUIC"
        "MukklqnwsMAAjSAHBQIAOw=="
    ),
    "webp": (
        "UklGRqgBAABXRUJQVlA4WAoAAAAQAAAADwAADwAAQUxQSMMAAAABJ6KokSTleucYX+ffKpmImP90cY3gJjDi4Yt3"
        "MsjBEVyDKzDosHgVjnhRNcEIDAJPkqBqsFUZHNa2bUYvTsZ2PLbtd/uvKa4hov9J0f2PkPe6REkkGzolkTTzFG0O"
        "x9PlFiD0CxS+kOGDtxoynjaCfx0pfk52CPuInrOR75lzRugygtv4zEiy90UwfSD9NheMITJWLaXWayO8XeOlWRXV"
        "nIGk2W6WdYoYMQ+KqixQNPowgt+6a1BSKbUtz+lUFAoBAAAAVlA4IL4AAACQAgCdASoQABAAAwA0JbACdDBPCIUM"
        "fAMdCCz96AD+/XSg/QKbH4r3Q3ycN/bSDK/T/zVo4u6nvclvG/SqxWOuup+XhN9BojvaW+Tv+MvxvX/hr/o/5Qns"
        "9LtmX/+qKdl/yWznhuasl7nkxvSTI4xf3Y85VSB/lU/8Ofj/b9JrA+ifvIOYZm2x1RP/dhfmsf5diuSfR7+z+r/+"
        "HR3zEo/+XM/B+vkYw73Pzx+ROaAB/ZoBSzEs3rzZe6qsAAAA"
    ),
}


def _real(kind: str) -> bytes:
    return base64.b64decode("".join(REAL_16x16[kind]))


def png(width: int, height: int) -> bytes:
    """A valid PNG of that size (black, greyscale), built with zlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(width) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _resized_jpeg(width: int, height: int) -> bytes:
    """The real JPEG with its frame header saying another size."""
    data = bytearray(_real("jpg"))
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _resized_gif(width: int, height: int) -> bytes:
    data = bytearray(_real("gif"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _vp8(width: int, height: int) -> bytes:
    body = b"\x50\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(8)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(body))
        + b"WEBP"
        + b"VP8 "
        + struct.pack("<I", len(body))
        + body
    )


def _vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    body = b"\x2f" + struct.pack("<I", bits) + bytes(5)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(body))
        + b"WEBP"
        + b"VP8L"
        + struct.pack("<I", len(body))
        + body
    )


@pytest.mark.parametrize("kind", ["png", "jpg", "gif", "webp"])
def test_sizes_of_real_images(kind: str) -> None:
    assert image_size(_real(kind)) == (16, 16)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (png(1500, 900), (1500, 900)),
        (_resized_jpeg(4096, 2048), (4096, 2048)),
        (_resized_gif(640, 480), (640, 480)),
        (_vp8(640, 480), (640, 480)),
        (_vp8l(300, 200), (300, 200)),
        (b"not an image", None),
        (b"\x89PNG\r\n\x1a\n", None),  # cut short
        (b"\xff\xd8\xff\xe0\x00", None),
        (b"", None),
    ],
)
def test_image_size_from_the_header(data: bytes, size: tuple[int, int] | None) -> None:
    assert image_size(data) == size


def test_openai_tile_formula() -> None:
    # OpenAI's documented examples.
    assert image_tokens(1024, 1024) == 765  # 4 tiles
    assert image_tokens(2048, 4096) == 1105  # scaled to 768 x 1536: 6 tiles
    assert image_tokens(4096, 8192, "low") == 85
    assert image_tokens(500, 300) == 85 + 170  # small images are not scaled up
    assert image_tokens(None, None) == IMAGE_TOKENS == 765


def test_image_parts_count_by_their_size() -> None:
    assert part_tokens(ImagePart(data=png(1500, 900), media_type="image/png"), len) == 1105
    assert part_tokens(ImagePart(data=_real("jpg"), media_type="image/jpeg"), len) == 255
    assert part_tokens(ImagePart(url="https://example.com/x.png"), len) == 765
    assert part_tokens(ImagePart(url="https://example.com/x.png", detail="low"), len) == 85
    assert part_tokens(ImagePart(data=b"\x00" * 10, media_type="image/bmp"), len) == 765


def _wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(int(8000 * seconds) * 2))
    return out.getvalue()


def test_audio_files_and_reasoning_count() -> None:
    assert part_tokens(AudioPart(data=_wav(2.5), media_type="audio/wav"), len) == 25
    assert part_tokens(AudioPart(data=bytes(16000), media_type="audio/mpeg"), len) == 10
    pdf = b"%PDF-1.7\n1 0 obj <</Type /Pages /Kids [2 0 R 3 0 R]>>\n2 0 obj <</Type /Page>>\n"
    pdf += b"3 0 obj <</Type/Page /Parent 1 0 R>>\n%%EOF"
    assert part_tokens(FilePart(data=pdf, media_type="application/pdf"), len) == 2 * PDF_PAGE_TOKENS
    text = FilePart(data="héllo".encode(), media_type="text/plain; charset=utf-8")
    assert part_tokens(text, len) == len("héllo")
    assert part_tokens(FilePart(url="https://example.com/a.pdf"), len) == FILE_TOKENS
    assert (
        part_tokens(FilePart(data=b"PK\x03\x04", media_type="application/zip"), len) == FILE_TOKENS
    )
    assert part_tokens(ReasoningPart(text="abc", data="x" * 8), len) == 3 + 2
    assert part_tokens(TextPart("abcd"), len) == 4


def test_counters_count_parts() -> None:
    counter = HeuristicTokenCounter()
    plain = Message("user", "What is this?")
    image = ImagePart(data=png(1024, 1024), media_type="image/png")
    rich = Message("user", "What is this?", parts=(image, TextPart("abcdefgh")))
    assert counter.count(rich) == counter.count(plain) + 765 + 2
    pytest.importorskip("tiktoken")
    from promptstate import TiktokenCounter

    with warnings.catch_warnings():  # bpe-openai's import uses a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        exact = TiktokenCounter()
    assert exact.count(rich) == exact.count(plain) + 765 + len(exact.encode("abcdefgh"))


def test_truncation_keeps_reasoning_and_tool_results_with_their_call() -> None:
    counter = HeuristicTokenCounter()
    big = ImagePart(data=png(2048, 2048), media_type="image/png")
    history = [
        Message("system", "sys"),
        Message("user", "old question"),
        Message("assistant", "old answer"),
        Message("user", "look at this", parts=(big,)),
        Message(
            "assistant",
            "",
            parts=(ReasoningPart(text="I should zoom in.", signature="s", provider="anthropic"),),
            tool_calls=(ToolCall("c1", "zoom", "{}"), ToolCall("c2", "crop", "{}")),
        ),
        Message("tool", "zoomed", tool_call_id="c1", parts=(big,)),
        Message("tool", "cropped", tool_call_id="c2", parts=(big,)),
        Message("assistant", "It is a cat."),
    ]
    sizes = [counter.count(m) for m in history]
    for budget in range(sum(sizes) + 1):
        kept = truncate_messages(history, budget, counter=counter)
        calls = [m for m in kept if m.tool_calls]
        results = [m for m in kept if m.role == "tool"]
        # A call and its results are kept or dropped together, reasoning stays in its message.
        assert (len(calls), len(results)) in ((0, 0), (1, 2)), budget
        for m in calls:
            assert m.parts == history[4].parts
        assert sum(counter.count(m) for m in kept) <= max(budget, sizes[0])


async def test_validators_check_the_whole_text() -> None:
    from promptstate.validators import Validator, ValidatorRegistry

    guard = ValidatorRegistry().bind([Validator(type="banned_words", params={"words": ["secret"]})])
    reply = Message("assistant", "Fine.", parts=(TextPart("the secret is out"),))
    assert [v.message for v in await guard.check(reply)] == ["contains banned word(s) 'secret'"]
    assert await guard.check(Message("assistant", "Fine.")) == []

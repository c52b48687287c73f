"""Token counters.

A :class:`TokenCounter` turns a message into a token count. Stores use one to keep
``State.token_count`` and truncation strategies use one to fit a budget. Each message's count is
kept in ``Message.tokens`` once computed (see :func:`with_tokens`), so nothing is counted twice.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import math
import re
import struct
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import msgspec

from promptstate.exceptions import ValidationError
from promptstate.types import (
    AudioPart,
    FilePart,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    TextPart,
)

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "FILE_TOKENS",
    "HeuristicTokenCounter",
    "IMAGE_TOKENS",
    "PDF_PAGE_TOKENS",
    "TiktokenCounter",
    "TokenCounter",
    "count_tokens",
    "image_size",
    "image_tokens",
    "part_tokens",
    "with_tokens",
]


@runtime_checkable
class TokenCounter(Protocol):
    """Anything with ``count(message) -> int``."""

    def count(self, message: Message) -> int:
        """The number of tokens ``message`` costs in a prompt."""
        ...


class HeuristicTokenCounter:
    """A fast estimate that needs no files: about four UTF-8 bytes a token.

    Each message costs ``per_message`` tokens of overhead (role and separators, 4 by default,
    as in OpenAI's chat format), plus one token per four bytes of its content, name, and each
    tool call's name and arguments (rounded up), plus ``per_tool_call`` per call. English text
    averages about four characters a token with OpenAI's encodings; text in scripts that take
    three UTF-8 bytes a character comes out near one token per character, which is close too.
    """

    __slots__ = ("per_message", "per_tool_call")

    def __init__(self, *, per_message: int = 4, per_tool_call: int = 3) -> None:
        self.per_message = per_message
        self.per_tool_call = per_tool_call

    def count(self, message: Message) -> int:
        size = len(message.content.encode())
        if message.name:
            size += len(message.name.encode())
        tokens = self.per_message
        for call in message.tool_calls:
            size += len(call.name.encode()) + len(call.arguments.encode())
            tokens += self.per_tool_call
        for part in message.parts:
            tokens += part_tokens(part, _heuristic_text)
        return tokens + (size + 3) // 4

    def __repr__(self) -> str:
        return (
            f"HeuristicTokenCounter(per_message={self.per_message}, "
            f"per_tool_call={self.per_tool_call})"
        )


# -- parts -------------------------------------------------------------------------------------

#: Tokens of an image whose size is unknown (a URL, or bytes whose header is not PNG, JPEG,
#: GIF or WebP): what OpenAI charges for a 1024 x 1024 image at high detail.
IMAGE_TOKENS = 765
#: Tokens of a file whose size in tokens cannot be estimated (a URL, a binary format).
FILE_TOKENS = 1500
#: Tokens of one PDF page (Anthropic's documents cost 1,500 to 3,000 tokens a page).
PDF_PAGE_TOKENS = 1500
#: Tokens of one second of audio (OpenAI's audio models: one token per 100 ms).
AUDIO_TOKENS_PER_SECOND = 10

_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def _heuristic_text(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a PNG, JPEG, GIF or WebP image, read from its header only (the
    image is never decoded); ``None`` for anything else."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments to the first start-of-frame (SOF0..SOF15 but DHT, JPG, DAC).
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA or length < 2:  # image data starts: no frame header found
            return None
        i += 2 + length
    return None


def image_tokens(width: int | None, height: int | None, detail: str | None = None) -> int:
    """OpenAI's published image cost: 85 tokens at ``detail="low"``; otherwise the image is
    scaled to fit 2048 x 2048, then down so its short side is at most 768, and costs 85 plus
    170 per 512 x 512 tile. :data:`IMAGE_TOKENS` (765) when the size is unknown."""
    if detail == "low":
        return 85
    if not width or not height or width <= 0 or height <= 0:
        return IMAGE_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 85 + 170 * tiles


def _wav_seconds(data: bytes) -> float | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE" or len(data) < 44:
        return None
    i = 12
    byte_rate = 0
    while i + 8 <= len(data):
        chunk, size = data[i : i + 4], int.from_bytes(data[i + 4 : i + 8], "little")
        if chunk == b"fmt " and size >= 16:
            byte_rate = int.from_bytes(data[i + 16 : i + 20], "little")
        elif chunk == b"data":
            if not byte_rate:
                return None
            return min(size, len(data) - i - 8) / byte_rate
        i += 8 + size + (size & 1)
    return None


def part_tokens(part: Part, text_tokens: Callable[[str], int]) -> int:
    """An estimate of the tokens ``part`` costs in a prompt; ``text_tokens`` counts text.

    * text and reasoning (its text, and opaque ``data`` at four characters a token): as text;
    * an image: :func:`image_tokens` from the size in its PNG, JPEG, GIF or WebP header
      (never decoded), :data:`IMAGE_TOKENS` when unknown (a URL, another format);
    * audio: :data:`AUDIO_TOKENS_PER_SECOND` per second of a WAV file (from its header), else
      one token per 1,600 bytes (about 10 a second of 128 kbit/s MP3);
    * a file: a ``text/*`` file as its text; a PDF :data:`PDF_PAGE_TOKENS` a page (pages
      counted in its bytes); anything else, or a URL, :data:`FILE_TOKENS`.
    """
    if isinstance(part, TextPart):
        return text_tokens(part.text)
    if isinstance(part, ReasoningPart):
        tokens = text_tokens(part.text) if part.text else 0
        if part.data:
            tokens += (len(part.data) + 3) // 4
        return tokens
    if isinstance(part, ImagePart):
        size = image_size(part.data) if part.data is not None else None
        if size is None:
            return image_tokens(None, None, part.detail)
        return image_tokens(size[0], size[1], part.detail)
    if isinstance(part, AudioPart):
        seconds = _wav_seconds(part.data)
        if seconds is not None:
            return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
        return math.ceil(len(part.data) / 1600)
    if isinstance(part, FilePart) and part.data is not None:
        media_type = part.media_type.split(";")[0].strip().lower()
        if media_type.startswith("text/"):
            return text_tokens(part.data.decode("utf-8", "replace"))
        if media_type == "application/pdf":
            pages = len(_PDF_PAGE.findall(part.data))
            return PDF_PAGE_TOKENS * pages if pages else FILE_TOKENS
    return FILE_TOKENS


def with_tokens(message: Message, counter: TokenCounter) -> Message:
    """``message`` with ``tokens`` filled in (the same object when it already has a count)."""
    if message.tokens is not None:
        return message
    tokens = counter.count(message)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValidationError(
            f"{type(counter).__name__}.count() must return an int >= 0, got {tokens!r}"
        )
    return msgspec.structs.replace(message, tokens=tokens)


def count_tokens(messages: Sequence[Message], counter: TokenCounter) -> int:
    """The tokens of ``messages``, using each message's kept count where it has one."""
    return sum(m.tokens if m.tokens is not None else counter.count(m) for m in messages)


# -- tiktoken ----------------------------------------------------------------------------------

_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"

# The definitions of the two encodings OpenAI's current chat models use, as tiktoken_ext
# defines them, with the SHA-256 of their rank files (tests check both against tiktoken's own).
_BUNDLED: dict[str, dict[str, Any]] = {
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": (
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        "special_tokens": {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    },
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*"""
                r"""[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"""
                r"""[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    },
}

_encodings: dict[str, Any] = {}
_encodings_lock = threading.Lock()


def _import_tiktoken() -> Any:
    try:
        import tiktoken
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "TiktokenCounter needs tiktoken and bpe-openai: pip install 'promptstate[tiktoken]'"
        ) from exc
    return tiktoken


def bundled_ranks(name: str) -> dict[bytes, int]:
    """The BPE ranks of ``name`` from the files the ``bpe-openai`` package ships (no network).

    The file's SHA-256 is checked against tiktoken's published hash for that encoding.

    Raises:
        ImportError: ``bpe-openai`` is not installed.
        CorruptStateError: The shipped file does not match the expected hash.
    """
    from promptstate.exceptions import CorruptStateError

    spec = _BUNDLED[name]
    try:
        files = resources.files("bpe_openai.data")
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"the {name} encoding needs the bpe-openai package to work offline: "
            "pip install 'promptstate[tiktoken]'"
        ) from exc
    data = gzip.decompress((files / f"{name}.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise CorruptStateError(f"the {name} rank file shipped by bpe-openai has the wrong hash")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load_encoding(name: str) -> Any:
    """The ``tiktoken.Encoding`` called ``name``, built offline when ``bpe-openai`` has it.

    ``o200k_base`` and ``cl100k_base`` come from the files ``bpe-openai`` ships; any other name
    is left to ``tiktoken.get_encoding`` (which may download it). Encodings are cached.

    Raises:
        ImportError: tiktoken (or bpe-openai) is not installed.
        ValidationError: tiktoken does not know ``name`` or could not load it.
    """
    with _encodings_lock:
        cached = _encodings.get(name)
        if cached is not None:
            return cached
        tiktoken = _import_tiktoken()
        if name in _BUNDLED:
            spec = _BUNDLED[name]
            encoding = tiktoken.Encoding(
                name=name,
                pat_str=spec["pat_str"],
                mergeable_ranks=bundled_ranks(name),
                special_tokens=spec["special_tokens"],
            )
        else:
            try:
                encoding = tiktoken.get_encoding(name)
            except Exception as exc:
                raise ValidationError(
                    f"tiktoken encoding {name!r} is not available: {exc} (offline, only "
                    f"{', '.join(sorted(_BUNDLED))} work, from bpe-openai)"
                ) from exc
        _encodings[name] = encoding
        return encoding


class TiktokenCounter:
    """Exact token counts with a tiktoken encoding, loaded without network.

    Needs the ``tiktoken`` extra (``pip install 'promptstate[tiktoken]'``, which brings tiktoken
    and bpe-openai). ``o200k_base`` (GPT-4o, GPT-4.1, o-series) and ``cl100k_base`` (GPT-4,
    GPT-3.5) are built from the rank files bpe-openai ships, checked against tiktoken's hashes,
    so they work offline; any other encoding name goes through ``tiktoken.get_encoding``.

    A message costs its content, name and tool calls encoded, plus OpenAI's chat-format
    overhead: ``per_message`` (3) tokens per message, ``per_name`` (1) for a name and
    ``per_tool_call`` (3) per tool call.

    Args:
        encoding: An encoding name, or a ``tiktoken.Encoding`` you built yourself.
        per_message: Tokens of overhead each message costs.
        per_name: Extra tokens a message's ``name`` costs.
        per_tool_call: Extra tokens each tool call costs.
    """

    __slots__ = ("_encode", "encoding", "per_message", "per_name", "per_tool_call")

    def __init__(
        self,
        encoding: str | Any = "o200k_base",
        *,
        per_message: int = 3,
        per_name: int = 1,
        per_tool_call: int = 3,
    ) -> None:
        self.encoding = load_encoding(encoding) if isinstance(encoding, str) else encoding
        self._encode = self.encoding.encode_ordinary
        self.per_message = per_message
        self.per_name = per_name
        self.per_tool_call = per_tool_call

    @classmethod
    def for_model(cls, model: str, **kwargs: int) -> TiktokenCounter:
        """The counter for an OpenAI model name (``"gpt-4o"`` -> ``o200k_base``).

        Raises:
            ValidationError: tiktoken does not know the model.
        """
        tiktoken = _import_tiktoken()
        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError as exc:
            raise ValidationError(f"tiktoken knows no encoding for model {model!r}") from exc
        return cls(name, **kwargs)

    def count(self, message: Message) -> int:
        encode = self._encode
        tokens = self.per_message
        if message.content:
            tokens += len(encode(message.content))
        if message.name:
            tokens += self.per_name + len(encode(message.name))
        for call in message.tool_calls:
            tokens += self.per_tool_call + len(encode(call.name)) + len(encode(call.arguments))
        for part in message.parts:
            tokens += part_tokens(part, self._text_tokens)
        return tokens

    def _text_tokens(self, text: str) -> int:
        return len(self._encode(text)) if text else 0

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (special tokens are encoded as ordinary text)."""
        return list(self._encode(text))

    def __repr__(self) -> str:
        return f"TiktokenCounter({self.encoding.name!r})"

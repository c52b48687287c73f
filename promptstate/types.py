"""The data promptstate stores: messages, tool calls, usage and conversation state.

All of them are msgspec Structs, so they encode and decode without a detour through dicts.
Schema evolution follows msgspec's rules: a new field always gets a default, and no field ever
changes its type (see ``promptstate.serialization`` for versioned migrations of whole states).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec

__all__ = [
    "AudioPart",
    "FilePart",
    "ImagePart",
    "Message",
    "Part",
    "ROLES",
    "ReasoningPart",
    "SESSION_ORDERS",
    "SessionInfo",
    "SessionPage",
    "State",
    "TextPart",
    "ToolCall",
    "Usage",
    "utcnow",
]

#: The roles a message may have.
ROLES = frozenset({"system", "user", "assistant", "tool"})

#: The schema version this release writes. ``promptstate.serialization`` migrates older data.
SCHEMA_VERSION = 2


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def _as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already (as every store does)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """A call the model asked for: which tool, with what arguments.

    Attributes:
        id: The provider's id for the call; the ``tool`` message that answers it repeats it.
        name: The tool's name.
        arguments: The arguments as JSON text, exactly as the provider sent them.
    """

    id: str
    name: str
    arguments: str


def _validation_error(text: str) -> Exception:
    from promptstate.exceptions import ValidationError

    return ValidationError(text)


class TextPart(msgspec.Struct, frozen=True, tag="text", gc=False):
    """A piece of text among a message's parts.

    Attributes:
        text: The text.
    """

    text: str


class ImagePart(msgspec.Struct, frozen=True, tag="image", omit_defaults=True, gc=False):
    """An image, by URL or by its bytes (exactly one of the two).

    Attributes:
        url: An ``http(s)://`` or ``data:`` URL.
        data: The image file's bytes (PNG, JPEG, GIF, WebP, ...), stored byte for byte.
        media_type: The image's media type (``"image/png"``); required with ``data``.
        detail: OpenAI's detail level: ``"low"``, ``"high"`` or ``"auto"``.
    """

    url: str | None = None
    data: bytes | None = None
    media_type: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.data is None):
            raise _validation_error("ImagePart needs exactly one of url and data")
        if self.data is not None and not self.media_type:
            raise _validation_error("ImagePart with data needs a media_type, e.g. 'image/png'")


class AudioPart(msgspec.Struct, frozen=True, tag="audio", omit_defaults=True, gc=False):
    """A piece of audio.

    Attributes:
        data: The audio file's bytes.
        media_type: Its media type (``"audio/wav"``, ``"audio/mpeg"``).
        transcript: What is said in it, when known (a model's audio reply carries one).
    """

    data: bytes
    media_type: str
    transcript: str | None = None


class FilePart(msgspec.Struct, frozen=True, tag="file", omit_defaults=True, gc=False):
    """A document or other file, by URL or by its bytes (exactly one of the two).

    Attributes:
        url: Where the file is.
        data: The file's bytes.
        media_type: Its media type (``"application/pdf"``, ``"text/plain"``, ...).
        name: Its file name, if any.
    """

    url: str | None = None
    data: bytes | None = None
    media_type: str = "application/octet-stream"
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.data is None):
            raise _validation_error("FilePart needs exactly one of url and data")


class ReasoningPart(msgspec.Struct, frozen=True, tag="reasoning", omit_defaults=True, gc=False):
    """A model's reasoning, kept so that it can be shown or sent back verbatim.

    Attributes:
        text: The model's visible reasoning, if any.
        signature: Anthropic's signature of a ``thinking`` block, kept verbatim.
        data: Opaque, encrypted or redacted reasoning (Anthropic ``redacted_thinking``),
            kept verbatim.
        provider: Who produced it (``"anthropic"``, ``"openai"``, ...).
    """

    text: str = ""
    signature: str | None = None
    data: str | None = None
    provider: str | None = None


#: One piece of a message besides its ``content``.
Part = TextPart | ImagePart | AudioPart | FilePart | ReasoningPart

_PART_TYPES = (TextPart, ImagePart, AudioPart, FilePart, ReasoningPart)


class _MessageHead(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    # role and content are the only positional fields: Message("user", "hi") works.
    role: str
    content: str = ""


class Message(_MessageHead, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One message of a conversation.

    ``Message("user", "hi")`` works: ``role`` and ``content`` may be given positionally, every
    other field is keyword-only.

    Attributes:
        role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"``.
        content: The text.
        name: An optional participant or tool name.
        tool_calls: On an assistant message, the tools the model asked to call.
        tool_call_id: On a ``tool`` message, the id of the call it answers.
        timestamp: When the message was created (UTC); set to now when omitted.
        metadata: Free-form JSON-compatible data of your own (plain dicts, lists, strings,
            numbers, booleans, None: what a store can keep).
        tokens: The message's token count as the storing store or pipeline counted it, kept so
            that nothing is counted twice. ``None`` until counted.
        parts: Images, audio, files, reasoning and further text, in order after ``content``
            (see :class:`TextPart`, :class:`ImagePart`, :class:`AudioPart`,
            :class:`FilePart`, :class:`ReasoningPart`).

    Messages, their parts and tool calls are not tracked by Python's cycle collector
    (msgspec's ``gc=False``, which subclasses inherit): a worker holding the windows of many
    sessions pays no collector passes over them. The one rule that follows: a message must
    never be reachable from its own ``metadata`` (JSON data never is), or it is never freed.
    """

    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    timestamp: datetime = msgspec.field(default_factory=utcnow)
    metadata: dict[str, Any] = {}
    tokens: int | None = None
    parts: tuple[Part, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise _validation_error(
                f"message role must be one of {sorted(ROLES)}, got {self.role!r}"
            )
        tokens = self.tokens
        if tokens is not None and (type(tokens) is not int or tokens < 0):
            raise _validation_error(f"message tokens must be an int >= 0 or None, got {tokens!r}")
        given: object = self.parts
        if given:
            if isinstance(given, list):
                # A list is accepted and kept as a tuple (the field is immutable).
                given = tuple(given)
                msgspec.structs.force_setattr(self, "parts", given)
            elif not isinstance(given, tuple):
                raise _validation_error(
                    f"message parts must be a tuple of parts, got {type(given).__name__}"
                )
            for part in given:
                if not isinstance(part, _PART_TYPES):
                    raise _validation_error(
                        "a message part must be a TextPart, ImagePart, AudioPart, FilePart or "
                        f"ReasoningPart, got {type(part).__name__}"
                    )
        ts = self.timestamp
        if isinstance(ts, datetime) and ts.tzinfo is not timezone.utc:
            # A naive timestamp came back naive from every store and then broke comparisons
            # with aware ones (TimeWindow raised TypeError on the whole session).
            msgspec.structs.force_setattr(self, "timestamp", _as_utc(ts))

    @property
    def text(self) -> str:
        """The message's text: ``content`` (when not empty) and each :class:`TextPart`'s text,
        in order, joined with ``"\\n"``."""
        if not self.parts:
            return self.content
        pieces = [self.content] if self.content else []
        pieces.extend(p.text for p in self.parts if type(p) is TextPart)
        return "\n".join(pieces)


class Usage(msgspec.Struct, frozen=True, gc=False):
    """Tokens a provider call consumed.

    Attributes:
        input_tokens: Prompt tokens.
        output_tokens: Completion tokens.
        estimated: ``True`` when the server reported no usage (a stream from a server that
            ignores ``stream_options.include_usage``) and the tokens were counted locally:
            by the pipeline's token counter in a turn, by a
            :class:`~promptstate.tokens.HeuristicTokenCounter` when a provider is called
            directly. The cost is priced from these counts. A sum is estimated when any of
            its terms is.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.estimated or other.estimated,
        )


class State(msgspec.Struct, kw_only=True):
    """The whole stored state of one conversation.

    Attributes:
        schema_version: The schema the state is written in; older data is migrated on read.
            (It is the first field so that the wire format can recognise current data by
            its first bytes.)
        conversation_id: The key the state is stored under.
        user_id: Whose conversation it is, if you track that.
        messages: The messages, oldest first.
        token_count: Tokens of ``messages`` by the store's token counter.
        total_cost: Accumulated provider cost in USD.
        metadata: Free-form JSON-compatible data of your own (plain dicts, lists, strings,
            numbers, booleans, None: what a store can keep).
        created_at: When the conversation was first stored (UTC).
        updated_at: When it was last written (UTC); set by the store.
        version: Bumped by the store on every write; 0 means never stored.
    """

    schema_version: int = SCHEMA_VERSION
    conversation_id: str
    user_id: str | None = None
    messages: list[Message] = []
    token_count: int = 0
    total_cost: float = 0.0
    metadata: dict[str, Any] = {}
    created_at: datetime = msgspec.field(default_factory=utcnow)
    updated_at: datetime = msgspec.field(default_factory=utcnow)
    version: int = 0

    def __post_init__(self) -> None:
        # Aware UTC like the stores return them, whatever the caller passed.
        if isinstance(self.created_at, datetime) and self.created_at.tzinfo is not timezone.utc:
            self.created_at = _as_utc(self.created_at)
        if isinstance(self.updated_at, datetime) and self.updated_at.tzinfo is not timezone.utc:
            self.updated_at = _as_utc(self.updated_at)


#: The orders :meth:`promptstate.Store.list_sessions` accepts.
SESSION_ORDERS = ("updated_desc", "updated_asc", "created_desc", "created_asc")


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a listing tells about one session, without its messages.

    Attributes:
        conversation_id: The session's key.
        user_id: Whose session it is, if recorded.
        message_count: How many messages it holds.
        token_count: Tokens of its messages by the store's token counter.
        total_cost: Accumulated provider cost in USD.
        metadata: Its metadata.
        created_at: When it was first stored (UTC).
        updated_at: When it was last written (UTC).
        version: Its version (bumped on every write).
    """

    conversation_id: str
    user_id: str | None = None
    message_count: int = 0
    token_count: int = 0
    total_cost: float = 0.0
    metadata: dict[str, Any] = {}
    created_at: datetime
    updated_at: datetime
    version: int = 0

    @classmethod
    def of(cls, state: State) -> SessionInfo:
        """The facts of ``state``."""
        return cls(
            conversation_id=state.conversation_id,
            user_id=state.user_id,
            message_count=len(state.messages),
            token_count=state.token_count,
            total_cost=state.total_cost,
            metadata=state.metadata,
            created_at=state.created_at,
            updated_at=state.updated_at,
            version=state.version,
        )


class SessionPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of :meth:`promptstate.Store.list_sessions`.

    Attributes:
        items: The sessions of this page, in the order asked for.
        next_cursor: Pass it as ``cursor=`` (with the same filters and order) for the next
            page; ``None`` on the last page.
    """

    items: list[SessionInfo] = []
    next_cursor: str | None = None

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
    "ROLES",
    "SESSION_ORDERS",
    "Message",
    "SessionInfo",
    "SessionPage",
    "State",
    "ToolCall",
    "Usage",
    "utcnow",
]

#: The roles a message may have.
ROLES = frozenset({"system", "user", "assistant", "tool"})

#: The schema version this release writes. ``promptstate.serialization`` migrates older data.
SCHEMA_VERSION = 1


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def _as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already (as every store does)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class ToolCall(msgspec.Struct, frozen=True):
    """A call the model asked for: which tool, with what arguments.

    Attributes:
        id: The provider's id for the call; the ``tool`` message that answers it repeats it.
        name: The tool's name.
        arguments: The arguments as JSON text, exactly as the provider sent them.
    """

    id: str
    name: str
    arguments: str


class _MessageHead(msgspec.Struct, frozen=True, omit_defaults=True):
    # role and content are the only positional fields: Message("user", "hi") works.
    role: str
    content: str = ""


class Message(_MessageHead, frozen=True, kw_only=True, omit_defaults=True):
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
        metadata: Free-form JSON-compatible data of your own.
        tokens: The message's token count as the storing store or pipeline counted it, kept so
            that nothing is counted twice. ``None`` until counted.
    """

    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    timestamp: datetime = msgspec.field(default_factory=utcnow)
    metadata: dict[str, Any] = {}
    tokens: int | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            from promptstate.exceptions import ValidationError

            raise ValidationError(f"message role must be one of {sorted(ROLES)}, got {self.role!r}")
        tokens = self.tokens
        if tokens is not None and (type(tokens) is not int or tokens < 0):
            from promptstate.exceptions import ValidationError

            raise ValidationError(f"message tokens must be an int >= 0 or None, got {tokens!r}")
        ts = self.timestamp
        if isinstance(ts, datetime) and ts.tzinfo is not timezone.utc:
            # A naive timestamp came back naive from every store and then broke comparisons
            # with aware ones (TimeWindow raised TypeError on the whole session).
            msgspec.structs.force_setattr(self, "timestamp", _as_utc(ts))


class Usage(msgspec.Struct, frozen=True):
    """Tokens a provider call consumed."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
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
        metadata: Free-form JSON-compatible data of your own.
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

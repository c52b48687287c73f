"""What a store reads back is checked here, once, for every backend.

A store's rows, hashes and blobs can be changed beneath it: by another program, an old
release, a hand-edited database or a damaged disk. Whatever a backend reads back passes
through :func:`checked_state` (or the smaller checks below) before it reaches the caller, so
a wrong type, an impossible value (a negative version, token count or timestamp) or a
message count that does not match the messages raises
:class:`~promptstate.exceptions.CorruptStateError` naming the key, the same way on every
backend. The checks only read: a corrupt session is reported, never repaired or deleted.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

from promptstate.exceptions import CorruptStateError
from promptstate.types import Message, SessionInfo, State

__all__ = [
    "check_count",
    "check_metadata",
    "checked_info",
    "checked_state",
    "corrupt",
    "timestamp_from_us",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def corrupt(backend: str, key: str, field: str, value: object) -> NoReturn:
    """Raise the CorruptStateError for one bad stored field."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise CorruptStateError(
        f"{backend} session {key!r} holds an invalid {field} ({shown}): the stored data was "
        "changed by something other than promptstate, or is damaged"
    )


def check_count(backend: str, key: str, field: str, value: object) -> int:
    """A stored non-negative integer (a version, a count), or CorruptStateError."""
    if type(value) is not int or value < 0:
        corrupt(backend, key, field, value)
    return value


def timestamp_from_us(backend: str, key: str, field: str, value: object) -> datetime:
    """A stored time in microseconds since the Unix epoch, or CorruptStateError."""
    try:
        return _EPOCH + timedelta(microseconds=check_count(backend, key, field, value))
    except OverflowError:
        corrupt(backend, key, field, value)


def check_metadata(backend: str, key: str, value: object) -> dict[str, Any]:
    """Decoded stored metadata: a map with string keys, or CorruptStateError."""
    if type(value) is not dict or not all(type(k) is str for k in value):
        corrupt(backend, key, "metadata", value)
    return value


def _check_header(
    backend: str,
    key: str,
    user_id: object,
    version: object,
    token_count: object,
    total_cost: object,
    created_at: object,
    updated_at: object,
) -> int:
    """Check the fields every stored session has; returns the version."""
    if user_id is not None and type(user_id) is not str:
        corrupt(backend, key, "user_id", user_id)
    written = check_count(backend, key, "version", version)
    if written == 0:
        corrupt(backend, key, "version", version)  # a stored state has been written once
    check_count(backend, key, "token_count", token_count)
    if type(total_cost) is not float or not math.isfinite(total_cost) or total_cost < 0:
        corrupt(backend, key, "total_cost", total_cost)
    if not isinstance(created_at, datetime) or created_at.tzinfo is None:
        corrupt(backend, key, "created_at", created_at)
    if not isinstance(updated_at, datetime) or updated_at.tzinfo is None:
        corrupt(backend, key, "updated_at", updated_at)
    return written


def checked_state(
    backend: str,
    key: str,
    *,
    user_id: object,
    version: object,
    token_count: object,
    total_cost: object,
    metadata: object,
    created_at: object,
    updated_at: object,
    messages: list[Message],
    message_count: object = None,
) -> State:
    """Build the State a backend read back, after checking every field of it.

    ``message_count`` is the count the backend keeps beside the messages, when it keeps one;
    it must match the messages read.
    """
    written = _check_header(
        backend, key, user_id, version, token_count, total_cost, created_at, updated_at
    )
    if message_count is not None:
        count = check_count(backend, key, "message_count", message_count)
        if count != len(messages):
            raise CorruptStateError(
                f"{backend} session {key!r} should have {count} messages but has "
                f"{len(messages)}: the stored data was changed by something other than "
                "promptstate, or is damaged"
            )
    return State(
        conversation_id=key,
        user_id=user_id,  # type: ignore[arg-type]  # checked
        messages=messages,
        token_count=token_count,  # type: ignore[arg-type]  # checked
        total_cost=total_cost,  # type: ignore[arg-type]  # checked
        metadata=check_metadata(backend, key, metadata),
        created_at=created_at,  # type: ignore[arg-type]  # checked
        updated_at=updated_at,  # type: ignore[arg-type]  # checked
        version=written,
    )


def checked_info(
    backend: str,
    key: str,
    *,
    user_id: object,
    version: object,
    token_count: object,
    total_cost: object,
    metadata: object,
    created_at: object,
    updated_at: object,
    message_count: object,
) -> SessionInfo:
    """Build the SessionInfo a listing read back, after the same checks as a state's."""
    written = _check_header(
        backend, key, user_id, version, token_count, total_cost, created_at, updated_at
    )
    return SessionInfo(
        conversation_id=key,
        user_id=user_id,  # type: ignore[arg-type]  # checked
        message_count=check_count(backend, key, "message_count", message_count),
        token_count=token_count,  # type: ignore[arg-type]  # checked
        total_cost=total_cost,  # type: ignore[arg-type]  # checked
        metadata=check_metadata(backend, key, metadata),
        created_at=created_at,  # type: ignore[arg-type]  # checked
        updated_at=updated_at,  # type: ignore[arg-type]  # checked
        version=written,
    )

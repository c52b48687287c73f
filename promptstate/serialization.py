"""The wire format: one JSON document per state, versioned, with migrations on read.

:func:`encode_state` writes the current schema. :func:`decode_state` reads any schema this
release knows: data written in an older ``schema_version`` passes through the registered
migration steps (each a function from the dict of version *n* to the dict of version *n + 1*)
before it becomes a :class:`~promptstate.types.State`. Bad bytes raise
:class:`~promptstate.exceptions.CorruptStateError` saying what was wrong.

Stores keep their own compact internal encoding (MessagePack, per message) built on the same
Structs; the helpers for it live here too so that every backend shares one set of reusable
encoders and decoders.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import msgspec

from promptstate.exceptions import CorruptStateError
from promptstate.types import SCHEMA_VERSION, Message, State

__all__ = [
    "SCHEMA_VERSION",
    "decode_state",
    "encode_state",
    "migration",
]

Migration = Callable[[dict[str, Any]], dict[str, Any]]

#: Migration steps by the version they upgrade *from*.
_MIGRATIONS: dict[int, Migration] = {}

_json_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(State)
_any_json_decoder = msgspec.json.Decoder()
# Current data starts with this, because schema_version is State's first field.
_CURRENT_PREFIX = b'{"schema_version":%d,' % SCHEMA_VERSION

_msgpack_encoder = msgspec.msgpack.Encoder()
_message_decoder = msgspec.msgpack.Decoder(Message)
_any_msgpack_decoder = msgspec.msgpack.Decoder()


def migration(from_version: int) -> Callable[[Migration], Migration]:
    """Register a step that upgrades a state dict from ``from_version`` to the next version."""

    def register(fn: Migration) -> Migration:
        if from_version in _MIGRATIONS:
            raise ValueError(f"a migration from schema version {from_version} exists already")
        _MIGRATIONS[from_version] = fn
        return fn

    return register


def encode_state(state: State) -> bytes:
    """The state as one JSON document (UTF-8), in the current schema."""
    if state.schema_version != SCHEMA_VERSION:
        state = msgspec.structs.replace(state, schema_version=SCHEMA_VERSION)
    return _json_encoder.encode(state)


def decode_state(data: bytes | bytearray | memoryview | str, *, key: str | None = None) -> State:
    """Decode one JSON state, migrating older schema versions.

    Args:
        data: What :func:`encode_state` wrote (or an older release wrote).
        key: The key the data was read from, named in errors.

    Raises:
        CorruptStateError: The data is not JSON, not a state, or from a newer release.
    """
    where = f" (key {key!r})" if key is not None else ""
    if isinstance(data, str):
        try:
            data = data.encode()
        except UnicodeEncodeError as exc:
            raise CorruptStateError(f"state data is not valid Unicode text{where}") from exc
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptStateError(
            f"state data must be bytes or str, got {type(data).__name__}{where}"
        )
    if bytes(data[: len(_CURRENT_PREFIX)]) == _CURRENT_PREFIX:
        try:
            return _state_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise CorruptStateError(f"state data is not a valid state{where}: {exc}") from exc
        except RecursionError as exc:
            raise CorruptStateError(f"state data is nested too deeply{where}") from exc
    try:
        raw = _any_json_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptStateError(f"state data is not valid JSON{where}: {exc}") from exc
    except RecursionError as exc:
        raise CorruptStateError(f"state data is nested too deeply{where}") from exc
    return state_from_dict(raw, where=where)


def state_from_dict(raw: object, *, where: str = "") -> State:
    """Build a State from a decoded document of any known schema version."""
    if not isinstance(raw, dict):
        raise CorruptStateError(
            f"state data must be a JSON object, got {type(raw).__name__}{where}"
        )
    version = raw.get("schema_version", 0)
    if "schema_version" not in raw and "id" not in raw:
        # Neither a current state (which names its schema_version) nor a 0.0 one (keyed by
        # "id"): say which field is missing rather than how a migration tripped on it.
        raise CorruptStateError(f'state has no "schema_version" field{where}')
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CorruptStateError(f"state has an invalid schema_version {version!r}{where}")
    if version > SCHEMA_VERSION:
        raise CorruptStateError(
            f"state has schema_version {version}, newer than this release's "
            f"{SCHEMA_VERSION}{where}; upgrade promptstate to read it"
        )
    while version < SCHEMA_VERSION:
        step = _MIGRATIONS.get(version)
        if step is None:  # pragma: no cover - every version below current has a step
            raise CorruptStateError(f"no migration from schema_version {version}{where}")
        try:
            raw = step(raw)
        except KeyError as exc:
            raise CorruptStateError(
                f"state of schema_version {version} has no {exc.args[0]!r} field{where}"
            ) from exc
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CorruptStateError(
                f"state of schema_version {version} could not be migrated{where}: {exc!r}"
            ) from exc
        version += 1
        raw["schema_version"] = version
    try:
        return msgspec.convert(raw, State)
    except msgspec.ValidationError as exc:
        raise CorruptStateError(f"state data is not a valid state{where}: {exc}") from exc
    except RecursionError as exc:
        raise CorruptStateError(f"state data is nested too deeply{where}") from exc


@migration(0)
def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 0, the pre-release layout: ``id``, ``user``, ``history`` and ``cost``.

    A v0 message was ``{"role", "text", "ts"}`` with ``ts`` in Unix seconds; tool calls did not
    exist. Everything else maps one to one.
    """
    history = doc.get("history", [])
    if not isinstance(history, list):
        raise TypeError("history must be a list")
    messages = [
        {
            "role": m["role"],
            "content": m.get("text", ""),
            "timestamp": _from_unix(m.get("ts")),
        }
        for m in history
    ]
    created = _from_unix(doc.get("created"))
    return {
        "conversation_id": doc["id"],
        "user_id": doc.get("user"),
        "messages": messages,
        "token_count": doc.get("tokens", 0),
        "total_cost": float(doc.get("cost", 0.0)),
        "metadata": doc.get("meta", {}),
        "created_at": created,
        "updated_at": _from_unix(doc.get("updated")) if "updated" in doc else created,
        "version": doc.get("version", 0),
    }


@migration(1)
def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 1, promptstate 0.1: the same layout without ``Message.parts``.

    Schema 2 only added fields with defaults (``parts``), so a version 1 document is a valid
    version 2 document as it stands.
    """
    return doc


def _from_unix(ts: object) -> str:
    if ts is None:
        return datetime.now(timezone.utc).isoformat()
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise TypeError(f"timestamp must be a number of seconds, got {ts!r}")
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


# -- internal store encoding (MessagePack), shared by every backend ---------------------------


def pack(obj: object) -> bytes:
    """MessagePack bytes of a Struct or plain value (stores' internal encoding)."""
    return _msgpack_encoder.encode(obj)


def unpack_message(data: bytes, *, key: str | None = None) -> Message:
    """One stored message; CorruptStateError naming ``key`` when it does not decode."""
    try:
        return _message_decoder.decode(data)
    except (msgspec.DecodeError, TypeError, RecursionError) as exc:
        raise _undecodable("message", data, key, exc) from exc


def unpack_messages(items: list[bytes], *, key: str | None = None) -> list[Message]:
    """Stored messages, oldest first."""
    decode = _message_decoder.decode
    try:
        return [decode(item) for item in items]
    except (msgspec.DecodeError, TypeError, RecursionError) as exc:
        raise _undecodable("message", None, key, exc) from exc


def unpack_any(data: object, *, key: str | None = None) -> Any:
    """A stored MessagePack value of no fixed type (e.g. a metadata dict)."""
    try:
        return _any_msgpack_decoder.decode(data)  # type: ignore[arg-type]  # not bytes: TypeError
    except (msgspec.DecodeError, TypeError, RecursionError) as exc:
        raise _undecodable("data", data, key, exc) from exc


def _undecodable(what: str, data: object, key: str | None, exc: BaseException) -> CorruptStateError:
    """The error for stored bytes that do not decode: not bytes at all (a database column
    of another type), not MessagePack, not the expected shape, or nested too deeply."""
    where = f" (key {key!r})" if key is not None else ""
    if isinstance(exc, RecursionError):
        return CorruptStateError(f"stored {what} is nested too deeply to decode{where}")
    if isinstance(exc, TypeError):
        return CorruptStateError(f"stored {what} is not bytes{where}: {type(exc).__name__}: {exc}")
    return CorruptStateError(f"stored {what} does not decode{where}: {exc}")

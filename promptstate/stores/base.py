"""The store contract: :class:`Store`, the abstract base class of every store.

Policy once, I/O per backend (the pattern of aiocache's ``BaseCache`` and httpx's
transports). Each public method checks, then calls the protected method of the same name that
a backend implements::

    store.append_turn(...)        public, here: the store is open (else ClosedError), the
         |                        key is a valid key (InvalidKeyError), the messages are
         v                        storable, the numbers in range (ValidationError)
    store._append_turn(...)       protected, per backend: I/O only, arguments already checked

A custom store implements four protected methods: :meth:`Store._get`, :meth:`Store._set`,
:meth:`Store._delete` and :meth:`Store._list_keys`. Every other protected method has a
working default built on those four, which a backend overrides where it can do better (the
bundled backends override all of them). So no bad input reaches a backend and no I/O is done
for it, whatever a subclass overrides.

A store written the 0.1 way, implementing the public names ``get``, ``set``, ``delete`` and
``list_keys`` instead (the form the API reference documents), still works: each protected
method's default calls the public one, so every other method of the base class checks its
arguments and then reaches that code. Only a direct call of such a store's own ``get`` runs
unchecked (call :func:`validate_key` in it). A store that implements neither form of one of
the four cannot be constructed (``TypeError``, as for an abstract method).

The rule that decides a turn's append (turn stored already, lease held, expected count) is
:mod:`promptstate.stores.turns`.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, cast

import anyio
import msgspec

from promptstate._resource import AsyncResource
from promptstate.exceptions import (
    ConflictError,
    InvalidKeyError,
    NotFoundError,
    ValidationError,
)
from promptstate.stores.turns import TURN_ID_KEY, decide_turn, lease_lost, turn_stored
from promptstate.tokens import HeuristicTokenCounter, TokenCounter, with_tokens
from promptstate.types import (
    SESSION_ORDERS,
    Message,
    SessionInfo,
    SessionPage,
    State,
    ToolCall,
    utcnow,
)

__all__ = [
    "LeasingStore",
    "MAX_KEY_LENGTH",
    "MAX_PAGE_SIZE",
    "MAX_TTL",
    "SessionQuery",
    "Store",
    "TURN_ID_KEY",
    "WRITE_HOLD",
    "normalize_ttl",
    "validate_key",
    "validate_prefix",
]

#: The largest cost one turn may add, in USD: far above any real price, and low enough that
#: ``total_cost`` can never overflow to infinity by adding turns.
MAX_TURN_COST = 1e12

#: The longest key any store accepts, in characters.
MAX_KEY_LENGTH = 512

#: The longest TTL any store accepts, in seconds (about 317 years); use ``None`` for none.
MAX_TTL = 1e10

#: ``expected_version`` above this can never match a stored version (a 64-bit counter).
_MAX_VERSION = 2**63 - 1

#: ``load(last=n)`` with a larger ``n`` reads as this (more messages than any session holds).
_MAX_LAST = 2**62

#: The largest ``limit`` :meth:`Store.list_sessions` accepts.
MAX_PAGE_SIZE = 1000

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_json_encode = msgspec.json.Encoder().encode
_msgpack_encode = msgspec.msgpack.Encoder().encode
_msgpack_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {
    Message: msgspec.msgpack.Decoder(Message),
    State: msgspec.msgpack.Decoder(State),
}


def validate_key(key: object, *, what: str = "key") -> str:
    """Return ``key`` if every store accepts it, else raise :class:`InvalidKeyError`.

    A key is a non-empty ``str`` of at most 512 characters with no NUL or other control
    characters, that encodes to UTF-8 (no lone surrogates).
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"{what} must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError(f"{what} must not be empty")
    _check_text(key, what)
    return key


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a valid key prefix (like a key, but it may be empty)."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix must be a str, got {type(prefix).__name__}")
    if prefix:
        _check_text(prefix, "prefix")
    return prefix


def _check_text(text: str, what: str) -> None:
    if len(text) > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            f"{what} is {len(text)} characters long, at most {MAX_KEY_LENGTH} are allowed: "
            f"{text[:40]!r}..."
        )
    if _CONTROL.search(text):
        raise InvalidKeyError(f"{what} contains a control character: {text!r}")
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(f"{what} is not valid Unicode text: {text!r}") from exc


def normalize_ttl(ttl: timedelta | float | None) -> float | None:
    """A TTL in seconds (``None`` for none); :class:`ValidationError` unless it is positive."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise ValidationError(f"ttl must be a timedelta, a number of seconds or None, got {ttl!r}")
    if not seconds > 0 or seconds == float("inf"):
        raise ValidationError(f"ttl must be positive and finite, got {ttl!r}")
    if seconds > MAX_TTL:
        # Beyond this, "now + ttl" no longer fits the backends' timestamps (Redis PX, the
        # PostgreSQL timestamp range, SQLite's 64-bit microseconds): every write would fail.
        raise ValidationError(f"ttl must be at most {MAX_TTL:.0e} seconds, got {ttl!r}")
    return seconds


def _check_messages(messages: object, method: str) -> list[Message]:
    if isinstance(messages, (str, bytes, Message)) or not isinstance(messages, Iterable):
        raise ValidationError(f"{method}() takes a list of Message, got {type(messages).__name__}")
    items = list(messages)
    for item in items:
        if not isinstance(item, Message):
            raise ValidationError(
                f"{method}() takes a list of Message, got an item of type {type(item).__name__}"
            )
        _check_storable(item, f"a message given to {method}()")
    return items


def _check_storable(obj: Message | State, what: str) -> None:
    """Refuse what a store could write but never read back, or not write at all.

    Stores keep messages as MessagePack and export states as JSON. msgspec Structs do not
    check field types on construction, so a message with ``content=5``, a ``str`` timestamp or
    a non-``str`` metadata key would be written and then fail to decode on every later read of
    the session; values neither format holds (arbitrary objects, lone surrogates, ints beyond
    64 bits, non-``str`` keys in nested dicts) would raise a bare ``TypeError`` /
    ``OverflowError`` from inside a backend.

    The fields' types are checked with ``isinstance`` (a MessagePack round trip, which would
    prove the same, costs three times as much and only runs to name what is wrong); one
    MessagePack encoding catches unencodable values, and metadata is JSON-encoded once.
    """
    if not (_fields_ok(obj) if isinstance(obj, Message) else _state_fields_ok(obj)):
        try:
            _msgpack_decoders[type(obj)].decode(_msgpack_encode(obj))
        except (msgspec.ValidationError, TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(f"{what} cannot be stored: {exc}") from exc
        except RecursionError as exc:
            raise ValidationError(f"{what} cannot be stored: nested too deeply") from exc
        raise ValidationError(f"{what} has a field of the wrong type: {obj!r:.200}")
    metadata = obj.metadata
    try:
        if metadata:
            for name in metadata:
                if not isinstance(name, str):
                    raise ValidationError(f"{what} has a metadata key that is not a str: {name!r}")
            _json_encode(metadata)  # export and backup write JSON
        _msgpack_encode(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError(f"{what} cannot be stored: {exc}") from exc
    except RecursionError as exc:
        raise ValidationError(f"{what} cannot be stored: nested too deeply") from exc


def _fields_ok(m: Message) -> bool:
    tokens = m.tokens
    calls = m.tool_calls
    return (
        isinstance(m.content, str)
        and isinstance(m.timestamp, datetime)
        and isinstance(m.metadata, dict)
        and (m.name is None or isinstance(m.name, str))
        and (m.tool_call_id is None or isinstance(m.tool_call_id, str))
        and (tokens is None or (type(tokens) is int and tokens >= 0))
        and (
            not calls
            or (
                isinstance(calls, (tuple, list))
                and all(
                    type(c) is ToolCall
                    and isinstance(c.id, str)
                    and isinstance(c.name, str)
                    and isinstance(c.arguments, str)
                    for c in calls
                )
            )
        )
    )


def _state_fields_ok(state: State) -> bool:
    # Only what a store keeps: conversation_id, version, token_count and updated_at it sets.
    cost = state.total_cost
    return (
        (state.user_id is None or isinstance(state.user_id, str))
        and isinstance(cost, (float, int))
        and not isinstance(cost, bool)
        and isinstance(state.metadata, dict)
        and isinstance(state.created_at, datetime)
    )


def _check_state(state: State, method: str) -> None:
    what = f"the state given to {method}()"
    cost = state.total_cost
    if isinstance(cost, float) and not math.isfinite(cost):
        # MessagePack would keep it, but JSON (export, backup) has no NaN or infinity.
        raise ValidationError(f"{what} has a total_cost that is not a finite number: {cost!r}")
    # Messages were checked one by one; the rest of the state must be storable too.
    _check_storable(msgspec.structs.replace(state, messages=[]), what)


def _check_version(expected_version: object) -> None:
    if expected_version is not None and (
        not isinstance(expected_version, int)
        or isinstance(expected_version, bool)
        or not 0 <= expected_version <= _MAX_VERSION
    ):
        raise ValidationError(
            f"expected_version must be None or an int from 0 to 2**63 - 1, got {expected_version!r}"
        )


def _check_last(last: object) -> None:
    if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < 0):
        raise ValidationError(f"last must be None or an int >= 0, got {last!r}")


def to_micros(moment: datetime) -> int:
    """``moment`` as whole microseconds since the Unix epoch (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _US


class SessionQuery(msgspec.Struct, frozen=True, kw_only=True):
    """One page request of :meth:`Store.list_sessions`, checked and with its cursor decoded.

    A backend's :meth:`Store._list_sessions` returns, in ``order``, at most ``limit + 1``
    sessions whose key starts with ``prefix`` (literally), of ``user_id`` when given, and that
    come strictly after ``after`` in the order: the base class cuts the page and makes the
    next cursor from its last item.

    Attributes:
        prefix: The literal key prefix ("" for all).
        user_id: Only this user's sessions, when not ``None``.
        order: One of ``SESSION_ORDERS``.
        limit: The page size.
        after: ``(microseconds since the epoch, key)`` of the last session of the previous
            page, or ``None`` for the first page. Sessions are ordered by ``(time, key)``,
            both ascending or both descending, so ties in time are broken by key (compared
            by code point, which is UTF-8 byte order).
    """

    prefix: str = ""
    user_id: str | None = None
    order: str = "updated_desc"
    limit: int = 50
    after: tuple[int, str] | None = None

    @property
    def by_created(self) -> bool:
        """Ordered by ``created_at`` (else by ``updated_at``)."""
        return self.order.startswith("created")

    @property
    def descending(self) -> bool:
        """Newest first."""
        return self.order.endswith("_desc")

    def sort_key(self, info: SessionInfo) -> tuple[int, str]:
        """``(time, key)`` of ``info`` in this query's order field."""
        moment = info.created_at if self.by_created else info.updated_at
        return to_micros(moment), info.conversation_id

    def is_after(self, position: tuple[int, str]) -> bool:
        """Whether a session at ``position`` (see :meth:`sort_key`) belongs after the cursor."""
        if self.after is None:
            return True
        return position < self.after if self.descending else position > self.after

    def matches(self, key: str, user_id: str | None) -> bool:
        """Whether a session passes the prefix and user filters."""
        return key.startswith(self.prefix) and (self.user_id is None or user_id == self.user_id)

    def select(self, infos: Iterable[SessionInfo]) -> list[SessionInfo]:
        """Filter, order and cut ``infos`` (any order) to what ``_list_sessions`` returns."""
        chosen = [
            info
            for info in infos
            if self.matches(info.conversation_id, info.user_id)
            and self.is_after(self.sort_key(info))
        ]
        chosen.sort(key=self.sort_key, reverse=self.descending)
        return chosen[: self.limit + 1]


def _filters_tag(prefix: str, user_id: str | None) -> int:
    return zlib.crc32(f"{prefix}\x00{'' if user_id is None else '+' + user_id}".encode())


def _encode_cursor(query: SessionQuery, last: SessionInfo) -> str:
    micros, key = query.sort_key(last)
    payload = _json_encode([1, query.order, micros, key, _filters_tag(query.prefix, query.user_id)])
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: object, order: str, prefix: str, user_id: str | None) -> tuple[int, str]:
    if not isinstance(cursor, str) or not cursor or len(cursor) > 4 * MAX_KEY_LENGTH:
        raise ValidationError(f"cursor must be None or a str from a page, got {cursor!r:.80}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        item = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValidationError(f"cursor {cursor!r:.80} is not a cursor of list_sessions()") from None
    if (
        not isinstance(item, list)
        or len(item) != 5
        or item[0] != 1
        or not isinstance(item[2], int)
        or isinstance(item[2], bool)
        or not isinstance(item[3], str)
        or not item[3]
    ):
        raise ValidationError(f"cursor {cursor!r:.80} is not a cursor of list_sessions()")
    if item[1] != order:
        raise ValidationError(f"cursor {cursor!r:.80} belongs to order {item[1]!r}, not {order!r}")
    if item[4] != _filters_tag(prefix, user_id):
        raise ValidationError(f"cursor {cursor!r:.80} was made with another prefix or user_id")
    _check_text(item[3], "cursor key")
    return item[2], item[3]


def _check_query(
    prefix: str, user_id: str | None, order: str, limit: int, cursor: object
) -> SessionQuery:
    validate_prefix(prefix)
    if user_id is not None and not isinstance(user_id, str):
        raise ValidationError(f"user_id must be None or a str, got {user_id!r}")
    if order not in SESSION_ORDERS:
        raise ValidationError(f"order must be one of {', '.join(SESSION_ORDERS)}; got {order!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be an int from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
    after = None if cursor is None else _decode_cursor(cursor, order, prefix, user_id)
    return SessionQuery(prefix=prefix, user_id=user_id, order=order, limit=limit, after=after)


def _check_count_arg(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(f"{name} must be an int >= 0, got {value!r}")


def _check_lease_args(key: object, owner: object, ttl: object = 1.0) -> None:
    validate_key(key, what="session_id")
    if not isinstance(owner, str) or not owner:
        raise ValidationError(f"owner must be a non-empty str, got {owner!r}")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < float("inf"):
        raise ValidationError(f"ttl must be a positive number of seconds, got {ttl!r}")


def _check_merge_args(updates: object, remove: object) -> tuple[dict[str, Any], tuple[str, ...]]:
    if not isinstance(updates, Mapping):
        raise ValidationError(
            f"merge_metadata() takes a mapping of updates, got {type(updates).__name__}"
        )
    if isinstance(remove, (str, bytes)) or not isinstance(remove, Iterable):
        raise ValidationError(
            f"remove must be a list of metadata keys, got {type(remove).__name__}"
        )
    drop = list(dict.fromkeys(remove))
    for name in drop:
        if not isinstance(name, str):
            raise ValidationError(f"remove holds a key that is not a str: {name!r}")
    new = dict(updates)
    both = [name for name in drop if name in new]
    if both:
        raise ValidationError(f"metadata keys both updated and removed: {both!r}")
    # The same checks as a state's metadata (str keys, JSON and MessagePack can hold it).
    # Every store encodes what it keeps, so later changes to the caller's objects never
    # reach it.
    _check_storable(State(conversation_id="-", metadata=new), "merge_metadata() updates")
    return new, tuple(drop)


_Self = TypeVar("_Self", bound="Store")

#: The methods every store implements, public name and protected name (either will do).
_REQUIRED = (("get", "_get"), ("set", "_set"), ("delete", "_delete"), ("list_keys", "_list_keys"))


class Store(AsyncResource, ABC):
    """The base class of every store.

    Args:
        ttl: How long a session lives after its last write (``timedelta`` or seconds); ``None``
            keeps it for ever. Applied on every write.
        touch_on_read: Also restart the TTL on reads.
        token_counter: Counts the tokens of stored messages for ``State.token_count``
            (default: :class:`~promptstate.tokens.HeuristicTokenCounter`). A message that
            already carries ``tokens`` is not counted again.

    A store is an async context manager; ``aclose()`` releases what it owns, and any use after
    it raises :class:`~promptstate.exceptions.ClosedError`.

    Policy once, I/O per backend: each public method (``get``, ``append_turn``, ...) checks
    that the store is open and that its arguments are valid, then calls the protected method
    of the same name (``_get``, ``_append_turn``, ...) with them. A backend implements the
    protected methods: ``_get``, ``_set``, ``_delete`` and ``_list_keys`` always; the others
    have defaults built on those four, which a backend overrides where it can do better.
    """

    #: The OpenTelemetry ``db.system`` of the store (``memory``, ``sqlite``, ``redis``,
    #: ``postgresql``); a wrapper reports its inner store's. Custom stores may set their own.
    db_system: str = "other"

    def __new__(cls: type[_Self], *args: Any, **kwargs: Any) -> _Self:
        # The four required methods, in either form: a store that has neither form of one
        # would call itself for ever, so it is refused here, like an abstract class.
        missing = [
            private
            for public, private in _REQUIRED
            if getattr(cls, private) is getattr(Store, private)
            and getattr(cls, public) is getattr(Store, public)
        ]
        if missing:
            names = ", ".join(repr(m) for m in missing)
            raise TypeError(
                f"Can't instantiate abstract class {cls.__name__} without an implementation "
                f"for abstract methods {names} (or the public methods of the same names "
                "without the underscore)"
            )
        return super().__new__(cls)

    def __init__(
        self,
        *,
        ttl: timedelta | float | None = None,
        touch_on_read: bool = False,
        token_counter: TokenCounter | None = None,
    ) -> None:
        self._ttl = normalize_ttl(ttl)
        self._touch_on_read = bool(touch_on_read)
        if token_counter is not None and not callable(getattr(token_counter, "count", None)):
            raise ValidationError(
                f"token_counter must have a count(message) method, got {token_counter!r}"
            )
        self._counter: TokenCounter = token_counter or HeuristicTokenCounter()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def ttl(self) -> float | None:
        """The TTL in seconds, or ``None``."""
        return self._ttl

    @property
    def token_counter(self) -> TokenCounter:
        """The counter the store uses for ``State.token_count``."""
        return self._counter

    @property
    def append_turn_never_suspends(self) -> bool:
        """Whether :meth:`append_turn` completes without yielding to the event loop, so nothing
        can cancel it half-way and the pipeline's save needs no cancellation shield around it.

        ``False`` unless a store says otherwise for its own code (MemoryStore does, and not for
        a subclass that overrides ``append_turn`` or ``_append_turn``).
        """
        return False

    async def exists(self) -> bool:
        """Whether the store's database is there, checked without creating anything.

        A store that keeps its data in a file or in tables it creates on first use (SQLite,
        PostgreSQL) answers whether they exist yet; read-only tools such as ``promptstate ls``
        ask first, so that looking never creates a database. Stores with nothing to create
        (memory, Redis) answer ``True``.
        """
        return True

    # -- the public methods: check, then call the backend's protected method --------------

    async def get(self, key: str) -> State:
        """The stored state.

        Raises:
            NotFoundError: Nothing is stored under ``key``.
        """
        self._check_open()
        validate_key(key)
        return await self._get(key)

    async def set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        """Store ``state`` under ``key``, replacing what is there.

        Returns what was stored: a new State with ``conversation_id`` = ``key``, ``version`` =
        the previous version + 1, ``updated_at`` = now, and ``token_count`` and each message's
        ``tokens`` filled in.

        Raises:
            ConflictError: ``expected_version`` is given and the stored version differs
                (0 means the key must not exist).
        """
        self._check_open()
        validate_key(key)
        if not isinstance(state, State):
            raise ValidationError(f"set() takes a State, got {type(state).__name__}")
        _check_messages(state.messages, "set")
        _check_state(state, "set")
        _check_version(expected_version)
        return await self._set(key, state, expected_version=expected_version)

    async def delete(self, key: str) -> bool:
        """Delete the state; ``True`` when something was deleted."""
        self._check_open()
        validate_key(key)
        return await self._delete(key)

    def list_keys(self, prefix: str) -> AsyncIterator[str]:
        """Every key that starts with ``prefix`` (matched literally), in no set order."""
        self._check_open()
        validate_prefix(prefix)
        return self._list_keys(prefix)

    async def load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        """The messages, oldest first; only the newest ``last`` when given; ``[]`` if unknown."""
        self._check_open()
        validate_key(session_id, what="session_id")
        if last is not None:
            _check_last(last)
            if last > _MAX_LAST:
                # "All of them" either way; backends pass it to Redis/PostgreSQL as an int64.
                last = _MAX_LAST
        return await self._load(session_id, last=last)

    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
        """Replace the whole message list, creating the state when absent."""
        self._check_open()
        validate_key(session_id, what="session_id")
        await self._save(session_id, _check_messages(messages, "save"))

    async def append(self, session_id: str, messages: Sequence[Message]) -> int:
        """Add messages at the end; return the new number of messages.

        Concurrent appends to one session lose nothing: each is applied whole, in some order.
        Appending no messages writes nothing and returns the current count.
        """
        self._check_open()
        validate_key(session_id, what="session_id")
        return await self._append(session_id, _check_messages(messages, "append"))

    async def append_turn(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        cost: float = 0.0,
        turn_id: str | None = None,
        expected_count: int | None = None,
        release_lease: str | None = None,
    ) -> int:
        """Append one turn's messages in one atomic write and add ``cost`` to ``total_cost``.

        This is what the pipeline's save stage calls. It is :meth:`append` plus these guards,
        decided in this order by :func:`promptstate.stores.turns.decide_turn` inside the
        backend's atomic step:

        * ``turn_id``: recorded in the first message's ``metadata["turn_id"]``. When the
          session already ends with that turn (the message ``len(messages)`` from the end has
          this turn id), nothing is written and the current count is returned: retrying an
          append whose reply was lost never stores the turn twice.
        * ``release_lease`` (only on a :class:`LeasingStore`): the owner token of the turn's
          lease. The turn is written only while that owner holds the session's live lease
          (else :class:`~promptstate.exceptions.LeaseLostError`, nothing written), and the
          lease is released with the write.
        * ``expected_count``: raise :class:`~promptstate.exceptions.ConflictError` unless the
          session holds exactly that many messages before the append (0 for a new session).
          Checked after the turn id, so a retried turn is not a conflict.

        Returns:
            The number of messages after the append.
        """
        self._check_open()
        validate_key(session_id, what="session_id")
        items = _check_messages(messages, "append_turn")
        if release_lease is not None and (not isinstance(release_lease, str) or not release_lease):
            raise ValidationError(
                f"release_lease must be None or a non-empty owner str, got {release_lease!r}"
            )
        if (
            isinstance(cost, bool)
            or not isinstance(cost, (int, float))
            or not 0 <= cost <= MAX_TURN_COST
        ):
            raise ValidationError(
                f"cost must be a number of USD from 0 to {MAX_TURN_COST:g}, got {cost!r}"
            )
        if turn_id is not None:
            if not isinstance(turn_id, str) or not turn_id:
                raise ValidationError(f"turn_id must be None or a non-empty str, got {turn_id!r}")
            if items and items[0].metadata.get(TURN_ID_KEY) != turn_id:
                first = items[0]
                items[0] = msgspec.structs.replace(
                    first, metadata={**first.metadata, TURN_ID_KEY: turn_id}
                )
        if expected_count is not None and (
            not isinstance(expected_count, int)
            or isinstance(expected_count, bool)
            or expected_count < 0
        ):
            raise ValidationError(
                f"expected_count must be None or an int >= 0, got {expected_count!r}"
            )
        if release_lease is not None and not isinstance(self, LeasingStore):
            raise ValidationError(
                f"{type(self).__name__} has no leases: append_turn(release_lease=...) "
                "needs a LeasingStore"
            )
        return await self._append_turn(
            session_id,
            items,
            cost=float(cost),
            turn_id=turn_id,
            expected_count=expected_count,
            release_lease=release_lease,
        )

    async def fork(
        self, source: str, target: str, *, overwrite: bool = False, at: int | None = None
    ) -> State:
        """Copy the state under ``source`` to ``target``; returns the new state.

        With ``at``, the copy holds only the first ``at`` messages (a branch before message
        ``at``; ``at`` beyond the last message copies them all), and its ``token_count`` is
        theirs. Metadata, user, cost and ``created_at`` are copied as they are.

        Raises:
            NotFoundError: ``source`` does not exist.
            ConflictError: ``target`` exists and ``overwrite`` is false.
            ValidationError: ``at`` is not an int >= 0, or ``source`` is ``target``.
        """
        self._check_open()
        validate_key(source, what="fork source")
        validate_key(target, what="fork target")
        if source == target:
            raise ValidationError(f"fork source and target are the same key {source!r}")
        if at is not None:
            _check_count_arg(at, "at")
        return await self._fork(source, target, overwrite=overwrite, at=at)

    async def count(self, key: str) -> int:
        """The number of messages of the session; 0 for an unknown one."""
        self._check_open()
        validate_key(key)
        return await self._count(key)

    async def get_metadata(self, key: str) -> dict[str, Any]:
        """The session's metadata (a copy of your own).

        Raises:
            NotFoundError: Nothing is stored under ``key``.
        """
        self._check_open()
        validate_key(key)
        return await self._get_metadata(key)

    async def merge_metadata(
        self, key: str, updates: Mapping[str, Any], *, remove: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Set the keys of ``updates`` and drop those in ``remove``, in one atomic write.

        Never touches the messages. Creates the state when absent; bumps ``version`` and
        ``updated_at`` like any write. Concurrent merges of different keys all survive, and
        so do appends running meanwhile.

        Returns:
            The metadata after the merge.

        Raises:
            ValidationError: ``updates`` holds something a store cannot keep (non-``str``
                keys, values neither JSON nor MessagePack can hold), or a key is both in
                ``updates`` and ``remove``.
        """
        self._check_open()
        validate_key(key)
        new, drop = _check_merge_args(updates, remove)
        return await self._merge_metadata(key, new, remove=drop)

    async def truncate(self, key: str, keep: int) -> int:
        """Keep only the first ``keep`` messages (undo, regenerate); return the new count.

        ``token_count`` drops with the messages; ``total_cost`` stays (it was spent). When
        the session holds ``keep`` messages or fewer, nothing is written.

        Raises:
            NotFoundError: Nothing is stored under ``key``.
            ValidationError: ``keep`` is not an int >= 0.
        """
        self._check_open()
        validate_key(key)
        _check_count_arg(keep, "keep")
        return await self._truncate(key, keep)

    async def pop_messages(self, key: str, count: int = 1) -> list[Message]:
        """Remove the newest ``count`` messages and return them, oldest first, in one step.

        This is a :meth:`truncate` that says what it removed, atomically: two concurrent pops
        never return the same message, and a message appended meanwhile is never removed
        unseen. Fewer are returned when the session holds fewer; an unknown session, an empty
        one or ``count=0`` returns ``[]`` and writes nothing. ``token_count`` drops with the
        messages; ``total_cost`` stays.

        Raises:
            ValidationError: ``count`` is not an int >= 0.
        """
        self._check_open()
        validate_key(key)
        _check_count_arg(count, "count")
        return await self._pop_messages(key, count)

    async def list_sessions(
        self,
        *,
        prefix: str = "",
        user_id: str | None = None,
        order: str = "updated_desc",
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of the sessions of this store, without their messages.

        Args:
            prefix: Only keys that start with it (matched literally).
            user_id: Only sessions with this ``user_id``.
            order: ``"updated_desc"`` (newest first, the default), ``"updated_asc"``,
                ``"created_desc"`` or ``"created_asc"``; ties are broken by key.
            limit: The page size, 1 to 1000.
            cursor: ``next_cursor`` of the previous page (same filters and order), or
                ``None`` for the first page.

        Paging through a store while it is written never returns a session twice in one
        pass unless it was updated during the pass, and never skips one that was not
        (cursors are positions, not offsets). Expired and deleted sessions are never listed.

        Raises:
            ValidationError: A bad cursor (including one made for another order, prefix or
                user), order or limit.
        """
        self._check_open()
        query = _check_query(prefix, user_id, order, limit, cursor)
        found = await self._list_sessions(query)
        if len(found) <= query.limit:
            return SessionPage(items=list(found), next_cursor=None)
        items = list(found[: query.limit])
        return SessionPage(items=items, next_cursor=_encode_cursor(query, items[-1]))

    def list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        """Every state whose key starts with ``prefix``, matched literally."""
        self._check_open()
        validate_prefix(prefix)
        return self._list_by_prefix(prefix)

    def list_all(self) -> AsyncIterator[State]:
        """Every state of this store (and only this store's)."""
        self._check_open()
        return self._list_by_prefix("")

    async def delete_by_prefix(self, prefix: str) -> int:
        """Delete every state whose key starts with ``prefix``; return how many."""
        self._check_open()
        validate_prefix(prefix)
        return await self._delete_by_prefix(prefix)

    async def get_many(self, keys: Iterable[str]) -> list[State | None]:
        """The states in the order asked, ``None`` where absent."""
        self._check_open()
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise ValidationError(f"get_many() takes a list of keys, got {type(keys).__name__}")
        items = list(keys)
        for key in items:
            validate_key(key)
        return await self._get_many(items)

    # -- what a backend implements: the four required methods -----------------------------
    # Called by the public methods above with checked arguments, on an open store. Each
    # default calls the public method of the same name, for a store that implements that
    # instead (the 0.1 form); a store must implement one of the two (checked in __new__).

    async def _get(self, key: str) -> State:
        """The stored state; :class:`~promptstate.exceptions.NotFoundError` when absent."""
        return await self.get(key)

    async def _set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        """Store ``state`` (see :meth:`set`): use ``self._prepare(key, state, version)`` to make
        what is stored, and honour ``expected_version`` atomically."""
        return await self.set(key, state, expected_version=expected_version)

    async def _delete(self, key: str) -> bool:
        """Delete the state; ``True`` when something was deleted."""
        return await self.delete(key)

    def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        """Every key that starts with ``prefix`` (literally), in no set order."""
        return self.list_keys(prefix)

    # -- defaults built on the four above; backends override them for speed ---------------

    async def _load(self, session_id: str, *, last: int | None) -> list[Message]:
        """:meth:`load`. The default reads the whole state."""
        try:
            state = await self._get(session_id)
        except NotFoundError:
            return []
        if last is None:
            return state.messages
        return state.messages[max(len(state.messages) - last, 0) :] if last else []

    async def _save(self, session_id: str, messages: list[Message]) -> None:
        """:meth:`save`. The default is a compare-and-set loop on ``_get`` / ``_set``."""
        while True:
            state, expected = await self._get_or_new(session_id)
            state.messages = list(messages)
            try:
                await self._set(session_id, state, expected_version=expected)
                return
            except ConflictError:
                continue

    async def _append(self, session_id: str, messages: list[Message]) -> int:
        """:meth:`append`. The default is a compare-and-set loop on ``_get`` / ``_set``."""
        new = [with_tokens(m, self._counter) for m in messages]
        while True:
            state, expected = await self._get_or_new(session_id)
            if not new:
                return len(state.messages)
            state.messages.extend(new)
            try:
                stored = await self._set(session_id, state, expected_version=expected)
            except ConflictError:
                continue
            return len(stored.messages)

    async def _append_turn(
        self,
        session_id: str,
        messages: list[Message],
        *,
        cost: float,
        turn_id: str | None,
        expected_count: int | None,
        release_lease: str | None,
    ) -> int:
        """:meth:`append_turn` (``release_lease`` is ``None`` here: only a
        :class:`LeasingStore` gets one).

        Backends override this with one native atomic step that calls
        :func:`~promptstate.stores.turns.decide_turn`. The default composes other methods:
        with no ``cost`` and no ``expected_count`` it is ``_load(last=len(messages))`` (for
        the turn id check) and ``_append``, whose cost does not grow with the history;
        otherwise it is a compare-and-set loop on ``_get`` / ``_set``, which does.
        """
        size = len(messages)
        if not cost and expected_count is None:
            if turn_id is not None and size:
                tail = await self._load(session_id, last=size)
                if turn_stored(tail[0] if len(tail) == size else None, turn_id):
                    return await self._append(session_id, [])
            return await self._append(session_id, messages)
        new = [with_tokens(m, self._counter) for m in messages]
        while True:
            state, expected = await self._get_or_new(session_id)
            stored = state.messages
            count = len(stored)
            start = stored[count - size] if turn_id is not None and size and count >= size else None
            if not decide_turn(
                session_id,
                count=count,
                size=size,
                start=start,
                turn_id=turn_id,
                expected_count=expected_count,
            ):
                return count
            state.messages.extend(new)
            state.total_cost += cost
            try:
                written = await self._set(session_id, state, expected_version=expected)
            except ConflictError:
                continue
            return len(written.messages)

    async def _fork(self, source: str, target: str, *, overwrite: bool, at: int | None) -> State:
        """:meth:`fork`. The default reads the source and writes the target with ``_set``."""
        state = await self._get(source)
        state.conversation_id = target
        if at is not None:
            del state.messages[at:]
        try:
            return await self._set(target, state, expected_version=None if overwrite else 0)
        except ConflictError as exc:
            raise ConflictError(f"fork target {target!r} exists already") from exc

    async def _count(self, key: str) -> int:
        """:meth:`count`. The default reads the state; the bundled backends read a counter."""
        try:
            return len((await self._get(key)).messages)
        except NotFoundError:
            return 0

    async def _get_metadata(self, key: str) -> dict[str, Any]:
        """:meth:`get_metadata`. The default reads the state."""
        return (await self._get(key)).metadata

    async def _merge_metadata(
        self, key: str, updates: dict[str, Any], *, remove: tuple[str, ...]
    ) -> dict[str, Any]:
        """:meth:`merge_metadata`. The default is a compare-and-set loop on ``_get`` /
        ``_set`` (its cost grows with the history); the bundled backends write only the
        metadata."""
        while True:
            state, expected = await self._get_or_new(key)
            metadata = {**state.metadata, **updates}
            for name in remove:
                metadata.pop(name, None)
            state.metadata = metadata
            try:
                stored = await self._set(key, state, expected_version=expected)
            except ConflictError:
                continue
            return dict(stored.metadata)

    async def _truncate(self, key: str, keep: int) -> int:
        """:meth:`truncate`. The default is a compare-and-set loop on ``_get`` / ``_set``."""
        while True:
            state = await self._get(key)
            if len(state.messages) <= keep:
                return len(state.messages)
            del state.messages[keep:]
            try:
                await self._set(key, state, expected_version=state.version)
            except ConflictError:
                continue
            return keep

    async def _pop_messages(self, key: str, count: int) -> list[Message]:
        """:meth:`pop_messages`. The default is a compare-and-set loop on ``_get`` / ``_set``
        (its cost grows with the history); the bundled backends read only what they remove."""
        while True:
            try:
                state = await self._get(key)
            except NotFoundError:
                return []
            if not count or not state.messages:
                return []
            keep = max(len(state.messages) - count, 0)
            removed = state.messages[keep:]
            del state.messages[keep:]
            try:
                await self._set(key, state, expected_version=state.version)
            except ConflictError:
                continue
            return removed

    async def _list_sessions(self, query: SessionQuery) -> list[SessionInfo]:
        """Up to ``query.limit + 1`` sessions for :meth:`list_sessions` (see
        :class:`SessionQuery`). The default reads every state under the prefix; the bundled
        backends read only the page, from an index."""
        infos = []
        async for state in self._list_by_prefix(query.prefix):
            if query.user_id is None or state.user_id == query.user_id:
                infos.append(SessionInfo.of(state))
        return query.select(infos)

    async def _list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        """:meth:`list_by_prefix`. The default reads each listed key with ``_get``."""
        async for key in self._list_keys(prefix):
            try:
                yield await self._get(key)
            except NotFoundError:  # deleted or expired since it was listed
                continue

    async def _delete_by_prefix(self, prefix: str) -> int:
        """:meth:`delete_by_prefix`. The default lists the keys, then deletes each."""
        keys = [key async for key in self._list_keys(prefix)]
        deleted = 0
        for key in keys:
            deleted += await self._delete(key)
        return deleted

    async def _get_many(self, keys: list[str]) -> list[State | None]:
        """:meth:`get_many`. The default reads one key after another."""
        found: list[State | None] = []
        for key in keys:
            try:
                found.append(await self._get(key))
            except NotFoundError:
                found.append(None)
        return found

    # -- helpers for backends -------------------------------------------------------------

    async def _get_or_new(self, key: str) -> tuple[State, int]:
        try:
            state = await self._get(key)
        except NotFoundError:
            return State(conversation_id=key), 0
        return state, state.version

    def _prepare(self, key: str, state: State, version: int) -> State:
        """The state as it is to be stored: a new object, tokens counted, version set."""
        messages = [with_tokens(m, self._counter) for m in state.messages]
        return msgspec.structs.replace(
            state,
            conversation_id=key,
            messages=messages,
            token_count=sum(cast(int, m.tokens) for m in messages),
            version=version,
            updated_at=utcnow(),
        )

    def _count_new(self, messages: Sequence[Message]) -> tuple[list[Message], int]:
        """``messages`` with tokens filled in, and their total."""
        counted = [with_tokens(m, self._counter) for m in messages]
        return counted, sum(cast(int, m.tokens) for m in counted)


class LeasingStore(Store):
    """A store whose turn leases are shared by every process that uses it.

    Subclassing it is how a store declares cross-process turn safety: a pipeline on a
    ``LeasingStore`` takes the session's lease for each turn (one turn at a time per session
    across processes); on any other store it serializes turns within its own process only.
    A wrapper (``CachedStore``, ``EncryptedStore``) is a ``LeasingStore`` exactly when the store
    it wraps is one.

    A backend implements the three protected lease methods (``_acquire_lease``,
    ``_renew_lease``, ``_release_lease``), atomically, with the lease kept apart from the
    states; the public ones check first (open store, ``key`` a valid session id, ``owner`` a
    non-empty str, ``ttl`` positive seconds). It may override ``_acquire_and_load`` and
    ``_append_turn`` with one round trip each; the defaults compose the other methods.
    """

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease on ``key`` for ``owner`` if nobody holds it (or it expired).

        A lease ``owner`` holds already is taken again, its TTL set anew: an acquire sent
        again after its reply was lost (redis-py's default retry does that) must not find the
        lease busy because its first try took it.

        Returns:
            True when ``owner`` now holds it; False when another owner does.
        """
        self._check_open()
        _check_lease_args(key, owner, ttl)
        return await self._acquire_lease(key, owner, ttl)

    async def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s lease on ``key`` to ``ttl`` seconds from now.

        Returns:
            False when ``owner`` no longer holds it (it expired and someone else took it).
        """
        self._check_open()
        _check_lease_args(key, owner, ttl)
        return await self._renew_lease(key, owner, ttl)

    async def release_lease(self, key: str, owner: str) -> bool:
        """Delete the lease on ``key`` if ``owner`` holds it (compare-and-delete).

        Returns:
            True when ``owner``'s lease was released.
        """
        self._check_open()
        _check_lease_args(key, owner)
        return await self._release_lease(key, owner)

    @abstractmethod
    async def _acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """:meth:`acquire_lease`, atomically (arguments checked)."""

    @abstractmethod
    async def _renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """:meth:`renew_lease`, atomically (arguments checked)."""

    @abstractmethod
    async def _release_lease(self, key: str, owner: str) -> bool:
        """:meth:`release_lease`, atomically: compare, then delete (arguments checked)."""

    async def acquire_and_load(
        self, key: str, owner: str, ttl: float, *, last: int | None
    ) -> list[Message] | None:
        """Take the lease and, only when it was taken, read the newest ``last`` messages.

        Returns ``None`` (nothing read) when another owner holds the lease; a lease ``owner``
        holds already is taken again, as with :meth:`acquire_lease`. The default is
        :meth:`acquire_lease` then :meth:`load` (two round trips; the lease is given back if
        the read fails); Redis, SQLite and PostgreSQL do both in one atomic step.
        """
        self._check_open()
        _check_lease_args(key, owner, ttl)
        _check_last(last)
        return await self._acquire_and_load(key, owner, ttl, last=last)

    async def _acquire_and_load(
        self, key: str, owner: str, ttl: float, *, last: int | None
    ) -> list[Message] | None:
        """:meth:`acquire_and_load`. The default is :meth:`acquire_lease`, then ``_load``."""
        if not await self._acquire_lease(key, owner, ttl):
            return None
        try:
            return await self._load(key, last=last)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release_lease(key, owner)
            raise

    async def _append_turn(
        self,
        session_id: str,
        messages: list[Message],
        *,
        cost: float,
        turn_id: str | None,
        expected_count: int | None,
        release_lease: str | None,
    ) -> int:
        """:meth:`Store.append_turn`, and with ``release_lease=owner`` also give the lease back.

        A backend overrides this with one atomic step that writes only while ``owner`` holds
        the lease (else :class:`~promptstate.exceptions.LeaseLostError`, unless the turn is
        stored already) and deletes the lease with the write. The default composes the lease
        methods around :meth:`Store._append_turn`, in three steps: it renews the lease for
        :data:`WRITE_HOLD` seconds (the check that ``owner`` holds it, and time to write while
        it does), writes, and releases. A lease that is not held stores nothing; an
        ``expected_count`` conflict leaves the lease with its holder (renewed). Unlike one
        atomic step, the lease could still run out if the write took longer than
        :data:`WRITE_HOLD`.
        """
        if release_lease is not None and not await self._renew_lease(
            session_id, release_lease, WRITE_HOLD
        ):
            size = len(messages)
            if turn_id is not None and size:
                tail = await self._load(session_id, last=size)
                if turn_stored(tail[0] if len(tail) == size else None, turn_id):
                    return await self._count(session_id)  # stored already: its count
            raise lease_lost(session_id)
        count = await super()._append_turn(
            session_id,
            messages,
            cost=cost,
            turn_id=turn_id,
            expected_count=expected_count,
            release_lease=None,
        )
        if release_lease is not None:
            await self._release_lease(session_id, release_lease)
        return count


#: Seconds :meth:`LeasingStore._append_turn`'s default renews a turn's lease for before it
#: writes: the write must end within them (a bundled store writes and releases atomically).
WRITE_HOLD = 30.0


_S = TypeVar("_S", bound=Store)

"""``EncryptedStore``: conversations sealed with AES-256-GCM over any store.

::

    store = EncryptedStore(RedisStore.from_url(url), keys={"k1": key}, active="k1")

What is sealed, and what stays readable so that listing, counting, truncation, forks and leases
work on the inner store unchanged:

* each message is sealed whole (``content``, ``name``, ``tool_calls``, ``parts``,
  ``metadata``, ...), once, when it is written; the inner store gets a copy with only its
  ``role``, ``tool_call_id``, ``timestamp`` and ``tokens`` readable, and the pipeline's
  ``turn_id`` in its metadata (a random id the store needs to make retried saves
  idempotent). Messages already stored are never sealed again, except by :meth:`rotate`;
* each value of a state's ``metadata`` is sealed on its own (its key stays readable), so
  ``merge_metadata`` works key by key;
* ``conversation_id``, ``user_id``, counts, costs, versions and timestamps stay readable.

A sealed message's ``content`` is ``"psenc1:<key id>:<base64 of nonce + ciphertext>"``; the
ciphertext's associated data binds it to the key id and the message's role (a sealed metadata
value: to the key id and the metadata key), so a sealed text cannot be moved into another
role or key unnoticed. Every message is sealed under a fresh random 96-bit nonce.

Reading data sealed under a key id that is not in ``keys``, data that fails authentication
(tampered, or a wrong key under a known id), or data that is not sealed at all raises
:class:`~promptstate.exceptions.DecryptionError`; nothing is returned half-opened.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from promptstate.exceptions import ConflictError, DecryptionError, ValidationError
from promptstate.stores._forwarding import ForwardedLeases
from promptstate.stores.base import TURN_ID_KEY, LeasingStore, SessionQuery, Store
from promptstate.tokens import with_tokens
from promptstate.types import Message, SessionInfo, State

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "EncryptedStore needs the cryptography package: pip install 'promptstate[crypto]'"
    ) from exc

__all__ = ["EncryptedStore"]

_PREFIX = "psenc1:"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NONCE = 12

#: Optional methods passed straight through to the inner store when it has them. (Leases are
#: declared on a subclass instead, see :mod:`promptstate.stores._forwarding`.)
_PASS_THROUGH = frozenset({"setup", "purge_expired"})


_encode = msgspec.msgpack.Encoder().encode
_decode_message = msgspec.msgpack.Decoder(Message).decode
_decode_any = msgspec.msgpack.Decoder().decode
_b64 = binascii.b2a_base64
_AAD: dict[tuple[str, str], bytes] = {}
_unb64 = binascii.a2b_base64


class _Slow(Exception):
    """Leave the fast path of :meth:`EncryptedStore._open_messages`."""


class EncryptedStore(Store):
    """Wrap ``inner`` so that what it stores is sealed with AES-256-GCM.

    Args:
        inner: The store that holds the sealed data. Borrowed: :meth:`aclose` leaves it open
            unless ``close_inner=True``.
        keys: Key id -> 32-byte key. Every key that may have sealed stored data must be here
            (reads open data sealed under any of them).
        active: The key id that seals new data.
        close_inner: Also close ``inner`` in :meth:`aclose`.

    Rotation: add the new key to ``keys``, make it ``active`` (new writes use it at once), then
    ``await store.rotate()`` re-seals what older keys sealed; once it returns, the old key
    may be dropped.

    Raises:
        ValidationError: A key that is not 32 bytes, a bad key id, or ``active`` not in
            ``keys``.
    """

    def __init__(
        self,
        inner: Store,
        *,
        keys: Mapping[str, bytes],
        active: str,
        close_inner: bool = False,
    ) -> None:
        if not isinstance(inner, Store):
            raise ValidationError(f"EncryptedStore wraps a Store, got {type(inner).__name__}")
        if not isinstance(keys, Mapping) or not keys:
            raise ValidationError("keys must be a non-empty mapping of key id -> 32-byte key")
        ciphers: dict[str, AESGCM] = {}
        for kid, key in keys.items():
            if not isinstance(kid, str) or not _KEY_ID.match(kid):
                raise ValidationError(
                    f"a key id must be 1-64 characters of A-Z a-z 0-9 _ . -, got {kid!r}"
                )
            if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
                raise ValidationError(
                    f"key {kid!r} must be 32 bytes (AES-256), got "
                    + (f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else "no bytes")
                )
            ciphers[kid] = AESGCM(bytes(key))
        if active not in ciphers:
            raise ValidationError(f"active key {active!r} is not one of the keys")
        super().__init__(token_counter=inner.token_counter)
        self._inner = inner
        # Bound to one event loop exactly when the inner store is (the wrapper adds nothing).
        self.loop_bound = inner.loop_bound
        self.db_system = inner.db_system
        self._ciphers = ciphers
        self._active = active
        self._cipher = ciphers[active]
        self._tag = f"{_PREFIX}{active}:"
        self._close_inner = close_inner

    def __repr__(self) -> str:  # never the keys
        keys = sorted(self._ciphers)
        return f"EncryptedStore({self._inner!r}, active={self._active!r}, keys={keys!r})"

    def __new__(cls, inner: Store, **options: Any) -> EncryptedStore:
        # Over a store with leases, a subclass that declares them (so the pipeline sees them).
        if cls is EncryptedStore and isinstance(inner, LeasingStore):
            cls = _LeasingEncryptedStore
        return super().__new__(cls)

    def __getattr__(self, name: str) -> Any:
        if name in _PASS_THROUGH:
            return getattr(self._inner, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    async def exists(self) -> bool:
        """Whether the inner store's database is there (see :meth:`Store.exists`)."""
        return await self._inner.exists()

    @property
    def inner(self) -> Store:
        """The wrapped store."""
        return self._inner

    @property
    def active(self) -> str:
        """The key id that seals new data."""
        return self._active

    @property
    def ttl(self) -> float | None:
        """The sessions' TTL: the inner store's."""
        return self._inner.ttl

    async def aclose(self) -> None:
        """Close this store (and ``inner`` with ``close_inner=True``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._close_inner:
            await self._inner.aclose()

    # -- sealing ------------------------------------------------------------------------------

    def _seal_message(self, message: Message) -> Message:
        """``message`` (its tokens counted) sealed whole under the active key.

        The whole message is sealed (one encryption, and one decode when it is opened); the
        copy the inner store sees keeps only the readable fields.
        """
        metadata = message.metadata
        turn_id = metadata.get(TURN_ID_KEY) if metadata else None
        plain = _encode(message)
        nonce = os.urandom(_NONCE)
        sealed = self._cipher.encrypt(nonce, plain, self._aad(self._active, message.role))
        return Message(
            message.role,
            self._tag + _b64(nonce + sealed, newline=False).decode("ascii"),
            tool_call_id=message.tool_call_id,
            timestamp=message.timestamp,
            metadata={TURN_ID_KEY: turn_id} if turn_id is not None else {},
            tokens=message.tokens,
        )

    @staticmethod
    def _aad(kid: str, role: str) -> bytes:
        aad = _AAD.get((kid, role))
        if aad is None:
            aad = f"{_PREFIX}{kid}|{role}".encode()
            if len(_AAD) < 4096:  # key ids x roles, and metadata keys: bounded
                _AAD[kid, role] = aad
        return aad

    def _split(self, text: object, where: str) -> tuple[str, AESGCM, bytes]:
        if not isinstance(text, str) or not text.startswith(_PREFIX):
            raise DecryptionError(f"{where} is not sealed")
        kid, sep, body = text[len(_PREFIX) :].partition(":")
        cipher = self._ciphers.get(kid)
        if not sep or cipher is None:
            raise DecryptionError(f"{where} is sealed under key {kid!r}, which is not in keys")
        try:
            data = _unb64(body)
        except (binascii.Error, ValueError) as exc:
            raise DecryptionError(f"{where} is not valid sealed data") from exc
        if len(data) < _NONCE + 16:
            raise DecryptionError(f"{where} is not valid sealed data")
        return kid, cipher, data

    def _open_message(self, message: Message, where: str) -> Message:
        kid, cipher, data = self._split(message.content, where)
        try:
            plain = cipher.decrypt(data[:_NONCE], data[_NONCE:], self._aad(kid, message.role))
            return _decode_message(plain)
        except InvalidTag:
            raise DecryptionError(
                f"{where} failed authentication (tampered, or a wrong key for {kid!r})"
            ) from None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise DecryptionError(f"{where} does not hold a sealed message") from exc

    def _open_messages(self, messages: Sequence[Message], key: str) -> list[Message]:
        # The hot path of every load: _open_message inlined (a turn opens its whole window).
        ciphers = self._ciphers
        aad = self._aad
        opened: list[Message] = []
        append = opened.append
        skip = len(_PREFIX)
        try:
            for message in messages:
                text = message.content
                if not text.startswith(_PREFIX):
                    raise _Slow
                kid, _, body = text[skip:].partition(":")
                cipher = ciphers.get(kid)
                if cipher is None:
                    raise _Slow
                data = _unb64(body)
                append(
                    _decode_message(
                        cipher.decrypt(data[:_NONCE], data[_NONCE:], aad(kid, message.role))
                    )
                )
        except (_Slow, binascii.Error, ValueError, InvalidTag, msgspec.DecodeError):
            # Something is wrong: the careful path names what, for the message at fault.
            return [self._open_message(m, f"message of session {key!r}") for m in messages]
        return opened

    def _seal_value(self, name: str, value: Any) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._cipher.encrypt(
            nonce, _encode(value), self._aad(self._active, "meta:" + name)
        )
        return self._tag + _b64(nonce + sealed, newline=False).decode("ascii")

    def _open_value(self, name: str, value: Any, where: str) -> Any:
        kid, cipher, data = self._split(value, where)
        try:
            plain = cipher.decrypt(data[:_NONCE], data[_NONCE:], self._aad(kid, "meta:" + name))
            return _decode_any(plain)
        except InvalidTag:
            raise DecryptionError(
                f"{where} failed authentication (tampered, or a wrong key for {kid!r})"
            ) from None
        except msgspec.DecodeError as exc:
            raise DecryptionError(f"{where} does not hold a sealed value") from exc

    def _seal_metadata(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._seal_value(k, v) for k, v in metadata.items()}

    def _open_metadata(self, metadata: Mapping[str, Any], key: str) -> dict[str, Any]:
        return {
            k: self._open_value(k, v, f"metadata[{k!r}] of session {key!r}")
            for k, v in metadata.items()
        }

    def _counted(self, messages: Sequence[Message]) -> list[Message]:
        counter = self._counter
        return [with_tokens(m, counter) for m in messages]

    def _seal_state(self, state: State, plain: list[Message]) -> State:
        return msgspec.structs.replace(
            state,
            messages=[self._seal_message(m) for m in plain],
            metadata=self._seal_metadata(state.metadata),
        )

    def _open_state(self, state: State) -> State:
        key = state.conversation_id
        return msgspec.structs.replace(
            state,
            messages=self._open_messages(state.messages, key),
            metadata=self._open_metadata(state.metadata, key),
        )

    # -- the store contract -------------------------------------------------------------------

    async def _get(self, key: str) -> State:
        return self._open_state(await self._inner.get(key))

    async def _set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        plain = self._counted(state.messages)
        stored = await self._inner.set(
            key, self._seal_state(state, plain), expected_version=expected_version
        )
        # What was stored, without opening it again: the plaintext, with the store's fields.
        return msgspec.structs.replace(stored, messages=plain, metadata=dict(state.metadata))

    async def _delete(self, key: str) -> bool:
        return await self._inner.delete(key)

    async def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        async for key in self._inner.list_keys(prefix):
            yield key

    async def _load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        return self._open_messages(await self._inner.load(session_id, last=last), session_id)

    async def _save(self, session_id: str, messages: Sequence[Message]) -> None:
        await self._inner.save(session_id, [self._seal_message(m) for m in self._counted(messages)])

    async def _append(self, session_id: str, messages: Sequence[Message]) -> int:
        sealed = [self._seal_message(m) for m in self._counted(messages)]
        return await self._inner.append(session_id, sealed)

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
        # release_lease is given only when this wrapper is a LeasingStore, i.e. inner is one.
        sealed = [self._seal_message(m) for m in self._counted(messages)]
        return await self._inner.append_turn(
            session_id,
            sealed,
            cost=cost,
            turn_id=turn_id,
            expected_count=expected_count,
            release_lease=release_lease,
        )

    async def _fork(
        self, source: str, target: str, *, overwrite: bool = False, at: int | None = None
    ) -> State:
        return self._open_state(await self._inner.fork(source, target, overwrite=overwrite, at=at))

    async def _count(self, key: str) -> int:
        return await self._inner.count(key)

    async def _get_metadata(self, key: str) -> dict[str, Any]:
        return self._open_metadata(await self._inner.get_metadata(key), key)

    async def _merge_metadata(
        self, key: str, updates: Mapping[str, Any], *, remove: Iterable[str] = ()
    ) -> dict[str, Any]:
        merged = await self._inner.merge_metadata(key, self._seal_metadata(updates), remove=remove)
        return self._open_metadata(merged, key)

    async def _truncate(self, key: str, keep: int) -> int:
        return await self._inner.truncate(key, keep)

    async def _pop_messages(self, key: str, count: int = 1) -> list[Message]:
        return self._open_messages(await self._inner.pop_messages(key, count), key)

    async def _list_sessions(self, query: SessionQuery) -> list[SessionInfo]:
        self._inner._check_open()
        return [
            msgspec.structs.replace(
                info, metadata=self._open_metadata(info.metadata, info.conversation_id)
            )
            for info in await self._inner._list_sessions(query)
        ]

    async def _list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        async for state in self._inner.list_by_prefix(prefix):
            yield self._open_state(state)

    async def _delete_by_prefix(self, prefix: str) -> int:
        return await self._inner.delete_by_prefix(prefix)

    async def _get_many(self, keys: Iterable[str]) -> list[State | None]:
        return [
            None if s is None else self._open_state(s) for s in await self._inner.get_many(keys)
        ]

    # -- rotation -----------------------------------------------------------------------------

    def _needs_reseal(self, text: object) -> bool:
        return not (isinstance(text, str) and text.startswith(self._tag))

    async def rotate(self, prefix: str = "") -> int:
        """Re-seal under the active key everything under ``prefix`` that another key sealed.

        Each session is rewritten with one compare-and-set write (retried when a turn wrote
        it meanwhile), so turns may go on during a rotation. Data that is not sealed at all
        (written to the inner store before encryption was used) is sealed too.

        Returns:
            How many sessions were rewritten.

        Raises:
            DecryptionError: A session is sealed under a key that is not in ``keys``, or was
                tampered with; the sessions before it are rotated already.
        """
        rewritten = 0
        async for key in self._inner.list_keys(prefix):
            while True:
                try:
                    raw = await self._inner.get(key)
                except Exception as exc:  # deleted or expired since it was listed
                    from promptstate.exceptions import NotFoundError

                    if isinstance(exc, NotFoundError):
                        break
                    raise
                if not any(self._needs_reseal(m.content) for m in raw.messages) and not any(
                    self._needs_reseal(v) for v in raw.metadata.values()
                ):
                    break
                messages = [
                    self._seal_message(self._open_plain(m, key))
                    if self._needs_reseal(m.content)
                    else m
                    for m in raw.messages
                ]
                metadata = {
                    k: self._seal_value(k, self._open_plain_value(k, v, key))
                    if self._needs_reseal(v)
                    else v
                    for k, v in raw.metadata.items()
                }
                state = msgspec.structs.replace(raw, messages=messages, metadata=metadata)
                try:
                    await self._inner.set(key, state, expected_version=raw.version)
                except ConflictError:
                    continue
                rewritten += 1
                break
        return rewritten

    def _open_plain(self, message: Message, key: str) -> Message:
        if isinstance(message.content, str) and message.content.startswith(_PREFIX):
            return self._open_message(message, f"message of session {key!r}")
        return message  # never sealed: seal it as it is

    def _open_plain_value(self, name: str, value: Any, key: str) -> Any:
        if isinstance(value, str) and value.startswith(_PREFIX):
            return self._open_value(name, value, f"metadata[{name!r}] of session {key!r}")
        return value


class _LeasingEncryptedStore(ForwardedLeases, EncryptedStore, LeasingStore):
    """An :class:`EncryptedStore` over a :class:`LeasingStore`: it is one too, with the inner
    store's leases, its one-step ``acquire_and_load`` and its ``append_turn`` with release."""

    async def _acquire_and_load(
        self, key: str, owner: str, ttl: float, *, last: int | None
    ) -> list[Message] | None:
        """Take the inner store's lease and read (and open) the newest ``last`` messages."""
        inner: LeasingStore = self._inner
        got = await inner.acquire_and_load(key, owner, ttl, last=last)
        return None if got is None else self._open_messages(got, key)


_LeasingEncryptedStore.__name__ = _LeasingEncryptedStore.__qualname__ = "EncryptedStore"

"""PostgreSQL store on asyncpg: one row per session, one row per message, no store-wide lock.

Schema (``T`` is ``table_name``; every name is validated and double-quoted)::

    T             key text COLLATE "C" PRIMARY KEY, user_id, version, token_count, total_cost,
                  metadata bytea (MessagePack), message_count, last_seq,
                  created_at, updated_at, expires_at (NULL = never)
    T_messages    (session_key, seq) PRIMARY KEY, data bytea (MessagePack of one Message),
                  session_key REFERENCES T (key) ON DELETE CASCADE
    T_migrations  version PRIMARY KEY, name, applied_at

    indexes on T (migration 3): (updated_at, key), (created_at, key), and both per user_id,
    so a page of ``list_sessions`` is an index range scan from a keyset cursor
    ``(time, key)``, never an OFFSET scan

The live messages of a session are the rows with ``seq`` in
``(last_seq - message_count, last_seq]``. Sequence numbers only grow, so a write that
replaces the messages (``set``, ``save``) inserts the new rows above the old ones and deletes
the old ones in the same statement; rows below the live range are never read.

Every operation takes a connection from the pool for one statement (``fork`` for one short
transaction) and gives it back, so sessions never wait for each other; concurrent writes to
*one* session are serialized by PostgreSQL's row lock on its ``T`` row.

The statements are built in :mod:`promptstate.stores._postgres_sql` and the numbered schema
migrations live in :mod:`promptstate.stores._postgres_migrations`; this module holds the store:
its pool, its error translation and its methods.

Errors: every operation runs inside ``async with self._conn(what, key) as conn`` (``_Op``),
which opens the pool on first use, acquires and releases the connection, and is the one place
where asyncpg, socket and pool errors become promptstate errors (``_Op._translate``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import urlsplit

import msgspec

from promptstate.exceptions import (
    ConflictError,
    CorruptStateError,
    NotFoundError,
    PromptStateError,
    StoreAuthError,
    StoreUnavailableError,
    ValidationError,
)
from promptstate.redaction import redact as _redact
from promptstate.redaction import scrub, url_secrets
from promptstate.serialization import pack, unpack_any, unpack_messages
from promptstate.settle import settled_write
from promptstate.stores._postgres_migrations import MIGRATIONS, apply_migrations
from promptstate.stores._postgres_sql import PURGE_BATCH, SQL, Names, key_range, page_sql
from promptstate.stores.base import LeasingStore, SessionQuery
from promptstate.stores.integrity import check_count, check_metadata, checked_info, checked_state
from promptstate.stores.turns import TURN_ID_KEY, decide_turn
from promptstate.tokens import TokenCounter
from promptstate.types import Message, SessionInfo, State, utcnow

__all__ = ["MIGRATIONS", "PostgresStore"]

logger = logging.getLogger(__name__)

_PAGE = 100
_EMPTY_DICT = pack({})
_OWNED: Any = object()  # the pool argument from_dsn passes: "build and own a pool"
_timeout_scope: Any = getattr(asyncio, "timeout", None)  # Python 3.11+


def _import_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - asyncpg is installed in the test env
        raise ImportError(
            "PostgresStore needs asyncpg: pip install 'promptstate[postgres]'"
        ) from exc
    return asyncpg


# -- the store --------------------------------------------------------------------------------


class PostgresStore(LeasingStore):
    """Conversation state in PostgreSQL, through an asyncpg pool.

    Use :meth:`from_dsn` to have the store build (and close) its own pool, or pass an
    ``asyncpg.Pool`` you own, which the store borrows and never closes.

    Args:
        pool: An initialized ``asyncpg.Pool`` (not a single connection).
        table_name: The sessions table, optionally schema-qualified (``"app.chats"``); the
            messages and migrations tables are named after it (``<name>_messages``,
            ``<name>_migrations``). Letters, digits and underscores only.
        ttl: Session lifetime after its last write (``timedelta`` or seconds).
        touch_on_read: Restart the TTL on reads too.
        token_counter: Counter for ``State.token_count``.
        acquire_timeout: Seconds to wait for a free pool connection before raising
            :class:`~promptstate.exceptions.StoreUnavailableError` (``None``: wait for ever).

    The tables are created on first use, or by :meth:`setup`.
    """

    db_system = "postgresql"

    def __init__(
        self,
        pool: Any,
        *,
        table_name: str = "conversation_state",
        ttl: timedelta | float | None = None,
        touch_on_read: bool = False,
        token_counter: TokenCounter | None = None,
        acquire_timeout: float | None = 10.0,
    ) -> None:
        super().__init__(ttl=ttl, touch_on_read=touch_on_read, token_counter=token_counter)
        self._names = Names(table_name)
        self._sql = SQL(self._names, self._ttl)
        self._acquire_timeout = _positive_or_none(acquire_timeout, "acquire_timeout")
        self._owns_pool = pool is _OWNED
        self._pool_options: dict[str, Any] = {}
        self._dsn = ""
        if self._owns_pool:
            self._pool: Any = None
        else:
            asyncpg = _import_asyncpg()
            if not isinstance(pool, asyncpg.Pool):
                raise ValidationError(
                    "PostgresStore takes an asyncpg.Pool (from asyncpg.create_pool), got "
                    f"{type(pool).__name__}; for a DSN use PostgresStore.from_dsn()"
                )
            self._pool = pool
        self._ready = False
        self._start_lock = asyncio.Lock()  # first-use setup only, never held by operations
        self._pool_lock = asyncio.Lock()
        self._next_purge = 0.0

    @classmethod
    def from_dsn(
        cls,
        dsn: str,
        *,
        table_name: str = "conversation_state",
        ttl: timedelta | float | None = None,
        touch_on_read: bool = False,
        token_counter: TokenCounter | None = None,
        min_size: int = 1,
        max_size: int = 10,
        acquire_timeout: float | None = 10.0,
        max_inactive_connection_lifetime: float = 300.0,
        connect_timeout: float = 10.0,
        command_timeout: float | None = None,
        pgbouncer: bool = False,
        application_name: str = "promptstate",
        **connect_kwargs: Any,
    ) -> PostgresStore:
        """A store with a pool of its own, opened on first use and closed by ``aclose()``.

        Args:
            dsn: ``postgresql://user:password@host:port/database`` (``postgres://`` too; the
                SQLAlchemy form ``postgresql+asyncpg://`` is refused with a hint).
            table_name: See :class:`PostgresStore`.
            ttl: See :class:`PostgresStore`.
            touch_on_read: See :class:`PostgresStore`.
            token_counter: See :class:`PostgresStore`.
            min_size: Connections the pool keeps open.
            max_size: The most connections the pool opens.
            acquire_timeout: Seconds to wait for a free connection.
            max_inactive_connection_lifetime: Seconds after which an idle connection above
                ``min_size`` is closed (0: never).
            connect_timeout: Seconds to wait for a new connection.
            command_timeout: Default per-statement timeout in seconds (``None``: none).
            pgbouncer: Behind PgBouncer in transaction or statement pooling mode: keep no
                server-side prepared statements (``statement_cache_size=0``).
            application_name: Shown in ``pg_stat_activity`` for the pool's connections.
            **connect_kwargs: Passed on to ``asyncpg.create_pool`` (e.g. ``ssl``).

        Raises:
            ValidationError: The DSN or an option is unusable. Never shows the password.
        """
        _check_dsn(dsn)
        _refuse_store_options_in(dsn)
        _positive_or_none(connect_timeout, "connect_timeout")
        _positive_or_none(command_timeout, "command_timeout")
        for name, value, low in (("min_size", min_size, 0), ("max_size", max_size, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValidationError(f"{name} must be an int >= {low}, got {value!r}")
        if min_size > max_size:
            raise ValidationError(f"min_size ({min_size}) must not exceed max_size ({max_size})")
        if (
            not isinstance(max_inactive_connection_lifetime, (int, float))
            or isinstance(max_inactive_connection_lifetime, bool)
            or not max_inactive_connection_lifetime >= 0
        ):
            raise ValidationError(
                "max_inactive_connection_lifetime must be a number >= 0, got "
                f"{max_inactive_connection_lifetime!r}"
            )
        if not isinstance(application_name, str):
            raise ValidationError("application_name must be a str")
        store = cls(
            _OWNED,
            table_name=table_name,
            ttl=ttl,
            touch_on_read=touch_on_read,
            token_counter=token_counter,
            acquire_timeout=acquire_timeout,
        )
        server_settings = dict(connect_kwargs.pop("server_settings", None) or {})
        server_settings.setdefault("application_name", application_name)
        options: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "max_inactive_connection_lifetime": float(max_inactive_connection_lifetime),
            "timeout": float(connect_timeout),
            "command_timeout": command_timeout,
            "server_settings": server_settings,
            # The store changes no session state (no SET, LISTEN, session advisory locks or
            # cursors), so the pool need not send asyncpg's RESET ALL query on every release;
            # an open transaction is still rolled back by asyncpg before this is called.
            "reset": _no_reset,
            "connect": _shielded_connect,
            **connect_kwargs,
        }
        if pgbouncer:
            options["statement_cache_size"] = 0
        store._dsn = dsn
        store._pool_options = options
        return store

    def __repr__(self) -> str:
        pool = f"dsn={_redact(self._dsn)!r}" if self._owns_pool else "<borrowed pool>"
        return f"PostgresStore({pool}, table_name={self._names.name!r}, ttl={self._ttl!r})"

    @property
    def table_name(self) -> str:
        """The sessions table's name as given."""
        return self._names.name

    # -- lifecycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        await self._start()

    async def _start(self) -> None:
        async with self._start_lock:
            if self._ready:
                return
            self._check_open()
            await self._run_setup()
            self._ready = True

    async def _get_pool(self) -> Any:
        async with self._pool_lock:
            if self._pool is None:
                self._check_open()
                asyncpg = _import_asyncpg()
                # Errors reach the caller's _Op, which translates them (DSN password blanked).
                pool = await asyncpg.create_pool(self._dsn, **self._pool_options)
                if self._closed:
                    # aclose() ran while the pool was being opened and saw no pool to close.
                    await _close_pool(pool)
                    self._check_open()
                self._pool = pool
        return self._pool

    async def exists(self) -> bool:
        """Whether this store's tables are there; creates nothing (not even the pool's tables).

        Raises:
            StoreUnavailableError: PostgreSQL cannot be reached.
        """
        self._check_open()
        async with self._connection("check that the tables exist") as conn:
            found = await conn.fetchval("SELECT to_regclass($1)", self._names.sessions)
        return found is not None

    async def setup(self) -> list[int]:
        """Create or upgrade the tables; returns the migration versions this call applied.

        Idempotent and safe when several processes call it at once: the migrations run in one
        transaction under an advisory lock on the table name, and each applied version is
        recorded in ``<table_name>_migrations``. Called automatically on first use.
        """
        self._check_open()
        applied = await self._run_setup()
        self._ready = True
        return applied

    async def _run_setup(self) -> list[int]:
        async with self._connection("setup") as conn, conn.transaction():
            return await apply_migrations(conn, self._names)

    async def aclose(self) -> None:
        """Close the pool if the store built it (a borrowed pool stays open)."""
        if not self._closed and self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await _close_pool(pool)
        await super().aclose()

    def _connection(self, what: str, key: str | None = None) -> _Op:
        """A pool connection for one operation, without the first-use setup."""
        return _Op(self, what, key, ensure_ready=False)

    def _conn(self, what: str, key: str | None = None) -> _Op:
        """A pool connection for one operation (``async with``), every driver error translated
        into a promptstate error naming ``what`` and ``key``."""
        return _Op(self, what, key, ensure_ready=True)

    def _maybe_purge_due(self) -> bool:
        if self._ttl is None:
            return False
        now = time.monotonic()
        if now < self._next_purge:
            return False
        self._next_purge = now + min(max(self._ttl, 1.0), 60.0)
        return True

    async def _opportunistic_purge(self, conn: Any) -> None:
        try:
            removed = await conn.fetchval(self._sql.purge)
        except Exception as exc:  # the write succeeded; purging is best effort
            logger.warning("purging expired sessions of %s failed: %r", self._names.name, exc)
            return
        if removed:
            logger.debug("purged %d expired sessions from %s", removed, self._names.name)

    async def purge_expired(self) -> int:
        """Delete every expired session (and its messages) now; returns how many.

        Expired sessions are invisible to reads at once; this reclaims their space. Writes
        also purge a batch now and then (at most once per TTL, at least once a minute).
        """
        self._check_open()
        total = 0
        async with self._conn("purge_expired") as conn:
            await conn.execute(self._sql.lease_purge)
            while True:
                removed = int(await conn.fetchval(self._sql.purge))
                total += removed
                if removed < PURGE_BATCH:
                    return total

    # -- reading --------------------------------------------------------------------------

    def _state(self, key: str, row: Any, offset: int = 0) -> State:
        return checked_state(
            "PostgreSQL",
            key,
            user_id=row[offset],
            version=row[offset + 1],
            token_count=row[offset + 2],
            total_cost=row[offset + 3],
            metadata=unpack_any(row[offset + 4], key=key),
            created_at=row[offset + 5],
            updated_at=row[offset + 6],
            messages=unpack_messages(row[offset + 7], key=key),
            message_count=row[offset + 8],
        )

    async def _get(self, key: str) -> State:
        sql = self._sql.get_touch if self._touch_on_read and self._sql.touching else self._sql.get
        async with self._conn("get", key) as conn:
            row = await conn.fetchrow(sql, key)
        if row is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return self._state(key, row)

    async def _get_many(self, keys: Iterable[str]) -> list[State | None]:
        wanted = list(keys)
        if not wanted:
            return []
        touch = self._touch_on_read and self._sql.touching
        sql = self._sql.get_many_touch if touch else self._sql.get_many
        unique = list(dict.fromkeys(wanted))
        async with self._conn(f"get_many of {len(unique)} keys") as conn:
            rows = await conn.fetch(sql, unique)
        found = {row[0]: row for row in rows}
        result: list[State | None] = []
        for key in wanted:
            row = found.get(key)
            # Each position gets its own object, so a caller changing one leaves the others be.
            result.append(None if row is None else self._state(key, row, 1))
        return result

    async def _load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        sql = self._sql
        touch = self._touch_on_read and sql.touching
        async with self._conn("load", session_id) as conn:
            if last is None:
                rows = await conn.fetch(sql.load_all_touch if touch else sql.load_all, session_id)
                return unpack_messages([r[0] for r in rows], key=session_id)
            rows = await conn.fetch(
                sql.load_last_touch if touch else sql.load_last, session_id, last
            )
        return unpack_messages([r[0] for r in reversed(rows)], key=session_id)

    async def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        after: str | None = None
        while True:
            where, args = key_range(prefix, after, 1)
            sql = (
                f"SELECT s.key FROM {self._sql.sessions} s WHERE {where}"
                f" AND {self._sql.live_s} ORDER BY s.key LIMIT {_PAGE}"
            )
            async with self._conn("list_keys with prefix", prefix) as conn:
                rows = await conn.fetch(sql, *args)
            for row in rows:
                yield row[0]
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    async def _list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        sql = self._sql
        after: str | None = None
        while True:
            where, args = key_range(prefix, after, 1)
            page = (
                f"SELECT s.key, {sql.head}, {sql.msgs}, s.message_count FROM {sql.sessions} s"
                f" WHERE {where} AND {sql.live_s} ORDER BY s.key LIMIT {_PAGE}"
            )
            if self._touch_on_read and sql.touching:
                page = (
                    f"WITH page AS ({page}), touch AS (UPDATE {sql.sessions} s"
                    f" SET expires_at = {sql.exp} FROM page WHERE s.key = page.key"
                    f" AND {sql.live_s}) SELECT * FROM page"
                )
            async with self._conn("list_by_prefix with prefix", prefix) as conn:
                rows = await conn.fetch(page, *args)
            for row in rows:
                yield self._state(row[0], row, 1)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    # -- writing --------------------------------------------------------------------------

    def _encode(
        self, messages: Sequence[Message], key: str
    ) -> tuple[list[Message], list[bytes], int]:
        counted, tokens = self._count_new(messages)
        try:
            encoded = [pack(m) for m in counted]
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise ValidationError(f"a message for key {key!r} cannot be stored: {exc}") from exc
        return counted, encoded, tokens

    async def _write(self, what: str, sql: str, key: str, *args: Any) -> Any:
        async with self._conn(what, key) as conn:
            value = await conn.fetchval(sql, key, *args)
            if self._maybe_purge_due():
                await self._opportunistic_purge(conn)
        return value

    @settled_write
    async def _append(self, session_id: str, messages: Sequence[Message]) -> int:
        if not messages:
            async with self._conn("append to", session_id) as conn:
                count = await conn.fetchval(self._sql.count, session_id)
            return (
                0
                if count is None
                else check_count("PostgreSQL", session_id, "message_count", count)
            )
        _, encoded, tokens = self._encode(messages, session_id)
        count = await self._write(
            "append to",
            self._sql.append,
            session_id,
            encoded,
            len(encoded),
            tokens,
            utcnow(),
            0.0,
        )
        return int(count)

    @settled_write
    async def _append_turn(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        cost: float = 0.0,
        turn_id: str | None = None,
        expected_count: int | None = None,
        release_lease: str | None = None,
    ) -> int:
        """Append one turn and add ``cost``, in one statement; see :meth:`Store.append_turn`.

        Without ``turn_id`` and ``expected_count`` this is one round trip, like
        :meth:`append`. With them it is one statement that reads the count, the version and
        the one message where a retried turn would start, and appends when the turn is not
        there and the count is as expected; when it did not write, those decide (a retried
        turn, a conflict), and another writer that came in between makes it look again.
        Neither grows with the history.

        With ``release_lease`` the read also checks that this owner holds the live turn lease
        (else :class:`~promptstate.exceptions.LeaseLostError`, nothing written, unless the turn
        is stored already), and the append releases the lease in the same statement: one
        round trip whenever the lease is held, no other writer came in and the turn is not
        stored already.
        """
        sql = self._sql
        if release_lease is not None:
            return await self._append_turn_release(
                session_id, messages, cost, turn_id, expected_count, release_lease
            )
        if turn_id is None and expected_count is None:
            if not messages:
                return await self._append(session_id, messages)
            _, encoded, tokens = self._encode(messages, session_id)
            count = await self._write(
                "append_turn to",
                sql.append,
                session_id,
                encoded,
                len(encoded),
                tokens,
                utcnow(),
                cost,
            )
            return int(count)
        _, encoded, tokens = self._encode(messages, session_id)
        # The first try probes and, when nothing stands in the way, writes in one statement
        # (turn_fast); anything else is decided on its probe as before.
        fast = bool(encoded)
        while True:
            async with self._conn("append_turn to", session_id) as conn:
                if fast:
                    fast = False
                    new_count, count, version, start = await conn.fetchrow(
                        sql.turn_fast,
                        session_id,
                        encoded,
                        len(encoded),
                        tokens,
                        utcnow(),
                        cost,
                        None if turn_id is None else pack(TURN_ID_KEY) + pack(turn_id),
                        -1 if expected_count is None else expected_count,
                    )
                    if new_count is not None:
                        if self._maybe_purge_due():
                            await self._opportunistic_purge(conn)
                        return int(new_count)
                    count, version = count or 0, version or 0
                else:
                    row = await conn.fetchrow(sql.turn_probe, session_id, len(encoded))
                    count, version, start = (0, 0, None) if row is None else row
                if not decide_turn(
                    session_id,
                    count=count,
                    size=len(encoded),
                    start=self._turn_start(start, turn_id, session_id),
                    turn_id=turn_id,
                    expected_count=expected_count,
                ):
                    return int(count)
                args = [session_id, encoded, len(encoded), tokens, utcnow(), cost]
                if version:
                    new_count = await conn.fetchval(sql.turn_cas, *args, version)
                else:
                    new_count = await conn.fetchval(sql.turn_new, *args)
                if new_count is None:
                    continue  # another writer came in between: look again
                if self._maybe_purge_due():
                    await self._opportunistic_purge(conn)
                return int(new_count)

    @staticmethod
    def _turn_start(data: bytes | None, turn_id: str | None, key: str) -> Message | None:
        """The probed message where a retried turn would start, decoded only when needed."""
        if data is None or turn_id is None:
            return None
        return unpack_messages([data], key=key)[0]

    async def _append_turn_release(
        self,
        session_id: str,
        messages: Sequence[Message],
        cost: float,
        turn_id: str | None,
        expected_count: int | None,
        owner: str,
    ) -> int:
        sql = self._sql
        _, encoded, tokens = self._encode(messages, session_id)
        # The first try probes and, when nothing stands in the way, writes and releases in one
        # statement (turn_release_fast); anything else is decided on its probe as before.
        fast = bool(encoded)
        while True:
            async with self._conn("append_turn to", session_id) as conn:
                if fast:
                    fast = False
                    new_count, *probe = await conn.fetchrow(
                        sql.turn_release_fast,
                        session_id,
                        encoded,
                        len(encoded),
                        tokens,
                        utcnow(),
                        cost,
                        owner,
                        None if turn_id is None else pack(TURN_ID_KEY) + pack(turn_id),
                        -1 if expected_count is None else expected_count,
                    )
                    if new_count is not None:
                        if self._maybe_purge_due():
                            await self._opportunistic_purge(conn)
                        return int(new_count)
                    count, version, start, held = probe
                else:
                    row = await conn.fetchrow(sql.turn_probe_lease, session_id, len(encoded), owner)
                    count, version, start, held = row
                count, version = count or 0, version or 0
                if not decide_turn(
                    session_id,
                    count=count,
                    size=len(encoded),
                    start=self._turn_start(start, turn_id, session_id),
                    turn_id=turn_id,
                    expected_count=expected_count,
                    lease_held=bool(held),
                ):
                    # Stored already (a retry whose first try was stored) or empty: release.
                    if held:
                        await conn.fetchval(sql.lease_release, session_id, owner)
                    return int(count)
                args = [session_id, encoded, len(encoded), tokens, utcnow(), cost]
                if version:
                    new_count = await conn.fetchval(sql.turn_cas_release, *args, version, owner)
                else:
                    new_count = await conn.fetchval(sql.turn_new_release, *args, owner)
                if new_count is None:
                    continue  # another writer came in between: look again
                if self._maybe_purge_due():
                    await self._opportunistic_purge(conn)
                return int(new_count)

    @settled_write
    async def _save(self, session_id: str, messages: Sequence[Message]) -> None:
        _, encoded, tokens = self._encode(messages, session_id)
        await self._write(
            "save",
            self._sql.save,
            session_id,
            encoded,
            len(encoded),
            tokens,
            utcnow(),
        )

    @settled_write
    async def _set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        user_id = _check_user_id(state.user_id, key)
        total_cost = _check_cost(state.total_cost, key)
        created_at = _check_time(state.created_at, key)
        try:
            metadata = pack(state.metadata) if state.metadata else _EMPTY_DICT
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise ValidationError(f"the metadata for key {key!r} cannot be stored: {exc}") from exc
        counted, encoded, tokens = self._encode(state.messages, key)
        now = utcnow()
        args: list[Any] = [key, encoded, len(encoded), tokens, now, user_id]
        args += [total_cost, metadata, created_at]
        if expected_version is None:
            sql = self._sql.set_any
        elif expected_version == 0:
            sql = self._sql.set_new
        else:
            sql = self._sql.set_cas
            args.append(expected_version)
        async with self._conn("set", key) as conn:
            version = await conn.fetchval(sql, *args)
            if version is None:
                stored = await conn.fetchval(self._sql.version, key)
                raise ConflictError(
                    f"version conflict on key {key!r}: expected {expected_version}, "
                    f"stored {stored or 0}"
                )
            if self._maybe_purge_due():
                await self._opportunistic_purge(conn)
        return msgspec.structs.replace(
            state,
            conversation_id=key,
            messages=counted,
            token_count=tokens,
            total_cost=total_cost,
            created_at=created_at,
            version=version,
            updated_at=now,
        )

    @settled_write
    async def _delete(self, key: str) -> bool:
        async with self._conn("delete", key) as conn:
            live = await conn.fetchval(self._sql.delete, key)
        return bool(live)

    @settled_write
    async def _delete_by_prefix(self, prefix: str) -> int:
        where, args = key_range(prefix, None, 1)
        sql = (
            f"WITH d AS (DELETE FROM {self._sql.sessions} s WHERE {where}"
            f" RETURNING {self._sql.live_s} AS live) SELECT count(*) FILTER (WHERE live) FROM d"
        )
        async with self._conn("delete_by_prefix with prefix", prefix) as conn:
            return int(await conn.fetchval(sql, *args))

    @settled_write
    async def _fork(
        self, source: str, target: str, *, overwrite: bool = False, at: int | None = None
    ) -> State:
        asyncpg = _import_asyncpg()
        sql = self._sql.fork_overwrite if overwrite else self._sql.fork_new
        for attempt in range(5):
            now = utcnow()
            try:
                async with self._conn(f"fork {source!r} to", target) as conn:
                    async with conn.transaction():
                        src = await conn.fetchrow(self._sql.fork_source, source)
                        if src is None:
                            raise NotFoundError(f"fork source {source!r} does not exist")
                        user_id, tokens, cost, metadata, created, count, last_seq = src
                        if at is not None and at < count:  # a branch: the first ``at``
                            removed = await conn.fetch(
                                self._sql.fork_removed, source, last_seq - count + at, last_seq
                            )
                            dropped = unpack_messages([r[0] for r in removed], key=source)
                            tokens = max(tokens - sum(m.tokens or 0 for m in dropped), 0)
                            count = at
                        row = await conn.fetchrow(
                            sql,
                            source,
                            target,
                            user_id,
                            tokens,
                            cost,
                            metadata,
                            count,
                            created,
                            now,
                            src[6] - src[5],
                        )
                        if row is None:
                            raise ConflictError(f"fork target {target!r} exists already")
                    if self._maybe_purge_due():
                        await self._opportunistic_purge(conn)
            except StoreUnavailableError as exc:
                # Two forks in opposite directions can deadlock; PostgreSQL aborts one, and
                # its transaction rolled back whole, so it is safe to run it again.
                if isinstance(exc.__cause__, asyncpg.DeadlockDetectedError) and attempt < 4:
                    continue
                raise
            return State(
                conversation_id=target,
                user_id=user_id,
                messages=unpack_messages(row[1], key=target),
                token_count=tokens,
                total_cost=cost,
                metadata=unpack_any(metadata, key=target),
                created_at=created,
                updated_at=now,
                version=row[0],
            )
        raise AssertionError("unreachable")  # pragma: no cover

    # -- session facts, listing, branching ------------------------------------------------

    async def _count(self, key: str) -> int:
        touch = self._touch_on_read and self._sql.touching
        async with self._conn("count", key) as conn:
            count = await conn.fetchval(self._sql.count_touch if touch else self._sql.count, key)
        return 0 if count is None else check_count("PostgreSQL", key, "message_count", count)

    async def _get_metadata(self, key: str) -> dict[str, Any]:
        sql = self._sql
        touch = self._touch_on_read and sql.touching
        async with self._conn("get_metadata", key) as conn:
            row = await conn.fetchrow(sql.metadata_touch if touch else sql.metadata, key)
        if row is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return check_metadata("PostgreSQL", key, unpack_any(row[0], key=key))

    @settled_write
    async def _merge_metadata(
        self, key: str, updates: Mapping[str, Any], *, remove: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Merge in two statements that never read messages: the version and metadata, then a
        write conditional on that version (repeated when another write came in between)."""
        drop = list(remove)
        sql = self._sql
        while True:
            now = utcnow()
            async with self._conn("merge_metadata", key) as conn:
                row = await conn.fetchrow(sql.metadata_head, key)
                if row is None:
                    metadata = dict(updates)
                    version = await conn.fetchval(sql.metadata_new, key, pack(metadata), now)
                else:
                    metadata = {
                        **check_metadata("PostgreSQL", key, unpack_any(row[1], key=key)),
                        **updates,
                    }
                    for name in drop:
                        metadata.pop(name, None)
                    packed = pack(metadata) if metadata else _EMPTY_DICT
                    version = await conn.fetchval(sql.metadata_cas, key, packed, now, row[0])
                if version is None:
                    continue  # another writer came in between: read again
                if self._maybe_purge_due():
                    await self._opportunistic_purge(conn)
            return unpack_any(pack(metadata), key=key)  # type: ignore[no-any-return]

    @settled_write
    async def _truncate(self, key: str, keep: int) -> int:
        sql = self._sql
        while True:
            async with self._conn("truncate", key) as conn:
                row = await conn.fetchrow(sql.truncate_probe, key, keep)
                if row is None:
                    raise NotFoundError(f"no conversation state under key {key!r}")
                version, count, removed = row
                if count <= keep:
                    return int(count)
                dropped = unpack_messages(removed, key=key)
                tokens = sum(m.tokens or 0 for m in dropped)
                top = await conn.fetchval(
                    sql.truncate, key, keep, tokens, utcnow(), version, count - keep
                )
                if top is None:
                    continue  # another writer came in between: look again
            return keep

    @settled_write
    async def _pop_messages(self, key: str, count: int = 1) -> list[Message]:
        if not count:
            return []
        sql = self._sql
        while True:
            async with self._conn("pop from", key) as conn:
                row = await conn.fetchrow(sql.pop_probe, key, count)
                if row is None or not row[1]:
                    return []
                version, held, raw = row
                removed = unpack_messages(raw, key=key)
                tokens = sum(m.tokens or 0 for m in removed)
                top = await conn.fetchval(
                    sql.truncate, key, held - len(removed), tokens, utcnow(), version, len(removed)
                )
                if top is None:
                    continue  # another writer came in between: look again
            return removed

    async def _list_sessions(self, query: SessionQuery) -> list[SessionInfo]:
        sql, args = page_sql(self._sql.sessions, self._sql.live_s, query)
        async with self._conn("list_sessions with prefix", query.prefix) as conn:
            rows = await conn.fetch(sql, *args)
        return [
            checked_info(
                "PostgreSQL",
                key,
                user_id=user_id,
                message_count=count,
                token_count=tokens,
                total_cost=cost,
                metadata=unpack_any(metadata, key=key),
                created_at=created,
                updated_at=updated,
                version=version,
            )
            for key, user_id, version, tokens, cost, metadata, created, updated, count in rows
        ]

    # -- turn leases (promptstate.LeasingStore) ------------------------------------------------

    @settled_write
    async def _acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the turn lease on ``key`` for ``owner`` if it is free, expired or ``owner``'s.

        Leases live in ``<table_name>_leases`` with a server-clock expiry, so every process
        using the table sees the same leases; the pipeline uses them to run one turn of a
        session at a time across processes.
        """
        async with self._conn("take the lease on", key) as conn:
            return bool(await conn.fetchval(self._sql.lease_acquire, key, owner, float(ttl)))

    @settled_write
    async def _acquire_and_load(
        self, key: str, owner: str, ttl: float, *, last: int | None
    ) -> list[Message] | None:
        """Take the turn lease on ``key`` and read the newest ``last`` messages, in one
        statement (one round trip, where :meth:`acquire_lease` and :meth:`load` take two).

        A statement reads with the snapshot it started with, while taking the lease sees
        the newest lease row: a turn that took, wrote and released the lease after that
        snapshot would be missing from the read. So the lease is taken only when its row is
        still the one the snapshot shows (releasing marks the row instead of deleting it, so
        every turn changes it); otherwise the lease is reported busy (``None``) and the turn
        tries again after its backoff, with a new snapshot. With ``touch_on_read`` it is the
        two steps (a touch would lock the session row after the lease row, the reverse of
        a releasing append's order). The statement commits without waiting for the WAL flush:
        the turn's save, a synchronous commit, flushes it, and a lease lost in a crash before
        that makes the save store nothing.
        """
        sql = self._sql
        if self._touch_on_read and sql.touching:
            return await super()._acquire_and_load(key, owner, ttl, last=last)
        async with self._conn("take the lease on", key) as conn:
            if last is None:
                taken, data, _ = await conn.fetchrow(
                    sql.lease_acquire_load_all, key, owner, float(ttl)
                )
            else:
                taken, data, _ = await conn.fetchrow(
                    sql.lease_acquire_load_last, key, owner, float(ttl), last
                )
        if not taken:
            return None
        return unpack_messages(data if last is None else data[::-1], key=key)

    @settled_write
    async def _renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s live lease on ``key``; False when it expired or was taken."""
        async with self._conn("renew the lease on", key) as conn:
            return bool(await conn.fetchval(self._sql.lease_renew, key, owner, float(ttl)))

    @settled_write
    async def _release_lease(self, key: str, owner: str) -> bool:
        """Give ``owner``'s lease on ``key`` back (the row is marked free, not deleted);
        False when ``owner`` did not hold it."""
        async with self._conn("release the lease on", key) as conn:
            return bool(await conn.fetchval(self._sql.lease_release, key, owner))


async def _close_pool(pool: Any) -> None:
    """Close a pool gracefully, terminating it when that takes longer than 10 seconds."""
    try:
        await asyncio.wait_for(pool.close(), timeout=10.0)
    except (asyncio.TimeoutError, Exception):
        logger.warning("the PostgreSQL pool did not close in time; terminating it")
        pool.terminate()


class _Op:
    """``async with store._conn(...) as conn``: acquire, release, translate errors.

    A class rather than an ``asynccontextmanager``: it runs twice per chat turn, so it is kept
    to the fewest awaits and objects.
    """

    __slots__ = ("_conn", "_ensure_ready", "_key", "_pool", "_store", "_what")

    def __init__(
        self, store: PostgresStore, what: str, key: str | None, *, ensure_ready: bool
    ) -> None:
        self._store = store
        self._what = what
        self._key = key
        self._ensure_ready = ensure_ready
        self._pool: Any = None
        self._conn: Any = None

    def _describe(self) -> str:
        return self._what if self._key is None else f"{self._what} {self._key!r}"

    async def __aenter__(self) -> Any:
        store = self._store
        if self._ensure_ready and not store._ready:
            await store._start()
        opening = False
        try:
            pool = store._pool
            if pool is None:
                opening = True
                pool = await store._get_pool()
                opening = False
            timeout = store._acquire_timeout
            if timeout is None or _has_free_connection(pool):
                # A connection is free, so nothing to wait for (a reconnect is bounded by
                # connect_timeout).
                self._conn = await pool.acquire()
            elif _timeout_scope is not None:
                # asyncpg's own timeout is asyncio.wait_for, a task per call: under load,
                # when every call waits for a connection, that is most of the client's work.
                async with _timeout_scope(timeout):
                    self._conn = await pool.acquire()
            else:  # pragma: no cover - Python 3.10
                self._conn = await pool.acquire(timeout=timeout)
            self._pool = pool
        except BaseException as exc:
            self._translate(exc, acquiring=True, opening=opening)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, conn = self._pool, self._conn
        self._conn = None
        if exc is None:
            try:
                await pool.release(conn)
            except BaseException as error:
                self._translate(error)
            return
        # On the way out of a failure or a cancellation, anyio may cancel every await again:
        # release in the background, so the connection is neither lost nor terminated.
        await _release_shielded(pool, conn)
        self._translate(exc)

    def _translate(
        self, exc: BaseException, *, acquiring: bool = False, opening: bool = False
    ) -> NoReturn:
        """Raise the promptstate error for ``exc`` (chained): the one place where asyncpg,
        socket and pool errors of this store become promptstate errors.

        ``acquiring``: while waiting for a pool connection; ``opening``: while building the
        store's own pool from its DSN (a bad DSN or option is then a ValidationError, and the
        DSN's password is blanked out of every message, whatever the driver put in it).
        """
        if isinstance(exc, (PromptStateError, asyncio.CancelledError)) or not isinstance(
            exc, Exception
        ):
            raise exc
        store = self._store
        if _is_undefined_table(exc):
            store._ready = False
        what = "opening the connection pool" if opening else self._describe()
        try:
            _raise_for(exc, what, acquiring=acquiring, opening=opening, store=store)
        except PromptStateError as error:
            if opening:
                text = scrub(str(error), *url_secrets(store._dsn))
                if text != str(error):
                    raise type(error)(text) from exc
            raise


# -- helpers ----------------------------------------------------------------------------------


async def _release_shielded(pool: Any, conn: Any) -> None:
    """Give ``conn`` back to ``pool``, even when the caller is being cancelled.

    asyncpg terminates a connection whose release is interrupted, so a cancelled call would
    cost a reconnect; shielded, the release finishes in the background instead.
    """
    release = asyncio.ensure_future(pool.release(conn))
    try:
        await asyncio.shield(release)
    except asyncio.CancelledError:
        release.add_done_callback(_consume)
        raise


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("releasing a connection failed: %r", future.exception())


async def _shielded_connect(*args: Any, **kwargs: Any) -> Any:
    """The pool's ``connect`` hook: a connection attempt runs to its end even if the caller
    is cancelled (asyncpg leaves an unretrieved error behind when a TLS negotiation is cut
    short), and a connection nobody waits for any more is closed."""
    asyncpg = _import_asyncpg()
    attempt = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        attempt.add_done_callback(_close_orphan)
        raise


def _close_orphan(future: asyncio.Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    future.result().terminate()


def _has_free_connection(pool: Any) -> bool:
    """Whether ``pool.acquire()`` would not wait for another caller's release."""
    free = getattr(pool, "_queue", None)  # asyncpg's queue of free holders: O(1) to ask
    if free is not None and hasattr(free, "empty"):
        return not free.empty()
    return bool(pool.get_idle_size())  # pragma: no cover - other asyncpg versions


async def _no_reset(conn: Any) -> None:
    """The pool's reset hook: nothing to undo (see ``from_dsn``)."""


def _positive_or_none(value: object, name: str) -> float | None:
    if value is None:
        return None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not 0 < value < float("inf")
    ):
        raise ValidationError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return float(value)


def _check_dsn(dsn: object) -> None:
    if not isinstance(dsn, str):
        raise ValidationError(f"a PostgreSQL DSN must be a str, got {type(dsn).__name__}")
    scheme = dsn.split("://", 1)[0].lower() if "://" in dsn else ""
    if scheme in ("postgresql", "postgres"):
        try:
            parts = urlsplit(dsn)
            if "," not in parts.netloc:  # several hosts (h1:5432,h2:5432) are asyncpg's to parse
                parts.port  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            raise ValidationError(f"the DSN's port is not a number: {_redact(dsn)!r}") from exc
        return
    if scheme.startswith(("postgresql+", "postgres+")):
        fixed = "postgresql://" + dsn.split("://", 1)[1]
        raise ValidationError(
            f"{scheme}:// is SQLAlchemy's URL form; PostgresStore speaks asyncpg directly, so "
            f"write {_redact(fixed)!r} instead"
        )
    raise ValidationError(
        f"a PostgreSQL DSN starts with postgresql:// or postgres://, got {_redact(dsn)!r}"
    )


def _refuse_store_options_in(dsn: str) -> None:
    """asyncpg would send ``?table_name=x`` to the server as a setting and fail on connect."""
    if "://" not in dsn or "?" not in dsn:
        return
    names = {pair.split("=", 1)[0] for pair in urlsplit(dsn).query.split("&") if pair}
    ours = sorted(names & inspect.signature(PostgresStore.from_dsn).parameters.keys())
    if ours:
        raise ValidationError(
            f"{ours[0]!r} is a store option, not a DSN parameter: pass {ours[0]}=... to "
            "PostgresStore.from_dsn, or open the URL with open_store(), which reads store "
            f"options from the query string (in {_redact(dsn)!r})"
        )


def _check_user_id(user_id: object, key: str) -> str | None:
    if user_id is None:
        return None
    if not isinstance(user_id, str):
        raise ValidationError(f"user_id for key {key!r} must be a str or None")
    if "\x00" in user_id:
        raise ValidationError(f"user_id for key {key!r} contains a NUL character")
    try:
        user_id.encode()
    except UnicodeEncodeError as exc:
        raise ValidationError(f"user_id for key {key!r} is not valid Unicode text") from exc
    return user_id


def _check_cost(cost: object, key: str) -> float:
    if not isinstance(cost, (int, float)) or isinstance(cost, bool) or math.isnan(cost):
        raise ValidationError(f"total_cost for key {key!r} must be a number, got {cost!r}")
    return float(cost)


def _check_time(value: object, key: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"created_at for key {key!r} must be a datetime, got {value!r}")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)  # naive means UTC, as everywhere here
    return value.astimezone(timezone.utc)


def _from_asyncpg(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("asyncpg")


def _is_undefined_table(exc: BaseException) -> bool:
    return type(exc).__name__ == "UndefinedTableError" and _from_asyncpg(exc)


_UNAVAILABLE_NAMES = (
    "PostgresConnectionError",
    "InterfaceError",
    "InternalClientError",
    "OperatorInterventionError",
    "InsufficientResourcesError",
    "TransactionRollbackError",
    "ReadOnlySQLTransactionError",
    "PostgresSystemError",
)


def _raise_for(
    exc: Exception, what: str, *, acquiring: bool, opening: bool, store: PostgresStore
) -> NoReturn:
    """The mapping behind :meth:`_Op._translate` (``exc`` chained to what it raises)."""
    asyncpg = _import_asyncpg()
    name = type(exc).__name__
    waited = acquiring and not opening  # the pool's queue, not a connection attempt
    if waited and isinstance(exc, asyncio.TimeoutError) and not _from_asyncpg(exc):
        raise StoreUnavailableError(
            f"no PostgreSQL connection became free within {store._acquire_timeout} s ({what})"
        ) from exc
    if opening and isinstance(exc, (ValueError, TypeError, asyncpg.ClientConfigurationError)):
        raise ValidationError(
            f"the PostgreSQL DSN or a pool option is invalid: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        raise StoreUnavailableError(
            f"PostgreSQL is unreachable or did not answer in time ({what}): "
            f"{type(exc).__name__}: {_safe(exc)}"
        ) from exc
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "?")
        if str(state).startswith("28") or state == "42501":
            # 28xxx: the credentials were refused; 42501: this role may not use the table.
            # Not an outage: retrying cannot help.
            raise StoreAuthError(
                f"PostgreSQL refused the credentials or the permission ({what}): "
                f"SQLSTATE {state}: {exc}"
            ) from exc
        if name == "UndefinedTableError":
            raise StoreUnavailableError(
                f"a promptstate table is missing ({what}); it is recreated on next use: {exc}"
            ) from exc
        if name == "DuplicateTableError":
            raise ValidationError(
                f"a table promptstate wants to create exists already but was not created by "
                f"it; choose another table_name ({what}): {exc}"
            ) from exc
        if isinstance(exc, asyncpg.DataError) or str(state).startswith("22"):
            raise CorruptStateError(f"PostgreSQL refused the data ({what}): {exc}") from exc
        raise StoreUnavailableError(f"PostgreSQL failed ({what}): SQLSTATE {state}: {exc}") from exc
    for base in type(exc).__mro__:
        if base.__name__ in _UNAVAILABLE_NAMES and base.__module__.startswith("asyncpg"):
            raise StoreUnavailableError(
                f"PostgreSQL connection failed ({what}): {name}: {exc}"
            ) from exc
    if _from_asyncpg(exc):
        raise StoreUnavailableError(f"PostgreSQL driver error ({what}): {name}: {exc}") from exc
    raise exc


def _safe(exc: BaseException) -> str:
    """An exception's text, for messages: socket errors carry no credentials."""
    return str(exc)[:300]

"""SQLiteStore: conversation state in one SQLite file, with no server (stdlib ``sqlite3``).

Layout (the same ideas as :class:`~promptstate.PostgresStore`)::

    promptstate_sessions   one row per session: key (PRIMARY KEY), user_id, version,
                           token_count, total_cost, metadata (MessagePack), created_at,
                           updated_at, expires_at (Unix microseconds, NULL = never),
                           message_count
    promptstate_messages   one row per message: (session_key, seq) PRIMARY KEY, data
                           (MessagePack); seq counts from 0 within a session
    promptstate_migrations the numbered migrations applied to this file

    indexes on promptstate_sessions: (updated_at, key), (created_at, key), and both per
    user_id (migration 3), so a page of ``list_sessions`` is an index range read from a
    keyset cursor ``(time, key)``, never an OFFSET scan

So ``append`` inserts only the new rows and bumps the counters (cost follows the new
messages), ``load(last=n)`` reads ``n`` rows by a range of the primary key, prefix listing is
a range ``key >= prefix AND key < successor(prefix)`` on the primary key, and ``fork`` is
``INSERT ... SELECT`` inside one transaction.

Threads and connections: ``sqlite3`` blocks, so every call runs in a worker thread, queued
in a read lane and a write lane, with group commit for writes; a call that has started runs to
its end even when its caller is cancelled. That machinery is
:mod:`promptstate.stores._sqlite_executor`; this module holds the schema, the SQL and the
store's methods, each a function of one connection run inside one transaction.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from promptstate.exceptions import (
    ConflictError,
    CorruptStateError,
    NotFoundError,
    PromptStateError,
    StoreUnavailableError,
    ValidationError,
)
from promptstate.serialization import pack, unpack_any, unpack_message, unpack_messages
from promptstate.stores._sqlite_executor import Mode, SQLiteExecutor
from promptstate.stores.base import LeasingStore, SessionQuery
from promptstate.stores.integrity import (
    check_count,
    check_metadata,
    checked_info,
    checked_state,
    timestamp_from_us,
)
from promptstate.stores.turns import decide_turn
from promptstate.tokens import TokenCounter
from promptstate.types import Message, SessionInfo, State

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_EMPTY_DICT = pack({})
#: ``load(last=None)`` reads from ``message_count - _ALL``, i.e. from seq 0.
_ALL = 1 << 62
#: Rows per page when listing; each page is one short read transaction.
_PAGE = 200
#: A page of ``list_by_prefix`` ends once its states hold this many messages.
_PAGE_MESSAGES = 5_000
#: Expired sessions removed per opportunistic purge (keeps a write's extra work bounded).
_PURGE_BATCH = 256

# -- schema and migrations --------------------------------------------------------------------

#: Numbered migrations: (version, description, statements). Append only; never edit one.
_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "sessions and messages tables",
        (
            """CREATE TABLE promptstate_sessions (
                key           TEXT PRIMARY KEY NOT NULL,
                user_id       TEXT,
                version       INTEGER NOT NULL,
                token_count   INTEGER NOT NULL,
                total_cost    REAL NOT NULL,
                metadata      BLOB NOT NULL,
                created_at    INTEGER NOT NULL,
                updated_at    INTEGER NOT NULL,
                expires_at    INTEGER,
                message_count INTEGER NOT NULL
            )""",
            """CREATE INDEX promptstate_sessions_expires_at
                ON promptstate_sessions (expires_at) WHERE expires_at IS NOT NULL""",
            """CREATE TABLE promptstate_messages (
                session_key TEXT NOT NULL,
                seq         INTEGER NOT NULL,
                data        BLOB NOT NULL,
                PRIMARY KEY (session_key, seq)
            )""",
        ),
    ),
    (
        2,
        "turn leases shared by processes",
        (
            """CREATE TABLE promptstate_leases (
                key        TEXT PRIMARY KEY NOT NULL,
                owner      TEXT NOT NULL,
                expires_at INTEGER NOT NULL
            )""",
        ),
    ),
    (
        3,
        "session index: by updated and created time, per user",
        (
            """CREATE INDEX IF NOT EXISTS promptstate_sessions_updated
                ON promptstate_sessions (updated_at, key)""",
            """CREATE INDEX IF NOT EXISTS promptstate_sessions_created
                ON promptstate_sessions (created_at, key)""",
            """CREATE INDEX IF NOT EXISTS promptstate_sessions_user_updated
                ON promptstate_sessions (user_id, updated_at, key)""",
            """CREATE INDEX IF NOT EXISTS promptstate_sessions_user_created
                ON promptstate_sessions (user_id, created_at, key)""",
        ),
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_SESSION_COLUMNS = (
    "user_id, version, token_count, total_cost, metadata, created_at, updated_at, message_count"
)
_SQL_GET_SESSION = f"SELECT {_SESSION_COLUMNS} FROM promptstate_sessions WHERE key = ? AND {_LIVE}"
_SQL_MESSAGES = "SELECT data FROM promptstate_messages WHERE session_key = ? ORDER BY seq"
# Arguments: key, last, key, now. (Plain ``?`` placeholders: Python 3.12 deprecates numbered
# ``?1`` ones bound from a sequence, and 3.14 refuses them.)
_SQL_LOAD = (
    "SELECT data FROM promptstate_messages WHERE session_key = ? AND seq >= "
    "(SELECT message_count - ? FROM promptstate_sessions WHERE key = ? "
    "AND (expires_at IS NULL OR expires_at > ?)) ORDER BY seq"
)
_SQL_COUNT = f"SELECT message_count FROM promptstate_sessions WHERE key = ? AND {_LIVE}"
_SQL_HEAD = "SELECT version, expires_at, message_count FROM promptstate_sessions WHERE key = ?"
_SQL_TOUCH = f"UPDATE promptstate_sessions SET expires_at = ? WHERE key = ? AND {_LIVE}"
_SQL_INSERT_SESSION = (
    "INSERT INTO promptstate_sessions (key, user_id, version, token_count, total_cost, "
    "metadata, created_at, updated_at, expires_at, message_count) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_UPDATE_SESSION = (
    "UPDATE promptstate_sessions SET user_id = ?, version = ?, token_count = ?, "
    "total_cost = ?, metadata = ?, created_at = ?, updated_at = ?, expires_at = ?, "
    "message_count = ? WHERE key = ? AND version = ?"
)
_SQL_APPEND_SESSION = (
    "UPDATE promptstate_sessions SET version = version + 1, token_count = token_count + ?, "
    "total_cost = total_cost + ?, message_count = ?, updated_at = ?, expires_at = ? "
    "WHERE key = ?"
)
_SQL_MESSAGE_AT = "SELECT data FROM promptstate_messages WHERE session_key = ? AND seq = ?"
_SQL_SAVE_SESSION = (
    "UPDATE promptstate_sessions SET version = version + 1, token_count = ?, "
    "message_count = ?, updated_at = ?, expires_at = ? WHERE key = ?"
)
_SQL_INSERT_MESSAGE = "INSERT INTO promptstate_messages (session_key, seq, data) VALUES (?, ?, ?)"
_SQL_DELETE_SESSION = "DELETE FROM promptstate_sessions WHERE key = ?"
_SQL_DELETE_MESSAGES = "DELETE FROM promptstate_messages WHERE session_key = ?"
_SQL_FORK_SESSION = (
    "INSERT INTO promptstate_sessions (key, user_id, version, token_count, total_cost, "
    "metadata, created_at, updated_at, expires_at, message_count) "
    "SELECT ?, user_id, ?, token_count, total_cost, metadata, created_at, ?, ?, message_count "
    "FROM promptstate_sessions WHERE key = ?"
)
_SQL_FORK_MESSAGES = (
    "INSERT INTO promptstate_messages (session_key, seq, data) "
    "SELECT ?, seq, data FROM promptstate_messages WHERE session_key = ?"
)
_SQL_METADATA = f"SELECT metadata FROM promptstate_sessions WHERE key = ? AND {_LIVE}"
_SQL_SET_METADATA = (
    "UPDATE promptstate_sessions SET metadata = ?, version = version + 1, updated_at = ?, "
    "expires_at = ? WHERE key = ?"
)
_SQL_MESSAGES_FROM = (
    "SELECT data FROM promptstate_messages WHERE session_key = ? AND seq >= ? ORDER BY seq"
)
_SQL_TRUNCATE_MESSAGES = "DELETE FROM promptstate_messages WHERE session_key = ? AND seq >= ?"
_SQL_TRUNCATE_SESSION = (
    "UPDATE promptstate_sessions SET version = version + 1, "
    "token_count = max(token_count - ?, 0), message_count = ?, updated_at = ?, expires_at = ? "
    "WHERE key = ?"
)
_SQL_FORK_SOME_MESSAGES = (
    "INSERT INTO promptstate_messages (session_key, seq, data) "
    "SELECT ?, seq, data FROM promptstate_messages WHERE session_key = ? AND seq < ?"
)
_SQL_FORK_CUT = (
    "UPDATE promptstate_sessions SET message_count = ?, token_count = max(token_count - ?, 0) "
    "WHERE key = ?"
)
_SQL_EXPIRED = "SELECT key FROM promptstate_sessions WHERE expires_at <= ? LIMIT ?"
_SQL_LEASE_ACQUIRE = (
    "INSERT INTO promptstate_leases (key, owner, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
    "WHERE promptstate_leases.expires_at <= ? OR promptstate_leases.owner = excluded.owner"
)
_SQL_LEASE_RENEW = (
    "UPDATE promptstate_leases SET expires_at = ? WHERE key = ? AND owner = ? AND expires_at > ?"
)
_SQL_LEASE_RELEASE = "DELETE FROM promptstate_leases WHERE key = ? AND owner = ?"
_SQL_LEASE_RELEASE_LIVE = (
    "DELETE FROM promptstate_leases WHERE key = ? AND owner = ? AND expires_at > ?"
)


def _to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _MICROSECOND


def _now_us() -> int:
    return time.time_ns() // 1000


def _successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    SQLite compares TEXT with memcmp over UTF-8, which orders like code points, so this is
    ``prefix`` with its last character bumped by one (dropping trailing U+10FFFF). ``None``
    when no such string exists.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:  # surrogates cannot be encoded; skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def _prefix_range(prefix: str, column: str) -> tuple[str, tuple[str, ...]]:
    """A WHERE fragment selecting ``column`` values that start with ``prefix`` literally."""
    if not prefix:
        return "1", ()
    upper = _successor(prefix)
    if upper is None:
        return f"{column} >= ?", (prefix,)
    return f"{column} >= ? AND {column} < ?", (prefix, upper)


def _page_sql(query: SessionQuery) -> tuple[str, list[Any]]:
    """The SELECT of one page of ``list_sessions``, and its parameters but the last two (now,
    for the live check, and the limit). A keyset condition on ``(time, key)`` continues from
    the cursor; the ORDER BY matches an index, so SQLite reads the page and stops."""
    column = "created_at" if query.by_created else "updated_at"
    direction = "DESC" if query.descending else "ASC"
    conds: list[str] = []
    params: list[Any] = []
    if query.user_id is not None:
        conds.append("user_id = ?")
        params.append(query.user_id)
    where, args = _prefix_range(query.prefix, "key")
    conds.append(where)
    params += args
    if query.after is not None:
        conds.append(f"({column}, key) {'<' if query.descending else '>'} (?, ?)")
        params += [query.after[0], query.after[1]]
    conds.append(_LIVE)
    sql = (
        f"SELECT key, {_SESSION_COLUMNS} FROM promptstate_sessions "
        f"WHERE {' AND '.join(conds)} ORDER BY {column} {direction}, key {direction} LIMIT ?"
    )
    return sql, params


class SQLiteStore(LeasingStore):
    """Conversations in one SQLite file: persistent, no server, safe across processes.

    Args:
        path: The database file; it and its folder are created on first use.
        ttl: Session lifetime after its last write (``timedelta`` or seconds). Expired
            sessions are invisible to every read and are deleted opportunistically by writes
            and by :meth:`purge_expired`.
        touch_on_read: Restart the TTL on reads too (each such read is then a write).
        token_counter: Counter for ``State.token_count``.
        busy_timeout: Seconds to wait for another process's write lock before raising
            :class:`~promptstate.exceptions.StoreUnavailableError`.
        synchronous: SQLite's ``synchronous`` setting. ``"NORMAL"`` (the default, safe with WAL
            against application crashes; a power cut may lose the last commits) or ``"FULL"``
            (an fsync on every commit).
        max_readers: How many reads of this store may run at once (each holds one connection
            in a worker thread). Writes run one at a time per store.

    The file uses WAL mode, so reads proceed while a write is in progress. The schema is
    created by :meth:`setup`, which runs on first use (or on ``async with``) and is
    idempotent.

    Raises:
        ValidationError: ``path`` is empty or ``":memory:"`` (use
            :class:`~promptstate.MemoryStore`), or an option is out of range.
    """

    db_system = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: timedelta | float | None = None,
        touch_on_read: bool = False,
        token_counter: TokenCounter | None = None,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
        max_readers: int = 2,
    ) -> None:
        super().__init__(ttl=ttl, touch_on_read=touch_on_read, token_counter=token_counter)
        if not isinstance(path, (str, os.PathLike)):
            raise ValidationError(f"SQLiteStore path must be a str or path, got {path!r}")
        text = os.fspath(path)
        if not isinstance(text, str) or not text or text == ":memory:" or "\x00" in text:
            raise ValidationError(
                f"SQLiteStore needs a file path, got {text!r} (for an in-memory store use "
                "MemoryStore)"
            )
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, (int, float))
            or not (0 <= busy_timeout < float("inf"))
        ):
            raise ValidationError(f"busy_timeout must be seconds >= 0, got {busy_timeout!r}")
        sync = str(synchronous).upper()
        if sync not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValidationError(
                f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}"
            )
        if isinstance(max_readers, bool) or not isinstance(max_readers, int) or max_readers < 1:
            raise ValidationError(f"max_readers must be an int >= 1, got {max_readers!r}")
        self._path = str(Path(text).expanduser())
        self._busy_timeout = float(busy_timeout)
        self._executor = SQLiteExecutor(
            self._path,
            self._busy_timeout,
            sync,
            max_readers,
            prepare=self._setup_sync,
            after_writes=self._maybe_purge,
        )
        self._pool = self._executor.pool  # the executor's connections (tests reach in)
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r}, ttl={self._ttl!r})"

    @property
    def path(self) -> str:
        """The database file's path."""
        return self._path

    # -- lifecycle ------------------------------------------------------------------------

    async def setup(self) -> None:
        """Create the file, its folder and the schema, applying any missing migrations.

        Idempotent and safe to run from several processes at once; every other method runs it
        on first use, so calling it is only needed to fail early.
        """
        self._check_open()
        await self._run(lambda conn: None, "single", "set up the database")

    async def _open(self) -> None:
        await self.setup()

    async def exists(self) -> bool:
        """Whether the file is there and holds this store's tables; creates nothing."""
        self._check_open()
        path = self._path

        def check() -> bool:
            if not os.path.isfile(path):
                return False
            uri = Path(path).resolve().as_uri() + "?mode=ro"
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout)
            except sqlite3.Error:
                return False
            try:
                row = conn.execute(
                    "SELECT 1 FROM sqlite_master"
                    " WHERE type = 'table' AND name = 'promptstate_sessions'"
                ).fetchone()
            except sqlite3.DatabaseError:
                return False  # not a SQLite database at all
            finally:
                conn.close()
            return row is not None

        return await anyio.to_thread.run_sync(check)

    async def aclose(self) -> None:
        """Close the store's connections. Idempotent."""
        if not self._closed:
            await super().aclose()
            await anyio.to_thread.run_sync(self._executor.close)

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        """Switch the file to WAL mode (persistent, so usually it already is).

        The switch needs an exclusive lock and SQLite may refuse it at once with "database is
        locked" while another process sets up the same new file, without waiting on the busy
        timeout; so it is retried until the busy timeout runs out.
        """
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.005
        while mode != "wal":
            try:
                mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            break
        return mode

    def _setup_sync(self, conn: sqlite3.Connection) -> None:
        """Create the schema (the executor runs this once, on its first connection)."""
        mode = self._enable_wal(conn)
        if str(mode).lower() != "wal":
            logger.warning(
                "SQLite file %s could not use WAL mode (it is in %s mode); readers will "
                "wait for writers",
                self._path,
                mode,
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS promptstate_migrations ("
                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                "applied_at INTEGER NOT NULL)"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM promptstate_migrations")}
            newer = [v for v in applied if v > SCHEMA_VERSION]
            if newer:
                raise StoreUnavailableError(
                    f"SQLite database {self._path!r} has schema version {max(newer)}, "
                    f"newer than this release's {SCHEMA_VERSION}; upgrade promptstate"
                )
            for version, description, statements in _MIGRATIONS:
                if version in applied:
                    continue
                logger.info(
                    "applying SQLite migration %d (%s) to %s", version, description, self._path
                )
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO promptstate_migrations VALUES (?, ?, ?)",
                    (version, description, _now_us()),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- running calls in worker threads (stores/_sqlite_executor.py) ----------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], mode: Mode, what: str) -> _T:
        """Run ``fn`` in a worker thread; translate sqlite3 and OS errors at this boundary."""
        try:
            return await self._executor.run(fn, mode)
        except PromptStateError:
            raise
        except sqlite3.Error as error:
            raise self._translate(error, what) from error
        except OverflowError as error:
            raise ValidationError(
                f"a number is out of SQLite's 64-bit integer range ({what}): {error}"
            ) from error
        except OSError as error:
            raise StoreUnavailableError(
                f"SQLite database {self._path!r} cannot be opened ({what}): {error}"
            ) from error

    def _translate(self, exc: sqlite3.Error, what: str) -> PromptStateError:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in text or "busy" in text:
                return StoreUnavailableError(
                    f"SQLite database {self._path!r} stayed locked by another writer for "
                    f"longer than the busy timeout of {self._busy_timeout}s ({what}): {text}"
                )
            return StoreUnavailableError(
                f"SQLite database {self._path!r} is unavailable ({what}): {text}"
            )
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)) or (
            type(exc) is sqlite3.DatabaseError
        ):
            return CorruptStateError(
                f"SQLite file {self._path!r} is not a promptstate database or is corrupt "
                f"({what}): {text}"
            )
        return StoreUnavailableError(f"SQLite database {self._path!r} failed ({what}): {text}")

    # -- expiry ---------------------------------------------------------------------------

    def _expires(self, now: int) -> int | None:
        return None if self._ttl is None else now + int(self._ttl * 1_000_000)

    def _purge_batch(self, conn: sqlite3.Connection, now: int) -> int:
        # Leases of holders that died long ago (a live holder renews well before this).
        conn.execute("DELETE FROM promptstate_leases WHERE expires_at <= ?", (now - 3_600_000_000,))
        keys = [row[0] for row in conn.execute(_SQL_EXPIRED, (now, _PURGE_BATCH))]
        for key in keys:
            conn.execute(_SQL_DELETE_MESSAGES, (key,))
            conn.execute(_SQL_DELETE_SESSION, (key,))
        return len(keys)

    def _maybe_purge(self, conn: sqlite3.Connection) -> None:
        """After a write, now and then, delete one batch of expired sessions (own txn)."""
        if self._ttl is None:
            return
        clock = time.monotonic()
        if clock < self._next_purge:
            return
        self._next_purge = clock + min(max(self._ttl, 1.0), 60.0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = self._purge_batch(conn, _now_us())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:  # the caller's write is committed; purge another time
            logger.warning("purging expired sessions from %s failed: %s", self._path, exc)
            return
        if removed:
            logger.debug("purged %d expired sessions from %s", removed, self._path)

    async def purge_expired(self) -> int:
        """Delete every expired session now; return how many were deleted."""
        self._check_open()
        total = 0
        while True:
            removed = await self._run(
                lambda conn: self._purge_batch(conn, _now_us()), "write", "purge expired"
            )
            total += removed
            if removed < _PURGE_BATCH:
                return total

    # -- row helpers (worker thread) ------------------------------------------------------

    def _state_sync(
        self, conn: sqlite3.Connection, key: str, now: int, row: Any = None
    ) -> State | None:
        if row is None:
            row = conn.execute(_SQL_GET_SESSION, (key, now)).fetchone()
            if row is None:
                return None
        user_id, version, token_count, total_cost, metadata, created, updated, count = row
        data = [r[0] for r in conn.execute(_SQL_MESSAGES, (key,))]
        return checked_state(
            "SQLite",
            key,
            user_id=user_id,
            version=version,
            token_count=token_count,
            total_cost=total_cost,
            metadata=unpack_any(metadata, key=key),
            created_at=timestamp_from_us("SQLite", key, "created_at", created),
            updated_at=timestamp_from_us("SQLite", key, "updated_at", updated),
            messages=unpack_messages(data, key=key),
            message_count=count,
        )

    def _head_sync(self, conn: sqlite3.Connection, key: str, now: int) -> tuple[int, int] | None:
        """(version, message_count) of a live session; an expired one is deleted first."""
        row = conn.execute(_SQL_HEAD, (key,)).fetchone()
        if row is None:
            return None
        version, expires_at, count = row
        if expires_at is not None and expires_at <= now:
            conn.execute(_SQL_DELETE_MESSAGES, (key,))
            conn.execute(_SQL_DELETE_SESSION, (key,))
            return None
        return version, count

    def _touch(self, conn: sqlite3.Connection, key: str, now: int) -> None:
        conn.execute(_SQL_TOUCH, (self._expires(now), key, now))

    @property
    def _touching(self) -> bool:
        return self._touch_on_read and self._ttl is not None

    # -- the store interface --------------------------------------------------------------

    async def _get(self, key: str) -> State:
        def work(conn: sqlite3.Connection) -> State | None:
            now = _now_us()
            if self._touching:
                self._touch(conn, key, now)
            return self._state_sync(conn, key, now)

        state = await self._run(work, "write" if self._touching else "read", f"get {key!r}")
        if state is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return state

    async def _set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        if isinstance(state.total_cost, float) and math.isnan(state.total_cost):
            raise ValidationError(f"total_cost of key {key!r} is NaN; SQLite cannot store it")
        stored = self._prepare(key, state, 0)
        encoded = [pack(m) for m in stored.messages]
        metadata = pack(stored.metadata) if stored.metadata else _EMPTY_DICT
        created, updated = _to_us(stored.created_at), _to_us(stored.updated_at)

        def work(conn: sqlite3.Connection) -> None:
            now = _now_us()
            head = self._head_sync(conn, key, now)
            current = 0 if head is None else head[0]
            if expected_version is not None and expected_version != current:
                raise ConflictError(
                    f"version conflict on key {key!r}: expected {expected_version}, "
                    f"stored {current}"
                )
            values = (
                stored.user_id,
                current + 1,
                stored.token_count,
                stored.total_cost,
                metadata,
                created,
                updated,
                self._expires(now),
                len(encoded),
            )
            if head is None:
                conn.execute(_SQL_INSERT_SESSION, (key, *values))
            else:
                conn.execute(_SQL_DELETE_MESSAGES, (key,))
                # Conditional on the version read above (we hold the write lock, so it holds).
                if conn.execute(_SQL_UPDATE_SESSION, (*values, key, current)).rowcount != 1:
                    raise ConflictError(f"version conflict on key {key!r}")
            conn.executemany(_SQL_INSERT_MESSAGE, [(key, i, d) for i, d in enumerate(encoded)])
            stored.version = current + 1

        await self._run(work, "write", f"set {key!r}")
        return stored

    async def _delete(self, key: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_SQL_HEAD, (key,)).fetchone()
            if row is None:
                return False
            conn.execute(_SQL_DELETE_MESSAGES, (key,))
            conn.execute(_SQL_DELETE_SESSION, (key,))
            return row[1] is None or row[1] > _now_us()

        return await self._run(work, "write", f"delete {key!r}")

    async def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        where, args = _prefix_range(prefix, "key")
        sql = (
            f"SELECT key FROM promptstate_sessions WHERE {where} AND key > ? AND {_LIVE} "
            f"ORDER BY key LIMIT {_PAGE}"
        )

        def page_of(conn: sqlite3.Connection, after: str) -> list[str]:
            return [row[0] for row in conn.execute(sql, (*args, after, _now_us()))]

        after = ""
        while True:
            page = await self._run(
                functools.partial(page_of, after=after), "single", f"list keys of {prefix!r}"
            )
            for key in page:
                yield key
            if len(page) < _PAGE:
                return
            after = page[-1]

    async def _load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        if last == 0 and not self._touching:
            return []

        def work(conn: sqlite3.Connection) -> list[Message]:
            now = _now_us()
            if self._touching:
                self._touch(conn, session_id, now)
            if last == 0:
                return []
            args = (session_id, _ALL if last is None else min(last, _ALL), session_id, now)
            return unpack_messages([r[0] for r in conn.execute(_SQL_LOAD, args)], key=session_id)

        mode: Mode = "write" if self._touching else "single"
        return await self._run(work, mode, f"load {session_id!r}")

    async def _append(self, session_id: str, messages: Sequence[Message]) -> int:
        if not messages:
            row = await self._run(
                lambda conn: conn.execute(_SQL_COUNT, (session_id, _now_us())).fetchone(),
                "single",
                f"count messages of {session_id!r}",
            )
            return 0 if row is None else int(row[0])
        counted, tokens = self._count_new(messages)
        encoded = [pack(m) for m in counted]

        def work(conn: sqlite3.Connection) -> int:
            now = _now_us()
            head = self._head_sync(conn, session_id, now)
            return self._append_sync(conn, session_id, head, encoded, tokens, 0.0, now)

        return await self._run(work, "write", f"append to {session_id!r}")

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
        """Append one turn in one transaction; see :meth:`Store.append_turn`.

        With ``release_lease`` the same transaction checks that this owner holds the
        session's live turn lease (else :class:`~promptstate.exceptions.LeaseLostError`, nothing
        written, unless the turn is stored already) and deletes it.
        """
        counted, tokens = self._count_new(messages)
        encoded = [pack(m) for m in counted]
        size = len(encoded)

        def work(conn: sqlite3.Connection) -> int:
            now = _now_us()
            held = release_lease is not None and (
                conn.execute(_SQL_LEASE_RELEASE_LIVE, (session_id, release_lease, now)).rowcount
                == 1
            )
            head = self._head_sync(conn, session_id, now)
            count = 0 if head is None else head[1]
            start = None
            if turn_id is not None and size and count >= size:
                # Where a retried turn would start: one row read by the primary key.
                row = conn.execute(_SQL_MESSAGE_AT, (session_id, count - size)).fetchone()
                if row is not None:
                    start = unpack_message(row[0], key=session_id)
            if decide_turn(
                session_id,
                count=count,
                size=size,
                start=start,
                turn_id=turn_id,
                expected_count=expected_count,
                lease_held=None if release_lease is None else held,
            ):
                return self._append_sync(conn, session_id, head, encoded, tokens, cost, now)
            return count

        return await self._run(work, "write", f"append a turn to {session_id!r}")

    def _append_sync(
        self,
        conn: sqlite3.Connection,
        key: str,
        head: tuple[int, int] | None,
        encoded: list[bytes],
        tokens: int,
        cost: float,
        now: int,
    ) -> int:
        """Insert the new rows and bump the session's counters; cost follows ``encoded``."""
        start = 0 if head is None else head[1]
        total = start + len(encoded)
        expires = self._expires(now)
        if head is None:
            values = (None, 1, tokens, float(cost), _EMPTY_DICT, now, now, expires, total)
            conn.execute(_SQL_INSERT_SESSION, (key, *values))
        else:
            conn.execute(_SQL_APPEND_SESSION, (tokens, float(cost), total, now, expires, key))
        conn.executemany(
            _SQL_INSERT_MESSAGE, [(key, start + i, data) for i, data in enumerate(encoded)]
        )
        return total

    async def _save(self, session_id: str, messages: Sequence[Message]) -> None:
        counted, tokens = self._count_new(messages)
        encoded = [pack(m) for m in counted]

        def work(conn: sqlite3.Connection) -> None:
            now = _now_us()
            expires = self._expires(now)
            if self._head_sync(conn, session_id, now) is None:
                values = (None, 1, tokens, 0.0, _EMPTY_DICT, now, now, expires, len(encoded))
                conn.execute(_SQL_INSERT_SESSION, (session_id, *values))
            else:
                conn.execute(_SQL_DELETE_MESSAGES, (session_id,))
                conn.execute(_SQL_SAVE_SESSION, (tokens, len(encoded), now, expires, session_id))
            conn.executemany(
                _SQL_INSERT_MESSAGE, [(session_id, i, data) for i, data in enumerate(encoded)]
            )

        await self._run(work, "write", f"save {session_id!r}")

    async def _fork(
        self, source: str, target: str, *, overwrite: bool = False, at: int | None = None
    ) -> State:
        def work(conn: sqlite3.Connection) -> State:
            now = _now_us()
            if self._touching:
                self._touch(conn, source, now)
            head = self._head_sync(conn, source, now)
            if head is None:
                raise NotFoundError(f"fork source {source!r} does not exist")
            existing = self._head_sync(conn, target, now)
            if existing is not None:
                if not overwrite:
                    raise ConflictError(f"fork target {target!r} exists already")
                conn.execute(_SQL_DELETE_MESSAGES, (target,))
                conn.execute(_SQL_DELETE_SESSION, (target,))
            version = (0 if existing is None else existing[0]) + 1
            conn.execute(_SQL_FORK_SESSION, (target, version, now, self._expires(now), source))
            if at is None or at >= head[1]:
                conn.execute(_SQL_FORK_MESSAGES, (target, source))
            else:  # a branch: the first ``at`` messages, and their tokens
                removed = [r[0] for r in conn.execute(_SQL_MESSAGES_FROM, (source, at))]
                tokens = sum(m.tokens or 0 for m in unpack_messages(removed, key=source))
                conn.execute(_SQL_FORK_SOME_MESSAGES, (target, source, at))
                conn.execute(_SQL_FORK_CUT, (at, tokens, target))
            forked = self._state_sync(conn, target, now)
            assert forked is not None
            return forked

        return await self._run(work, "write", f"fork {source!r} to {target!r}")

    # -- session facts, listing, branching ------------------------------------------------

    async def _count(self, key: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            now = _now_us()
            if self._touching:
                self._touch(conn, key, now)
            row = conn.execute(_SQL_COUNT, (key, now)).fetchone()
            return 0 if row is None else check_count("SQLite", key, "message_count", row[0])

        return await self._run(work, "write" if self._touching else "single", f"count {key!r}")

    async def _get_metadata(self, key: str) -> dict[str, Any]:
        def work(conn: sqlite3.Connection) -> tuple[object] | None:
            now = _now_us()
            if self._touching:
                self._touch(conn, key, now)
            row: tuple[object] | None = conn.execute(_SQL_METADATA, (key, now)).fetchone()
            return row

        mode: Mode = "write" if self._touching else "single"
        data = await self._run(work, mode, f"get metadata of {key!r}")
        if data is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return check_metadata("SQLite", key, unpack_any(data[0], key=key))

    async def _merge_metadata(
        self, key: str, updates: Mapping[str, Any], *, remove: Iterable[str] = ()
    ) -> dict[str, Any]:
        drop = list(remove)

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            now = _now_us()
            expires = self._expires(now)
            if self._head_sync(conn, key, now) is None:
                metadata = dict(updates)
                values = (None, 1, 0, 0.0, pack(metadata), now, now, expires, 0)
                conn.execute(_SQL_INSERT_SESSION, (key, *values))
                return metadata
            (raw,) = conn.execute(_SQL_METADATA, (key, now)).fetchone()
            metadata = {**check_metadata("SQLite", key, unpack_any(raw, key=key)), **updates}
            for name in drop:
                metadata.pop(name, None)
            packed = pack(metadata) if metadata else _EMPTY_DICT
            conn.execute(_SQL_SET_METADATA, (packed, now, expires, key))
            return metadata

        merged = await self._run(work, "write", f"merge metadata of {key!r}")
        return unpack_any(pack(merged), key=key)  # type: ignore[no-any-return]

    async def _truncate(self, key: str, keep: int) -> int:
        def work(conn: sqlite3.Connection) -> int | None:
            now = _now_us()
            head = self._head_sync(conn, key, now)
            if head is None:
                return None
            count = head[1]
            if count <= keep:
                return count
            removed = [r[0] for r in conn.execute(_SQL_MESSAGES_FROM, (key, keep))]
            tokens = sum(m.tokens or 0 for m in unpack_messages(removed, key=key))
            conn.execute(_SQL_TRUNCATE_MESSAGES, (key, keep))
            conn.execute(_SQL_TRUNCATE_SESSION, (tokens, keep, now, self._expires(now), key))
            return keep

        count = await self._run(work, "write", f"truncate {key!r}")
        if count is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return count

    async def _pop_messages(self, key: str, count: int = 1) -> list[Message]:
        if not count:
            return []

        def work(conn: sqlite3.Connection) -> list[Message]:
            now = _now_us()
            head = self._head_sync(conn, key, now)
            if head is None or not head[1]:
                return []
            keep = max(head[1] - count, 0)
            raw = [r[0] for r in conn.execute(_SQL_MESSAGES_FROM, (key, keep))]
            removed = unpack_messages(raw, key=key)
            tokens = sum(m.tokens or 0 for m in removed)
            conn.execute(_SQL_TRUNCATE_MESSAGES, (key, keep))
            conn.execute(_SQL_TRUNCATE_SESSION, (tokens, keep, now, self._expires(now), key))
            return removed

        return await self._run(work, "write", f"pop from {key!r}")

    async def _list_sessions(self, query: SessionQuery) -> list[SessionInfo]:
        sql, params = _page_sql(query)

        def work(conn: sqlite3.Connection) -> list[SessionInfo]:
            bound = (*params, _now_us(), query.limit + 1)
            return [
                checked_info(
                    "SQLite",
                    key,
                    user_id=user_id,
                    message_count=count,
                    token_count=token_count,
                    total_cost=total_cost,
                    metadata=unpack_any(metadata, key=key),
                    created_at=timestamp_from_us("SQLite", key, "created_at", created),
                    updated_at=timestamp_from_us("SQLite", key, "updated_at", updated),
                    version=version,
                )
                for (
                    key,
                    user_id,
                    version,
                    token_count,
                    total_cost,
                    metadata,
                    created,
                    updated,
                    count,
                ) in conn.execute(sql, bound)
            ]

        return await self._run(work, "read", f"list sessions with prefix {query.prefix!r}")

    async def _list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        where, args = _prefix_range(prefix, "key")
        sql = (
            f"SELECT {_SESSION_COLUMNS}, key FROM promptstate_sessions "
            f"WHERE {where} AND key > ? AND {_LIVE} ORDER BY key LIMIT {_PAGE}"
        )
        touching = self._touching

        def page_of(conn: sqlite3.Connection, after: str) -> tuple[list[State], str | None]:
            now = _now_us()
            rows = conn.execute(sql, (*args, after, now)).fetchall()
            states = []
            messages = 0
            for row in rows:
                if touching:
                    self._touch(conn, row[-1], now)
                state = self._state_sync(conn, row[-1], now, row[:-1])
                assert state is not None
                states.append(state)
                messages += len(state.messages)
                if messages >= _PAGE_MESSAGES:  # bound the memory a page holds
                    return states, row[-1]
            return states, (rows[-1][-1] if len(rows) == _PAGE else None)

        after: str | None = ""
        while after is not None:
            states, after = await self._run(
                functools.partial(page_of, after=after),
                "write" if touching else "read",
                f"list states with prefix {prefix!r}",
            )
            for state in states:
                yield state

    async def _delete_by_prefix(self, prefix: str) -> int:
        where, args = _prefix_range(prefix, "key")
        where_messages, _ = _prefix_range(prefix, "session_key")

        def work(conn: sqlite3.Connection) -> int:
            (live,) = conn.execute(
                f"SELECT count(*) FROM promptstate_sessions WHERE {where} AND {_LIVE}",
                (*args, _now_us()),
            ).fetchone()
            conn.execute(f"DELETE FROM promptstate_messages WHERE {where_messages}", args)
            conn.execute(f"DELETE FROM promptstate_sessions WHERE {where}", args)
            return int(live)

        return await self._run(work, "write", f"delete prefix {prefix!r}")

    async def _get_many(self, keys: Iterable[str]) -> list[State | None]:
        wanted = list(keys)
        if not wanted:
            return []

        def work(conn: sqlite3.Connection) -> list[State | None]:
            now = _now_us()
            found: list[State | None] = []
            for key in wanted:  # a repeated key gets its own copy: no shared mutable State
                if self._touching:
                    self._touch(conn, key, now)
                found.append(self._state_sync(conn, key, now))
            return found

        return await self._run(work, "write" if self._touching else "read", "get_many")

    # -- turn leases (promptstate.LeasingStore) ------------------------------------------------

    async def _acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the turn lease on ``key`` for ``owner`` if it is free, expired or ``owner``'s.

        Leases live in ``promptstate_leases`` (wall-clock expiry, so every process sharing
        the file agrees); they keep pipelines in different processes from interleaving turns.
        """

        def work(conn: sqlite3.Connection) -> bool:
            now = _now_us()
            args = (key, owner, now + int(ttl * 1_000_000), now)
            return bool(conn.execute(_SQL_LEASE_ACQUIRE, args).rowcount == 1)

        return await self._run(work, "write", f"take the lease on {key!r}")

    async def _acquire_and_load(
        self, key: str, owner: str, ttl: float, *, last: int | None
    ) -> list[Message] | None:
        """Take the turn lease on ``key`` and read the newest ``last`` messages, in one
        transaction (one trip to a worker thread); ``None`` when another owner holds it."""

        def work(conn: sqlite3.Connection) -> list[Message] | None:
            now = _now_us()
            args = (key, owner, now + int(ttl * 1_000_000), now)
            if conn.execute(_SQL_LEASE_ACQUIRE, args).rowcount != 1:
                return None
            if self._touching:
                self._touch(conn, key, now)
            if last == 0:
                return []
            found = (key, _ALL if last is None else min(last, _ALL), key, now)
            return unpack_messages([r[0] for r in conn.execute(_SQL_LOAD, found)], key=key)

        return await self._run(work, "write", f"take the lease on {key!r}")

    async def _renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s live lease on ``key``; False when it expired or was taken."""

        def work(conn: sqlite3.Connection) -> bool:
            now = _now_us()
            args = (now + int(ttl * 1_000_000), key, owner, now)
            return bool(conn.execute(_SQL_LEASE_RENEW, args).rowcount == 1)

        return await self._run(work, "write", f"renew the lease on {key!r}")

    async def _release_lease(self, key: str, owner: str) -> bool:
        """Delete the lease on ``key`` if ``owner`` holds it."""

        def work(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(_SQL_LEASE_RELEASE, (key, owner)).rowcount == 1)

        return await self._run(work, "write", f"release the lease on {key!r}")

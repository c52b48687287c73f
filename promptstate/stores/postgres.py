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
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import re
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
    LeaseLostError,
    NotFoundError,
    PromptStateError,
    StoreAuthError,
    StoreUnavailableError,
    ValidationError,
)
from promptstate.redaction import redact as _redact
from promptstate.serialization import pack, unpack_any, unpack_messages
from promptstate.settle import settled_write
from promptstate.stores.base import TURN_ID_KEY, LeasingStore, SessionQuery
from promptstate.stores.integrity import check_count, check_metadata, checked_info, checked_state
from promptstate.tokens import TokenCounter
from promptstate.types import Message, SessionInfo, State, utcnow

__all__ = ["MIGRATIONS", "PostgresStore"]

logger = logging.getLogger(__name__)

_PAGE = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_PURGE_BATCH = 1000
_EMPTY_DICT = pack({})
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
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


# -- migrations -------------------------------------------------------------------------------

#: The numbered schema migrations, applied in order by :meth:`PostgresStore.setup`. Each is
#: ``(version, name, statements)``; the statements are format strings over the quoted names
#: (``{t}`` sessions table, ``{m}`` messages table, ``{l}`` leases table, ``{p}`` the bare name
#: for constraint and index names). Every statement runs inside one transaction: nothing here
#: may need to run outside one (no ``CREATE INDEX CONCURRENTLY``, no ``VACUUM``).
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "sessions and messages tables",
        (
            """CREATE TABLE {t} (
                key text COLLATE "C" NOT NULL,
                user_id text,
                version bigint NOT NULL,
                token_count bigint NOT NULL,
                total_cost double precision NOT NULL,
                metadata bytea NOT NULL,
                message_count bigint NOT NULL,
                last_seq bigint NOT NULL,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                expires_at timestamptz,
                CONSTRAINT "{p}_pkey" PRIMARY KEY (key)
            )""",
            """CREATE TABLE {m} (
                session_key text COLLATE "C" NOT NULL,
                seq bigint NOT NULL,
                data bytea NOT NULL,
                CONSTRAINT "{p}_msg_pkey" PRIMARY KEY (session_key, seq),
                CONSTRAINT "{p}_msg_fkey" FOREIGN KEY (session_key)
                    REFERENCES {t} (key) ON DELETE CASCADE
            )""",
            'CREATE INDEX "{p}_expires_idx" ON {t} (expires_at) WHERE expires_at IS NOT NULL',
        ),
    ),
    (
        2,
        "turn leases shared by processes",
        (
            """CREATE TABLE {l} (
                key text COLLATE "C" NOT NULL,
                owner text NOT NULL,
                expires_at timestamptz NOT NULL,
                CONSTRAINT "{p}_lease_pkey" PRIMARY KEY (key)
            )""",
        ),
    ),
    (
        3,
        "session index: by updated and created time, per user",
        # Built inside the migration's transaction, which blocks writes to the table while it
        # runs. On a big table, build them first with CREATE INDEX CONCURRENTLY under these
        # names (docs: PostgreSQL): IF NOT EXISTS then leaves them be.
        (
            'CREATE INDEX IF NOT EXISTS "{p}_upd_idx" ON {t} (updated_at, key)',
            'CREATE INDEX IF NOT EXISTS "{p}_crt_idx" ON {t} (created_at, key)',
            'CREATE INDEX IF NOT EXISTS "{p}_uupd_idx" ON {t} (user_id, updated_at, key)',
            'CREATE INDEX IF NOT EXISTS "{p}_ucrt_idx" ON {t} (user_id, created_at, key)',
        ),
    ),
)


class _Names:
    """The quoted names of one store's tables, from a validated ``table_name``."""

    def __init__(self, table_name: object) -> None:
        if not isinstance(table_name, str):
            raise ValidationError(f"table_name must be a str, got {type(table_name).__name__}")
        schema, dot, table = table_name.rpartition(".")
        if not _TABLE_RE.fullmatch(table) or (dot and not _SCHEMA_RE.fullmatch(schema)):
            raise ValidationError(
                "table_name must be a letter or underscore followed by up to 47 letters, digits "
                "or underscores, optionally after 'schema.'; got "
                f"{table_name[:80]!r}"
            )
        q = f'"{schema}".' if schema else ""
        self.name = table_name
        self.bare = table
        self.sessions = f'{q}"{table}"'
        self.messages = f'{q}"{table}_messages"'
        self.migrations = f'{q}"{table}_migrations"'
        self.leases = f'{q}"{table}_leases"'
        digest = hashlib.blake2b(f"promptstate:{table_name}".encode(), digest_size=8).digest()
        self.lock_id = int.from_bytes(digest, "big", signed=True)


def _live(alias: str) -> str:
    return f"({alias}.expires_at IS NULL OR {alias}.expires_at > now())"


class _SQL:
    """Every statement of one store, built once from its table names and TTL."""

    def __init__(self, names: _Names, ttl: float | None) -> None:
        t, m = names.sessions, names.messages
        exp = "NULL::timestamptz" if ttl is None else f"now() + make_interval(secs => {ttl!r})"
        live_s = _live("s")
        head = (
            "s.user_id, s.version, s.token_count, s.total_cost, s.metadata,"
            " s.created_at, s.updated_at"
        )
        msgs = (
            f"ARRAY(SELECT m.data FROM {m} m WHERE m.session_key = s.key"
            f" AND m.seq > s.last_seq - s.message_count ORDER BY m.seq)"
        )
        touch = f"UPDATE {t} s SET expires_at = {exp} WHERE {live_s} AND s.key"
        self.touching = ttl is not None

        self.get = (
            f"SELECT {head}, {msgs}, s.message_count FROM {t} s WHERE s.key = $1 AND {live_s}"
        )
        self.get_touch = f"WITH touch AS ({touch} = $1) {self.get}"
        self.get_many = (
            f"SELECT s.key, {head}, {msgs}, s.message_count FROM {t} s"
            f" WHERE s.key = ANY($1::text[]) AND {live_s}"
        )
        self.get_many_touch = f"WITH touch AS ({touch} = ANY($1::text[])) {self.get_many}"

        bound = f"(SELECT s.last_seq - s.message_count FROM {t} s WHERE s.key = $1 AND {live_s})"
        self.load_all = (
            f"SELECT m.data FROM {m} m WHERE m.session_key = $1 AND m.seq > {bound} ORDER BY m.seq"
        )
        self.load_last = (
            f"SELECT m.data FROM {m} m WHERE m.session_key = $1 AND m.seq > {bound}"
            " ORDER BY m.seq DESC LIMIT $2"
        )
        self.load_all_touch = f"WITH touch AS ({touch} = $1) {self.load_all}"
        self.load_last_touch = f"WITH touch AS ({touch} = $1) {self.load_last}"
        self.count = f"SELECT s.message_count FROM {t} s WHERE s.key = $1 AND {live_s}"
        self.version = f"SELECT s.version FROM {t} s WHERE s.key = $1 AND {live_s}"

        cols = (
            "key, user_id, version, token_count, total_cost, metadata, message_count, last_seq,"
            " created_at, updated_at, expires_at"
        )
        # The old messages (below the new live range) go in the same statement; rows a
        # concurrent writer committed after this statement's snapshot are below the range too
        # and are removed by a later write.
        gc = f"gc AS (DELETE FROM {m} m USING up WHERE m.session_key = $1 AND m.seq <= up.low)"
        ins = (
            f"ins AS (INSERT INTO {m} (session_key, seq, data)"
            " SELECT $1, up.first + o.i, o.d"
            " FROM up, unnest($2::bytea[]) WITH ORDINALITY AS o(d, i))"
        )
        returning = (
            "RETURNING s.version, s.message_count, s.last_seq - s.message_count AS low,"
            " s.last_seq - $3::bigint AS first"
        )

        def if_live(expr: str, otherwise: str) -> str:
            return f"CASE WHEN {live_s} THEN {expr} ELSE {otherwise} END"

        # append: $1 key, $2 messages, $3 how many, $4 their tokens, $5 now, $6 cost to add
        self.append = (
            f"WITH up AS (INSERT INTO {t} AS s ({cols}) VALUES"
            f" ($1, NULL, 1, $4::bigint, $6::float8, '\\x80'::bytea, $3::bigint, $3::bigint,"
            f" $5::timestamptz, $5::timestamptz, {exp})"
            " ON CONFLICT (key) DO UPDATE SET"
            f" version = {if_live('s.version + 1', '1')},"
            f" user_id = {if_live('s.user_id', 'NULL')},"
            f" token_count = {if_live('s.token_count', '0')} + EXCLUDED.token_count,"
            f" total_cost = {if_live('s.total_cost', '0')} + EXCLUDED.total_cost,"
            f" metadata = {if_live('s.metadata', 'EXCLUDED.metadata')},"
            f" message_count = {if_live('s.message_count', '0')} + EXCLUDED.message_count,"
            " last_seq = s.last_seq + EXCLUDED.message_count,"
            f" created_at = {if_live('s.created_at', 'EXCLUDED.created_at')},"
            " updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at"
            f" {returning}), {gc}, {ins} SELECT message_count FROM up"
        )
        # save: like append, but the messages replace the old ones
        self.save = (
            f"WITH up AS (INSERT INTO {t} AS s ({cols}) VALUES"
            f" ($1, NULL, 1, $4::bigint, 0, '\\x80'::bytea, $3::bigint, $3::bigint,"
            f" $5::timestamptz, $5::timestamptz, {exp})"
            " ON CONFLICT (key) DO UPDATE SET"
            f" version = {if_live('s.version + 1', '1')},"
            f" user_id = {if_live('s.user_id', 'NULL')},"
            " token_count = EXCLUDED.token_count,"
            f" total_cost = {if_live('s.total_cost', '0')},"
            f" metadata = {if_live('s.metadata', 'EXCLUDED.metadata')},"
            " message_count = EXCLUDED.message_count,"
            " last_seq = s.last_seq + EXCLUDED.message_count,"
            f" created_at = {if_live('s.created_at', 'EXCLUDED.created_at')},"
            " updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at"
            f" {returning}), {gc}, {ins} SELECT version FROM up"
        )
        # set: $1 key, $2 messages, $3 how many, $4 tokens, $5 updated_at, $6 user_id,
        # $7 total_cost, $8 metadata, $9 created_at, [$10 expected version]
        values = (
            "($1, $6::text, 1, $4::bigint, $7::float8, $8::bytea, $3::bigint, $3::bigint,"
            f" $9::timestamptz, $5::timestamptz, {exp})"
        )
        replace_all = (
            " user_id = EXCLUDED.user_id, token_count = EXCLUDED.token_count,"
            " total_cost = EXCLUDED.total_cost, metadata = EXCLUDED.metadata,"
            " message_count = EXCLUDED.message_count,"
            " last_seq = s.last_seq + EXCLUDED.message_count,"
            " created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,"
            " expires_at = EXCLUDED.expires_at"
        )
        upsert = (
            f"INSERT INTO {t} AS s ({cols}) VALUES {values} ON CONFLICT (key) DO UPDATE SET"
            f" version = {if_live('s.version + 1', '1')},{replace_all}"
        )
        self.set_any = f"WITH up AS ({upsert} {returning}), {gc}, {ins} SELECT version FROM up"
        self.set_new = (
            f"WITH up AS ({upsert} WHERE NOT {live_s} {returning}), {gc}, {ins}"
            " SELECT version FROM up"
        )
        self.set_cas = (
            f"WITH up AS (UPDATE {t} s SET version = s.version + 1,"
            " user_id = $6::text, token_count = $4::bigint, total_cost = $7::float8,"
            " metadata = $8::bytea, message_count = $3::bigint,"
            " last_seq = s.last_seq + $3::bigint, created_at = $9::timestamptz,"
            f" updated_at = $5::timestamptz, expires_at = {exp}"
            f" WHERE s.key = $1 AND {live_s} AND s.version = $10::bigint {returning}),"
            f" {gc}, {ins} SELECT version FROM up"
        )
        # append_turn, step 1: the count, version and the message where a retried turn
        # would start ($2: the turn's length); step 2: append if the version is unchanged.
        self.turn_probe = (
            "SELECT s.message_count, s.version, (SELECT m.data FROM"
            f" {m} m WHERE m.session_key = s.key AND s.message_count >= $2::bigint"
            " AND m.seq = s.last_seq - $2::bigint + 1)"
            f" FROM {t} s WHERE s.key = $1 AND {live_s}"
        )
        self.turn_cas = (
            f"WITH up AS (UPDATE {t} s SET version = s.version + 1,"
            " token_count = s.token_count + $4::bigint, total_cost = s.total_cost + $6::float8,"
            " message_count = s.message_count + $3::bigint, last_seq = s.last_seq + $3::bigint,"
            f" updated_at = $5::timestamptz, expires_at = {exp}"
            f" WHERE s.key = $1 AND {live_s} AND s.version = $7::bigint {returning}),"
            f" {gc}, {ins} SELECT message_count FROM up"
        )
        self.turn_new = (
            f"WITH up AS (INSERT INTO {t} AS s ({cols}) VALUES"
            f" ($1, NULL, 1, $4::bigint, $6::float8, '\\x80'::bytea, $3::bigint, $3::bigint,"
            f" $5::timestamptz, $5::timestamptz, {exp})"
            f" ON CONFLICT (key) DO UPDATE SET version = 1,{replace_all}"
            f" WHERE NOT {live_s} {returning}), {gc}, {ins} SELECT message_count FROM up"
        )
        self.delete = f"DELETE FROM {t} s WHERE s.key = $1 RETURNING {live_s}"

        # fork, in one transaction: lock the source, then copy it in one statement.
        self.fork_source = (
            "SELECT s.user_id, s.token_count, s.total_cost, s.metadata, s.created_at,"
            f" s.message_count, s.last_seq FROM {t} s WHERE s.key = $1 AND {live_s} FOR SHARE"
        )
        # $1 source, $2 target, $3 user_id, $4 tokens, $5 cost, $6 metadata, $7 count,
        # $8 created_at, $9 updated_at, $10 source's first live seq - 1
        fork_values = (
            "($2, $3::text, 1, $4::bigint, $5::float8, $6::bytea, $7::bigint, $7::bigint,"
            f" $8::timestamptz, $9::timestamptz, {exp})"
        )
        fork_upsert = (
            f"INSERT INTO {t} AS s ({cols}) VALUES {fork_values} ON CONFLICT (key) DO UPDATE SET"
            f" version = {if_live('s.version + 1', '1')},{replace_all}"
        )
        fork_rest = (
            f" RETURNING s.version, s.last_seq - s.message_count AS first),"
            f" gc AS (DELETE FROM {m} m USING up WHERE m.session_key = $2 AND m.seq <= up.first),"
            f" ins AS (INSERT INTO {m} (session_key, seq, data)"
            f" SELECT $2, up.first + (c.seq - $10::bigint), c.data FROM up, {m} c"
            " WHERE c.session_key = $1 AND c.seq > $10::bigint"
            " AND c.seq <= $10::bigint + $7::bigint RETURNING seq, data)"
            " SELECT up.version, ARRAY(SELECT data FROM ins ORDER BY seq) FROM up"
        )
        self.fork_overwrite = f"WITH up AS ({fork_upsert}{fork_rest}"
        self.fork_new = f"WITH up AS ({fork_upsert} WHERE NOT {live_s}{fork_rest}"

        # -- session facts ----------------------------------------------------------------
        self.metadata = f"SELECT s.metadata FROM {t} s WHERE s.key = $1 AND {live_s}"
        self.metadata_touch = f"WITH touch AS ({touch} = $1) {self.metadata}"
        self.count_touch = f"WITH touch AS ({touch} = $1) {self.count}"
        self.metadata_head = (
            f"SELECT s.version, s.metadata FROM {t} s WHERE s.key = $1 AND {live_s}"
        )
        # $1 key, $2 metadata, $3 now, [$4 version]
        self.metadata_cas = (
            f"UPDATE {t} s SET metadata = $2::bytea, version = s.version + 1,"
            f" updated_at = $3::timestamptz, expires_at = {exp}"
            f" WHERE s.key = $1 AND {live_s} AND s.version = $4::bigint RETURNING s.version"
        )
        self.metadata_new = (
            f"WITH up AS (INSERT INTO {t} AS s ({cols}) VALUES"
            f" ($1, NULL, 1, 0, 0, $2::bytea, 0, 0, $3::timestamptz, $3::timestamptz, {exp})"
            " ON CONFLICT (key) DO UPDATE SET version = 1, user_id = NULL, token_count = 0,"
            " total_cost = 0, metadata = EXCLUDED.metadata, message_count = 0,"
            " created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,"
            f" expires_at = EXCLUDED.expires_at WHERE NOT {live_s}"
            " RETURNING s.version, s.last_seq AS low),"
            f" gc AS (DELETE FROM {m} m USING up WHERE m.session_key = $1 AND m.seq <= up.low)"
            " SELECT version FROM up"
        )
        # truncate: $1 key, $2 keep -> version, count, the messages beyond the first $2
        self.truncate_probe = (
            "SELECT s.version, s.message_count, ARRAY(SELECT m.data FROM"
            f" {m} m WHERE m.session_key = s.key"
            " AND m.seq > s.last_seq - s.message_count + $2::bigint AND m.seq <= s.last_seq)"
            f" FROM {t} s WHERE s.key = $1 AND {live_s}"
        )
        # pop: $1 key, $2 how many -> version, count, the newest $2 messages, oldest first
        self.pop_probe = (
            "SELECT s.version, s.message_count, ARRAY(SELECT m.data FROM"
            f" {m} m WHERE m.session_key = s.key"
            " AND m.seq > s.last_seq - least($2::bigint, s.message_count)"
            " AND m.seq <= s.last_seq ORDER BY m.seq)"
            f" FROM {t} s WHERE s.key = $1 AND {live_s}"
        )
        # $1 key, $2 keep, $3 their tokens removed, $4 now, $5 version, $6 how many removed
        self.truncate = (
            f"WITH up AS (UPDATE {t} s SET version = s.version + 1, message_count = $2::bigint,"
            " token_count = greatest(s.token_count - $3::bigint, 0),"
            " last_seq = s.last_seq - $6::bigint,"
            f" updated_at = $4::timestamptz, expires_at = {exp}"
            f" WHERE s.key = $1 AND {live_s} AND s.version = $5::bigint"
            " RETURNING s.last_seq AS top),"
            f" gc AS (DELETE FROM {m} m USING up WHERE m.session_key = $1 AND m.seq > up.top)"
            " SELECT top FROM up"
        )
        self.fork_removed = (
            f"SELECT m.data FROM {m} m WHERE m.session_key = $1 AND m.seq > $2::bigint"
            " AND m.seq <= $3::bigint"
        )

        self.purge = (
            f"WITH d AS (DELETE FROM {t} WHERE key IN (SELECT key FROM {t}"
            f" WHERE expires_at <= now() LIMIT {_PURGE_BATCH} FOR UPDATE SKIP LOCKED)"
            " RETURNING 1) SELECT count(*) FROM d"
        )
        lease = names.leases
        until = "now() + make_interval(secs => $3::float8)"
        self.lease_acquire = (
            f"INSERT INTO {lease} AS l (key, owner, expires_at) VALUES ($1, $2, {until})"
            " ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner,"
            " expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() RETURNING true"
        )
        self.lease_renew = (
            f"UPDATE {lease} SET expires_at = {until}"
            " WHERE key = $1 AND owner = $2 AND expires_at > now() RETURNING true"
        )
        self.lease_release = f"DELETE FROM {lease} WHERE key = $1 AND owner = $2 RETURNING true"
        self.lease_purge = f"DELETE FROM {lease} WHERE expires_at <= now() - interval '1 hour'"
        # append_turn with release_lease: the probe also says whether owner $3 holds the live
        # lease; the write deletes the lease in the same statement, only when it wrote.
        self.turn_probe_lease = (
            "SELECT p.message_count, p.version, p.start, EXISTS(SELECT 1 FROM"
            f" {lease} l WHERE l.key = $1 AND l.owner = $3 AND l.expires_at > now())"
            " FROM (SELECT 1) AS one LEFT JOIN (SELECT s.message_count, s.version,"
            f" (SELECT m.data FROM {m} m WHERE m.session_key = s.key"
            " AND s.message_count >= $2::bigint AND m.seq = s.last_seq - $2::bigint + 1)"
            f" AS start FROM {t} s WHERE s.key = $1 AND {live_s}) AS p ON true"
        )

        def releasing(sql: str, owner: str) -> str:
            tail = " SELECT message_count FROM up"
            assert sql.endswith(tail)
            return (
                f"{sql[: -len(tail)]}, rel AS (DELETE FROM {lease} l USING up"
                f" WHERE l.key = $1 AND l.owner = {owner}){tail}"
            )

        self.turn_cas_release = releasing(self.turn_cas, "$8")
        self.turn_new_release = releasing(self.turn_new, "$7")
        self.sessions, self.messages_table, self.exp = t, m, exp
        self.head, self.msgs, self.live_s = head, msgs, live_s


def _like_escape(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _prefix_end(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix`` (code point
    order, which is the byte order of COLLATE "C" on UTF-8); ``None`` when there is none."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _range(prefix: str, after: str | None, first: int) -> tuple[str, list[Any]]:
    """A WHERE fragment selecting keys that start with ``prefix`` (after ``after``), served by
    the primary key index, with parameters numbered from ``$first``."""
    conds: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${first + len(args) - 1}"

    if prefix:
        conds.append(f"s.key >= {arg(prefix)}")
        end = _prefix_end(prefix)
        if end is not None:
            conds.append(f"s.key < {arg(end)}")
        conds.append(f"s.key LIKE {arg(_like_escape(prefix) + '%')} ESCAPE '\\'")
    if after is not None:
        conds.append(f"s.key > {arg(after)}")
    return (" AND ".join(conds) or "TRUE"), args


def _page_sql(sessions: str, live: str, query: SessionQuery) -> tuple[str, list[Any]]:
    """One page of ``list_sessions``: a keyset condition on ``(time, key)`` from the cursor and
    an ORDER BY that an index of migration 3 serves, so PostgreSQL reads the page and stops."""
    column = "s.created_at" if query.by_created else "s.updated_at"
    direction = "DESC" if query.descending else "ASC"
    conds: list[str] = []
    args: list[Any] = []
    if query.user_id is not None:
        args.append(query.user_id)
        conds.append("s.user_id = $1")
    where, prefix_args = _range(query.prefix, None, len(args) + 1)
    conds.append(where)
    args += prefix_args
    if query.after is not None:
        micros, key = query.after
        args += [_EPOCH + timedelta(microseconds=micros), key]
        n = len(args)
        op = "<" if query.descending else ">"
        conds.append(f"({column}, s.key) {op} (${n - 1}::timestamptz, ${n}::text)")
    conds.append(live)
    args.append(query.limit + 1)
    sql = (
        "SELECT s.key, s.user_id, s.version, s.token_count, s.total_cost, s.metadata,"
        f" s.created_at, s.updated_at, s.message_count FROM {sessions} s"
        f" WHERE {' AND '.join(conds)} ORDER BY {column} {direction}, s.key {direction}"
        f" LIMIT ${len(args)}"
    )
    return sql, args


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
        self._names = _Names(table_name)
        self._sql = _SQL(self._names, self._ttl)
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
                try:
                    pool = await asyncpg.create_pool(self._dsn, **self._pool_options)
                except BaseException as exc:
                    _reraise_opening(exc, self._dsn)
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
        names = self._names
        applied: list[int] = []
        async with self._connection("setup") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", names.lock_id)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {names.migrations} ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in await conn.fetch(f"SELECT version FROM {names.migrations}")}
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    await conn.execute(
                        statement.format(
                            t=names.sessions, m=names.messages, l=names.leases, p=names.bare
                        )
                    )
                await conn.execute(
                    f"INSERT INTO {names.migrations} (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
                applied.append(version)
                logger.info("applied migration %d (%s) to table %s", version, name, names.name)
            newer = sorted(done - {v for v, _, _ in MIGRATIONS})
            if newer:
                logger.warning(
                    "table %s has migrations %s that this release does not know",
                    names.name,
                    newer,
                )
        return applied

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

    def _unavailable_timeout(self, what: str, exc: BaseException) -> NoReturn:
        raise StoreUnavailableError(
            f"no PostgreSQL connection became free within {self._acquire_timeout} s ({what})"
        ) from exc

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
                if removed < _PURGE_BATCH:
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

    async def get(self, key: str) -> State:
        sql = self._sql.get_touch if self._touch_on_read and self._sql.touching else self._sql.get
        async with self._conn("get", key) as conn:
            row = await conn.fetchrow(sql, key)
        if row is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return self._state(key, row)

    async def get_many(self, keys: Iterable[str]) -> list[State | None]:
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

    async def load(self, session_id: str, *, last: int | None = None) -> list[Message]:
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

    async def list_keys(self, prefix: str) -> AsyncIterator[str]:
        after: str | None = None
        while True:
            where, args = _range(prefix, after, 1)
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

    async def list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        sql = self._sql
        after: str | None = None
        while True:
            where, args = _range(prefix, after, 1)
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
    async def append(self, session_id: str, messages: Sequence[Message]) -> int:
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
        """Append one turn and add ``cost``, in one statement; see :meth:`Store.append_turn`.

        Without ``turn_id`` and ``expected_count`` this is one round trip, like
        :meth:`append`. With them it is two: a read of the count, the version and the one
        message where a retried turn would start, then an append conditional on the version
        (repeated if another writer came in between). Neither grows with the history.

        With ``release_lease`` the first read also checks that this owner holds the live
        turn lease (else :class:`~promptstate.exceptions.LeaseLostError`, nothing written, unless
        the turn is stored already), and the append deletes the lease in the same statement.
        """
        sql = self._sql
        if release_lease is not None:
            return await self._append_turn_release(
                session_id, messages, cost, turn_id, expected_count, release_lease
            )
        if turn_id is None and expected_count is None:
            if not messages:
                return await self.append(session_id, messages)
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
        while True:
            async with self._conn("append_turn to", session_id) as conn:
                row = await conn.fetchrow(sql.turn_probe, session_id, len(encoded))
                count, version, start = (0, 0, None) if row is None else row
                if (
                    turn_id is not None
                    and encoded
                    and start is not None
                    and unpack_messages([start], key=session_id)[0].metadata.get(TURN_ID_KEY)
                    == turn_id
                ):
                    return int(count)
                if expected_count is not None and expected_count != count:
                    raise ConflictError(
                        f"session {session_id!r} holds {count} messages, expected {expected_count}"
                    )
                if not encoded:
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
        while True:
            async with self._conn("append_turn to", session_id) as conn:
                row = await conn.fetchrow(sql.turn_probe_lease, session_id, len(encoded), owner)
                count, version, start, held = row
                count, version = count or 0, version or 0
                if (
                    turn_id is not None
                    and encoded
                    and start is not None
                    and unpack_messages([start], key=session_id)[0].metadata.get(TURN_ID_KEY)
                    == turn_id
                ):
                    if held:  # a retried turn whose first try was stored: release now
                        await conn.fetchval(sql.lease_release, session_id, owner)
                    return int(count)
                if not held:
                    raise LeaseLostError(
                        f"the lease on session {session_id!r} is not held by this turn: "
                        "nothing stored"
                    )
                if expected_count is not None and expected_count != count:
                    raise ConflictError(
                        f"session {session_id!r} holds {count} messages, expected {expected_count}"
                    )
                if not encoded:
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
    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
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
    async def set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
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
    async def delete(self, key: str) -> bool:
        async with self._conn("delete", key) as conn:
            live = await conn.fetchval(self._sql.delete, key)
        return bool(live)

    @settled_write
    async def delete_by_prefix(self, prefix: str) -> int:
        where, args = _range(prefix, None, 1)
        sql = (
            f"WITH d AS (DELETE FROM {self._sql.sessions} s WHERE {where}"
            f" RETURNING {self._sql.live_s} AS live) SELECT count(*) FILTER (WHERE live) FROM d"
        )
        async with self._conn("delete_by_prefix with prefix", prefix) as conn:
            return int(await conn.fetchval(sql, *args))

    @settled_write
    async def fork(
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

    async def count(self, key: str) -> int:
        touch = self._touch_on_read and self._sql.touching
        async with self._conn("count", key) as conn:
            count = await conn.fetchval(self._sql.count_touch if touch else self._sql.count, key)
        return 0 if count is None else check_count("PostgreSQL", key, "message_count", count)

    async def get_metadata(self, key: str) -> dict[str, Any]:
        sql = self._sql
        touch = self._touch_on_read and sql.touching
        async with self._conn("get_metadata", key) as conn:
            row = await conn.fetchrow(sql.metadata_touch if touch else sql.metadata, key)
        if row is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return check_metadata("PostgreSQL", key, unpack_any(row[0], key=key))

    @settled_write
    async def merge_metadata(
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
    async def truncate(self, key: str, keep: int) -> int:
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
    async def pop_messages(self, key: str, count: int = 1) -> list[Message]:
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
        sql, args = _page_sql(self._sql.sessions, self._sql.live_s, query)
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

    # -- turn leases (promptstate.locks.SupportsLease) ------------------------------------

    @settled_write
    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the turn lease on ``key`` for ``owner`` if it is free or expired.

        Leases live in ``<table_name>_leases`` with a server-clock expiry, so every process
        using the table sees the same leases; the pipeline uses them to run one turn of a
        session at a time across processes.
        """
        self._check_open()
        async with self._conn("take the lease on", key) as conn:
            return bool(await conn.fetchval(self._sql.lease_acquire, key, owner, float(ttl)))

    @settled_write
    async def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s live lease on ``key``; False when it expired or was taken."""
        self._check_open()
        async with self._conn("renew the lease on", key) as conn:
            return bool(await conn.fetchval(self._sql.lease_renew, key, owner, float(ttl)))

    @settled_write
    async def release_lease(self, key: str, owner: str) -> bool:
        """Drop ``owner``'s lease on ``key``; False when ``owner`` did not hold it."""
        self._check_open()
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
        try:
            pool = store._pool
            if pool is None:
                pool = await store._get_pool()
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
            self._translate(exc, acquiring=True)
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

    def _translate(self, exc: BaseException, *, acquiring: bool = False) -> NoReturn:
        if isinstance(exc, (PromptStateError, asyncio.CancelledError)) or not isinstance(
            exc, Exception
        ):
            raise exc
        store = self._store
        if _is_undefined_table(exc):
            store._ready = False
        if acquiring and isinstance(exc, asyncio.TimeoutError) and not _from_asyncpg(exc):
            store._unavailable_timeout(self._describe(), exc)
        _reraise(exc, self._describe())


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


def _reraise(exc: BaseException, what: str) -> NoReturn:
    """Raise the promptstate error for a driver or socket error (``exc`` chained)."""
    if not isinstance(exc, Exception):
        raise exc
    asyncpg = _import_asyncpg()
    name = type(exc).__name__
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


def _reraise_opening(exc: BaseException, dsn: str) -> NoReturn:
    """Translate an error from building the pool; a bad DSN or option is a ValidationError.

    The DSN's password is blanked out of the message, whatever the driver put in it.
    """
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None

    def scrub(text: str) -> str:
        return text.replace(password, "***") if password else text

    asyncpg = _import_asyncpg()
    if isinstance(exc, (ValueError, TypeError, asyncpg.ClientConfigurationError)):
        raise ValidationError(
            scrub(f"the PostgreSQL DSN or a pool option is invalid: {type(exc).__name__}: {exc}")
        ) from exc
    try:
        _reraise(exc, "opening the connection pool")
    except PromptStateError as error:
        if password and password in str(error):
            raise type(error)(scrub(str(error))) from exc
        raise


def _safe(exc: BaseException) -> str:
    """An exception's text, for messages: socket errors carry no credentials."""
    return str(exc)[:300]

"""The SQL of :class:`~promptstate.PostgresStore`: validated table names and every statement.

:class:`SQL` builds each statement once per store, from its quoted table names and TTL, so an
operation sends a fixed text that asyncpg prepares once per connection. The builders below it
make the statements whose shape depends on the call (a key prefix range, a page of
``list_sessions``). Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from promptstate.exceptions import ValidationError
from promptstate.stores.base import SessionQuery

__all__ = [
    "Names",
    "PURGE_BATCH",
    "SQL",
    "key_range",
    "page_sql",
]

#: Expired sessions deleted per purge statement.
PURGE_BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class Names:
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


class SQL:
    """Every statement of one store, built once from its table names and TTL."""

    def __init__(self, names: Names, ttl: float | None) -> None:
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
            f" WHERE expires_at <= now() LIMIT {PURGE_BATCH} FOR UPDATE SKIP LOCKED)"
            " RETURNING 1) SELECT count(*) FROM d"
        )
        lease = names.leases
        until = "now() + make_interval(secs => $3::float8)"
        self.lease_acquire = (
            f"INSERT INTO {lease} AS l (key, owner, expires_at) VALUES ($1, $2, {until})"
            " ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner,"
            " expires_at = EXCLUDED.expires_at"
            " WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner RETURNING true"
        )
        self.lease_renew = (
            f"UPDATE {lease} SET expires_at = {until}"
            " WHERE key = $1 AND owner = $2 AND expires_at > now() RETURNING true"
        )
        # Releasing marks the lease row free (no owner, expired now) instead of deleting it,
        # so that every acquire and every release changes the row: acquire_and_load reads in
        # the same statement as it takes the lease, and takes it only when the row is still
        # the one its snapshot saw (see PostgresStore.acquire_and_load). Released rows go with
        # lease_purge, an hour later.
        self.lease_release = (
            f"UPDATE {lease} SET owner = '', expires_at = now()"
            " WHERE key = $1 AND owner = $2 RETURNING true"
        )
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

        release_if_up = (
            f"rel AS (UPDATE {lease} l SET owner = '', expires_at = now() FROM up"
            " WHERE l.key = $1 AND l.owner = {owner})"
        )

        def releasing(sql: str, owner: str) -> str:
            tail = " SELECT message_count FROM up"
            assert sql.endswith(tail)
            return f"{sql[: -len(tail)]}, {release_if_up.format(owner=owner)}{tail}"

        self.turn_cas_release = releasing(self.turn_cas, "$8")
        self.turn_new_release = releasing(self.turn_new, "$7")

        # append_turn(release_lease=) in one statement when it can: turn_probe_lease's probe
        # and, when the lease is held, the probed version still stored, the turn's id not at
        # the position where it would start and the count as expected, turn_cas_release's
        # write. Otherwise it writes nothing and the probe's values decide, as before.
        # $1 key, $2 messages, $3 how many, $4 their tokens, $5 now, $6 cost, $7 owner,
        # $8 the turn id as it is encoded in a message's metadata (NULL: none),
        # $9 the expected count (-1: any) -> the new count (NULL: not written), and the
        # probe: count, version, the message at the turn's start, whether the lease is held
        def turn_fast(marker: str, expected: str, owner: str | None) -> str:
            probe = (
                "WITH p AS (SELECT s.message_count, s.version, (SELECT m.data FROM"
                f" {m} m WHERE m.session_key = s.key AND s.message_count >= $3::bigint"
                " AND m.seq = s.last_seq - $3::bigint + 1) AS start"
                f" FROM {t} s WHERE s.key = $1 AND {live_s}),"
            )
            if owner is not None:
                probe += (
                    f" h AS (SELECT EXISTS(SELECT 1 FROM {lease} l WHERE l.key = $1"
                    f" AND l.owner = {owner} AND l.expires_at > now()) AS held),"
                )
            write = (
                f" up AS (UPDATE {t} s SET version = s.version + 1,"
                " token_count = s.token_count + $4::bigint,"
                " total_cost = s.total_cost + $6::float8,"
                " message_count = s.message_count + $3::bigint,"
                f" last_seq = s.last_seq + $3::bigint, updated_at = $5::timestamptz,"
                f" expires_at = {exp} FROM p{', h' if owner else ''}"
                f" WHERE s.key = $1 AND {live_s} AND s.version = p.version"
                f"{' AND h.held' if owner else ''}"
                f" AND ({expected}::bigint < 0 OR p.message_count = {expected}::bigint)"
                f" AND ({marker}::bytea IS NULL OR p.start IS NULL"
                f" OR position({marker}::bytea IN p.start) = 0) {returning}), {gc}, {ins}"
            )
            if owner is None:
                return (
                    f"{probe}{write} SELECT (SELECT message_count FROM up), p.message_count,"
                    " p.version, p.start FROM (SELECT 1) AS one LEFT JOIN p ON true"
                )
            return (
                f"{probe}{write}, {release_if_up.format(owner=owner)}"
                " SELECT (SELECT message_count FROM up), p.message_count, p.version, p.start,"
                " h.held FROM h LEFT JOIN p ON true"
            )

        self.turn_release_fast = turn_fast("$8", "$9", "$7")
        # The same without a lease (append_turn with a turn id or an expected count):
        # $7 the turn id as encoded (NULL: none), $8 the expected count (-1: any)
        # -> the new count (NULL: not written), count, version, the message at the start.
        self.turn_fast = turn_fast("$7", "$8", None)
        # acquire_and_load: take the lease and read the window in one statement. ``seen`` is
        # the lease row as this statement's snapshot has it; the lease is taken only if that
        # snapshot shows no live lease and the row is still the one it shows (the update's
        # WHERE sees the latest row): a turn that took and released the lease after the
        # snapshot changed the row, and its messages would be missing from the read, so the
        # lease is then reported busy and the caller tries again with a new snapshot.
        # $1 key, $2 owner, $3 ttl, [$4 last] -> taken, the messages (newest first with $4)
        took = (
            f"WITH seen AS (SELECT l.owner, l.expires_at FROM {lease} l WHERE l.key = $1),"
            f" took AS (INSERT INTO {lease} AS l (key, owner, expires_at)"
            f" SELECT $1, $2, {until}"
            " WHERE NOT EXISTS (SELECT 1 FROM seen WHERE seen.expires_at > now()"
            " AND seen.owner <> $2)"
            " ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner,"
            " expires_at = EXCLUDED.expires_at"
            " WHERE (l.expires_at <= now() OR l.owner = EXCLUDED.owner) AND EXISTS"
            " (SELECT 1 FROM seen WHERE seen.owner = l.owner"
            " AND seen.expires_at = l.expires_at) RETURNING true)"
            " SELECT EXISTS (SELECT 1 FROM took), ARRAY(SELECT m.data FROM"
            f" {m} m WHERE EXISTS (SELECT 1 FROM took) AND m.session_key = $1"
            f" AND m.seq > {bound} ORDER BY m.seq"
        )
        # The statement's own commit does not wait for the WAL flush (set_config(..., true)
        # lasts until the end of this statement's transaction). Safe for a lease: the turn's
        # save commits synchronously later, which flushes everything before it, this too; if
        # the server crashes first, the lease may be gone after the restart, and the save then
        # finds it not held and stores nothing (LeaseLostError).
        fast_commit = ", set_config('synchronous_commit', 'off', true)"
        self.lease_acquire_load_all = f"{took}){fast_commit}"
        self.lease_acquire_load_last = f"{took} DESC LIMIT $4){fast_commit}"
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


def key_range(prefix: str, after: str | None, first: int) -> tuple[str, list[Any]]:
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


def page_sql(sessions: str, live: str, query: SessionQuery) -> tuple[str, list[Any]]:
    """One page of ``list_sessions``: a keyset condition on ``(time, key)`` from the cursor and
    an ORDER BY that an index of migration 3 serves, so PostgreSQL reads the page and stops."""
    column = "s.created_at" if query.by_created else "s.updated_at"
    direction = "DESC" if query.descending else "ASC"
    conds: list[str] = []
    args: list[Any] = []
    if query.user_id is not None:
        args.append(query.user_id)
        conds.append("s.user_id = $1")
    where, prefix_args = key_range(query.prefix, None, len(args) + 1)
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

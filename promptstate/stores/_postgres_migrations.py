"""The numbered schema migrations of :class:`~promptstate.PostgresStore` and how they run.

``MIGRATIONS`` is append only: a released migration is never edited. :func:`apply_migrations`
applies the missing ones inside the caller's transaction, under an advisory lock on the table
name, and records each in ``<table_name>_migrations``; so ``setup()`` is idempotent and safe
when several processes run it at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptstate.stores._postgres_sql import Names

__all__ = ["MIGRATIONS", "apply_migrations"]

logger = logging.getLogger(__name__)

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


async def apply_migrations(conn: Any, names: Names) -> list[int]:
    """Apply the migrations ``conn`` lacks, inside its open transaction; return their versions.

    Takes the transaction-scoped advisory lock of ``names`` first, so concurrent callers run
    one after another and the later ones find nothing left to do.
    """
    applied: list[int] = []
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
                statement.format(t=names.sessions, m=names.messages, l=names.leases, p=names.bare)
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

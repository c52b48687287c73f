"""Reaching the shared Redis and PostgreSQL servers, measuring what a run stored, cleaning up.

Everything a run writes lives under its own Redis key prefix (``psbench:<token>:``) or its own
PostgreSQL schemas (``psbench_<token>_*``), and is removed by :func:`cleanup` at the end. The
servers themselves are never flushed or reconfigured.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


async def redis_reason(url: str) -> str | None:
    """``None`` when a Redis server answers at ``url``, else why not."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return "redis-py is not installed (pip install 'promptstate[redis]')"
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        await client.ping()
    except Exception as exc:  # any failure means: not usable here
        return f"no Redis answers at {_host(url)}: {type(exc).__name__}"
    finally:
        await client.aclose()
    return None


async def postgres_reason(dsn: str) -> str | None:
    """``None`` when a PostgreSQL server answers at ``dsn``, else why not."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'promptstate[postgres]')"
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except Exception as exc:
        return f"no PostgreSQL answers at {_host(dsn)}: {type(exc).__name__}"
    await conn.close()
    return None


def _host(url: str) -> str:
    """``host:port/db`` of a URL, without user or password."""
    rest = url.split("://", 1)[-1]
    return rest.rsplit("@", 1)[-1].split("?", 1)[0]


async def create_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()


async def drop_schemas(dsn: str, like: str) -> int:
    """Drop every schema whose name starts with ``like`` (a run's own token)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        names = [
            r["nspname"]
            for r in await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)", like
            )
        ]
        for name in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        return len(names)
    finally:
        await conn.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


async def redis_keys(client: Any, prefix: str) -> list[bytes]:
    keys: list[bytes] = []
    async for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
        keys.append(key)
    return keys


async def unlink_prefix(url: str, prefix: str) -> int:
    """Remove every key starting with ``prefix`` (a run's own prefix) with SCAN + UNLINK."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = await redis_keys(client, prefix)
        for i in range(0, len(keys), 1000):
            await client.unlink(*keys[i : i + 1000])
        return len(keys)
    finally:
        await client.aclose()


async def redis_bytes(url: str, prefix: str) -> tuple[int, int]:
    """(bytes by ``MEMORY USAGE ... SAMPLES 0``, number of keys) under ``prefix``."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = await redis_keys(client, prefix)
        total = 0
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
        for used in await pipe.execute():
            total += int(used or 0)
        return total, len(keys)
    finally:
        await client.aclose()


async def pg_bytes(dsn: str, schema: str) -> tuple[int, int]:
    """(``pg_total_relation_size`` summed over the tables of ``schema``, number of tables)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS size, "
            "count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'm')",
            schema,
        )
        return int(row["size"]), int(row["n"])
    finally:
        await conn.close()


async def analyze_schema(dsn: str, schema: str) -> None:
    """``ANALYZE`` every table of ``schema``, as autovacuum would do on a server that has run
    for a while: without statistics, a freshly filled table can get a sequential-scan plan."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            schema,
        )
        for row in names:
            await conn.execute(f'ANALYZE "{schema}"."{row["relname"]}"')
    finally:
        await conn.close()


async def cleanup(redis_url: str | None, dsn: str | None, token: str) -> None:
    """Remove everything the run with ``token`` wrote to the shared servers."""
    if redis_url is not None:
        try:
            n = await unlink_prefix(redis_url, f"psbench:{token}:")
            logger.info("removed %d Redis keys", n)
        except Exception as exc:
            logger.warning("Redis cleanup failed: %s", exc)
    if dsn is not None:
        try:
            n = await drop_schemas(dsn, f"psbench_{token}")
            logger.info("dropped %d PostgreSQL schemas", n)
        except Exception as exc:
            logger.warning("PostgreSQL cleanup failed: %s", exc)

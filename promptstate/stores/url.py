"""``open_store(url)``: one entry point for every backend, chosen by the URL's scheme.

One table (:data:`SCHEMES`) says which store each scheme opens and which store options its
query string may carry; every URL takes ``ttl`` and ``touch_on_read`` too. So
``redis://host/0?prefix=app:&ttl=3600`` opens the same store as
``RedisStore.from_url("redis://host/0", prefix="app:", ttl=3600)``, and the command line
reaches every store a program uses. A keyword argument given to :func:`open_store` wins over
the same option in the URL. Query parameters that are not store options go to the client
library where it has its own (redis-py's ``ssl_cert_reqs``, asyncpg's ``sslmode``, ...) and
are refused elsewhere.

This module imports no backend until a URL asks for it, and no backend imports it. The table
is the one source: ``tests/stores/test_url.py`` checks the docs' options table and the schemes
``RedisStore.from_url`` accepts against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from promptstate.exceptions import ValidationError
from promptstate.redaction import redact
from promptstate.stores.base import Store

__all__ = ["SCHEMES", "Scheme", "open_store"]

_Parser = Callable[[str], Any]


def _integer(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive number of seconds")
    return value


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _text(text: str) -> str:
    return text


#: Options every store takes, in its URL as in its constructor.
COMMON_OPTIONS: Mapping[str, _Parser] = {"ttl": _seconds, "touch_on_read": _flag}


@dataclass(frozen=True)
class Scheme:
    """What a URL scheme opens: a store, the options its query string may carry, and whether
    other query parameters belong to the client library (``passthrough``)."""

    opener: Callable[[str, dict[str, Any]], Store]
    options: Mapping[str, _Parser]
    passthrough: bool
    #: What the scheme opens, as the error for an unknown scheme lists it.
    summary: str


def _open_memory(url: str, options: dict[str, Any]) -> Store:
    from promptstate.stores.memory import MemoryStore

    parts = urlsplit(url)
    if parts.netloc or parts.path not in ("", "/"):
        raise ValidationError(f"memory:// takes no host or path, got {redact(url)!r}")
    return MemoryStore(**options)


def _open_sqlite(url: str, options: dict[str, Any]) -> Store:
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
    from promptstate.stores.sqlite import SQLiteStore

    parts = urlsplit(url)
    if parts.netloc:
        raise ValidationError(
            f"a sqlite URL has no host: use sqlite:///relative/path.db or "
            f"sqlite:////absolute/path.db, got {redact(url)!r}"
        )
    path = unquote(parts.path)
    if not path.startswith("/") or len(path) < 2:
        raise ValidationError(f"a sqlite URL needs a path: sqlite:///path.db, got {redact(url)!r}")
    path = path[1:]
    if path == ":memory:":
        raise ValidationError("sqlite:///:memory: is not supported; use memory://")
    return SQLiteStore(path, **options)


def _open_redis(url: str, options: dict[str, Any]) -> Store:
    from promptstate.stores.redis import RedisStore

    return RedisStore.from_url(url, **options)


def _open_postgres(url: str, options: dict[str, Any]) -> Store:
    from promptstate.stores.postgres import PostgresStore

    return PostgresStore.from_dsn(url, **options)


_REDIS_OPTIONS: Mapping[str, _Parser] = {
    "prefix": _text,
    "cluster": _flag,
    "max_connections": _integer,
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "pool_timeout": _seconds,
    "index_shards": _integer,
    "wait_replicas": _count,
    "wait_timeout": _seconds,
}
_POSTGRES_OPTIONS: Mapping[str, _Parser] = {
    "table_name": _text,
    "pgbouncer": _flag,
    "min_size": int,
    "max_size": _integer,
    "acquire_timeout": _seconds,
}
_REDIS = Scheme(_open_redis, _REDIS_OPTIONS, True, "Redis, TLS with rediss")
_REDIS_CLUSTER = Scheme(_open_redis, _REDIS_OPTIONS, True, "Redis Cluster, from any node")
_POSTGRES = Scheme(_open_postgres, _POSTGRES_OPTIONS, True, "PostgreSQL, through asyncpg")

#: Every scheme :func:`open_store` knows.
SCHEMES: Mapping[str, Scheme] = {
    "memory": Scheme(_open_memory, {"max_sessions": _integer}, False, "this process's memory"),
    "sqlite": Scheme(
        _open_sqlite,
        {"busy_timeout": _seconds, "synchronous": str.upper, "max_readers": _integer},
        False,
        "a SQLite file",
    ),
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "redis+cluster": _REDIS_CLUSTER,
    "rediss+cluster": _REDIS_CLUSTER,
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
}

# SQLAlchemy's forms are known only to say what to write instead.
_SQLALCHEMY_FORMS = ("postgresql+asyncpg", "postgres+asyncpg")


def open_store(url: str, *, ttl: timedelta | float | None = None, **options: Any) -> Store:
    """A store for ``url``. The store is not connected until first used or entered.

    Schemes: ``memory://``, ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
    ``postgresql://`` (or ``postgres://``) and ``sqlite:///path`` (``sqlite:///:memory:`` is
    not supported; use ``memory://``). Store options may be given in the query string
    (``?prefix=app:&ttl=3600``; the table is in the docs' "Stores" page) or as keyword
    arguments, which win.

    Raises:
        ValidationError: The URL is not a string, its scheme is unknown, or a part of it or an
            option is not valid. The message never contains the URL's password.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValidationError(f"a store URL looks like 'scheme://...', got {redact(url)!r}")
    name = url.split("://", 1)[0].lower()
    if name in _SQLALCHEMY_FORMS:
        fixed = "postgresql://" + url.split("://", 1)[1]
        raise ValidationError(
            f"{name}:// is SQLAlchemy's URL form; PostgresStore speaks asyncpg directly, so "
            f"write {redact(fixed)!r} instead"
        )
    scheme = SCHEMES.get(name)
    if scheme is None:
        kinds: dict[str, list[str]] = {}
        for known_name, row in SCHEMES.items():
            kinds.setdefault(row.summary, []).append(f"{known_name}://")
        known = "; ".join(f"{' '.join(names)} ({what})" for what, names in kinds.items())
        raise ValidationError(f"unknown store URL scheme {name + '://'!r}; known: {known}")
    rest, from_url = _split_options(url, scheme)
    from_url.update(options)
    if ttl is not None:
        from_url["ttl"] = ttl
    return scheme.opener(rest, from_url)


def _split_options(url: str, scheme: Scheme) -> tuple[str, dict[str, Any]]:
    """The URL without promptstate's store options, and those options parsed."""
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ValidationError(f"not a valid store URL: {redact(url)!r}: {exc}") from None
    if parts.fragment:
        raise ValidationError(f"a store URL takes no #fragment, got {redact(url)!r}")
    options: dict[str, Any] = {}
    kept: list[tuple[str, str]] = []
    for key, value in pairs:
        parser = COMMON_OPTIONS.get(key) or scheme.options.get(key)
        if parser is None:
            if not scheme.passthrough:
                known = ", ".join(sorted({*COMMON_OPTIONS, *scheme.options}))
                raise ValidationError(
                    f"unknown option {key!r} in the store URL {redact(url)!r}; "
                    f"this scheme takes: {known}"
                )
            kept.append((key, value))
            continue
        if key in options:
            raise ValidationError(f"option {key!r} is given twice in {redact(url)!r}")
        try:
            options[key] = parser(value)
        except ValueError as exc:
            raise ValidationError(
                f"option {key}={value!r} in the store URL {redact(url)!r}: {exc}"
            ) from None
    # Rebuilt by hand: urlunsplit turns "unix:///path" into "unix:/path".
    rest = url.split("?", 1)[0]
    if kept:
        rest += "?" + urlencode(kept, safe=":/,")
    return rest, options

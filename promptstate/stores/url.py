"""``open_store(url)``: one entry point for every backend, chosen by the URL's scheme."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from promptstate.exceptions import ValidationError
from promptstate.stores.base import Store

__all__ = ["open_store", "register_scheme"]

_Opener = Callable[[str, dict[str, Any]], Store]
_SCHEMES: dict[str, _Opener] = {}


def register_scheme(*schemes: str) -> Callable[[_Opener], _Opener]:
    """Register a function ``(url, options) -> Store`` for URL schemes."""

    def register(fn: _Opener) -> _Opener:
        for scheme in schemes:
            _SCHEMES[scheme] = fn
        return fn

    return register


def open_store(url: str, *, ttl: timedelta | float | None = None, **options: Any) -> Store:
    """A store for ``url``. The store is not connected until first used or entered.

    Schemes: ``memory://``, ``redis://``, ``rediss://``, ``redis+cluster://``,
    ``postgresql://`` (or ``postgres://``) and ``sqlite:///path`` (``sqlite:///:memory:`` is
    not supported; use ``memory://``). Keyword options go to the store's constructor.

    Raises:
        ValidationError: The URL is not a string or its scheme is unknown. The message never
            contains the URL's password.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValidationError(f"a store URL looks like 'scheme://...', got {_redact(url)!r}")
    scheme = url.split("://", 1)[0].lower()
    opener = _SCHEMES.get(scheme)
    if opener is None:
        # The SQLAlchemy forms are registered only to explain what to write instead.
        known = ", ".join(sorted(f"{s}://" for s in _SCHEMES if "+asyncpg" not in s))
        raise ValidationError(f"unknown store URL scheme {scheme + '://'!r}; known: {known}")
    if ttl is not None:
        options["ttl"] = ttl
    return opener(url, options)


# A password wherever one is written: "user:secret@host" (also in a URL too malformed for
# urlsplit to find it, such as "redis:/:secret@host"), "?password=secret" and libpq's
# "host=db password=secret".
_USERINFO_PASSWORD = re.compile(r"(?<=:)[^:@/\s]+(?=@)")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)('[^']*'|[^\s&;]*)")


def _redact(url: object) -> object:
    """``url`` with any password replaced by ``***``."""
    if not isinstance(url, str):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        url = parts._replace(netloc=netloc).geturl()
    url = _USERINFO_PASSWORD.sub("***", url)
    return _KEYWORD_PASSWORD.sub(r"\1\2***", url)


def query_options(url: str) -> dict[str, str]:
    """The URL's query string as single values."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


@register_scheme("memory")
def _open_memory(url: str, options: dict[str, Any]) -> Store:
    from promptstate.stores.memory import MemoryStore

    query = query_options(url)
    if "max_sessions" in query and "max_sessions" not in options:
        try:
            options["max_sessions"] = int(query["max_sessions"])
        except ValueError as exc:
            raise ValidationError(f"max_sessions must be an integer in {_redact(url)!r}") from exc
    return MemoryStore(**options)


@register_scheme("redis", "rediss", "redis+cluster", "rediss+cluster")
def _open_redis(url: str, options: dict[str, Any]) -> Store:
    from promptstate.stores.redis import RedisStore

    return RedisStore.from_url(url, **options)

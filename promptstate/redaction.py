"""One redaction module for everything that may echo a secret: stores, providers, the CLI.

Its tools:

* :func:`redact` hides the password of a URL or DSN, wherever one is written:
  ``user:secret@host`` (also in a URL too malformed for ``urlsplit`` to find it, such as
  ``redis:/:secret@host``), ``?password=secret`` and libpq's ``host=db password=secret``;
* :func:`scrub` blanks known secret values (an API key, a DSN's password, see
  :func:`url_secrets`) out of a text that came from elsewhere (a driver's error, a server's
  answer), in case it echoes them back;
* :class:`Secret` holds a value (an API key) that never shows itself in a ``repr``, ``str``,
  log line or pickle.

Whatever is hidden becomes ``***``. Stores (``stores/postgres.py``, ``stores/redis.py``,
``stores/url.py``), the HTTP providers (``providers/_http.py``) and the command line use only
these.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["MASK", "Secret", "redact", "scrub", "url_secrets"]

#: What every hidden secret is shown as.
MASK = "***"

_USERINFO_PASSWORD = re.compile(r"(?<=:)[^:@/\s]+(?=@)")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)('[^']*'|[^\s&;]*)")


def redact(url: object) -> object:
    """``url`` with any password replaced by ``***``; anything but a str comes back as is."""
    if not isinstance(url, str):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
        url = parts._replace(netloc=netloc).geturl()
    url = _USERINFO_PASSWORD.sub(MASK, url)
    return _KEYWORD_PASSWORD.sub(rf"\1\2{MASK}", url)


def url_secrets(url: str) -> tuple[str, ...]:
    """The password of ``url``'s ``user:password@`` part, as written and percent-decoded (a
    driver may echo either), for :func:`scrub`; ``()`` when it has none."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    if not password:
        return ()
    decoded = unquote(password)
    return (password,) if decoded == password else (password, decoded)


def scrub(text: str, *secrets: str | Secret | None) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``.

    Longer secrets go first, so one that contains another is hidden whole.
    """
    values = {s.reveal() if isinstance(s, Secret) else s for s in secrets}
    for value in sorted((v for v in values if v), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


class Secret:
    """A string that does not show itself: ``repr`` and ``str`` print ``'***'``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself (for the one place that must send it)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Secret cannot be pickled")

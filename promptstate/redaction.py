"""One redaction rule for everything that may echo a URL or DSN: stores, the CLI, errors.

A password is hidden wherever one is written: ``user:secret@host`` (also in a URL too
malformed for ``urlsplit`` to find it, such as ``redis:/:secret@host``), ``?password=secret``
and libpq's ``host=db password=secret``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["redact"]

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
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        url = parts._replace(netloc=netloc).geturl()
    url = _USERINFO_PASSWORD.sub("***", url)
    return _KEYWORD_PASSWORD.sub(r"\1\2***", url)

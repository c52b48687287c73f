"""What the HTTP providers share about message parts: base64, ``data:`` URLs and the error
for a part an API cannot take."""

from __future__ import annotations

import binascii
import re

from promptstate.exceptions import ValidationError
from promptstate.types import Part

__all__ = ["b64", "data_url", "parse_data_url", "unsupported"]

_DATA_URL = re.compile(r"^data:([^;,]+)?((?:;[^;,]*)*?);base64,(.*)$", re.DOTALL)


def b64(data: bytes) -> str:
    """``data`` as base64 text (no newlines)."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def data_url(media_type: str, data: bytes) -> str:
    """A ``data:`` URL holding ``data`` (base64)."""
    return f"data:{media_type};base64,{b64(data)}"


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``(media type, base64 data)`` of a base64 ``data:`` URL; ``None`` for any other URL."""
    if not url.startswith("data:"):
        return None
    found = _DATA_URL.match(url)
    if found is None:
        return None
    return found.group(1) or "application/octet-stream", found.group(3)


def unsupported(provider: str, part: Part, role: str, why: str = "") -> ValidationError:
    """The error for a part ``provider`` cannot send in a message of ``role``."""
    text = f"{provider} cannot send a {type(part).__name__} in a {role} message"
    return ValidationError(f"{text}: {why}" if why else text)

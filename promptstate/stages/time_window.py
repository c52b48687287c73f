"""The :class:`TimeWindow` truncation stage: the messages younger than ``max_age``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from promptstate._window import _blocks
from promptstate.exceptions import ValidationError
from promptstate.stages.truncate import TruncationStrategy
from promptstate.tokens import TokenCounter
from promptstate.types import Message, utcnow

__all__ = ["TimeWindow"]


class TimeWindow(TruncationStrategy):
    """Keep the system messages and the messages younger than ``max_age``.

    A tool block is kept when its first message is young enough.

    Args:
        max_age: A ``timedelta`` or seconds.
    """

    __slots__ = ("_window", "max_age")

    def __init__(self, max_age: timedelta | float) -> None:
        if isinstance(max_age, timedelta):
            seconds = max_age.total_seconds()
        elif isinstance(max_age, (int, float)) and not isinstance(max_age, bool):
            seconds = float(max_age)
        else:
            raise ValidationError(f"max_age must be a timedelta or seconds, got {max_age!r}")
        if not 0 < seconds < float("inf"):
            raise ValidationError(f"max_age must be positive and finite, got {max_age!r}")
        self.max_age = timedelta(seconds=seconds)
        self._window = 32

    def __repr__(self) -> str:
        return f"TimeWindow({self.max_age!r})"

    def load_hint(self) -> int | None:
        return self._window

    def needs_more(self, history: Sequence[Message]) -> bool:
        cutoff = utcnow() - self.max_age
        return bool(history) and history[0].timestamp >= cutoff

    def apply(self, messages: Sequence[Message], counter: TokenCounter) -> list[Message]:
        cutoff = utcnow() - self.max_age
        keep = {
            i
            for block in _blocks(messages)
            if messages[block[0]].timestamp >= cutoff
            for i in block
        }
        kept = [m for i, m in enumerate(messages) if m.role == "system" or i in keep]
        self._window = max(16, len(kept) * 2)
        return kept

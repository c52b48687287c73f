"""The :class:`TokenBudget` truncation stage: what fits ``max_tokens``."""

from __future__ import annotations

from collections.abc import Sequence

from promptstate._window import _DEFAULT_COUNTER, _positive_int, truncate_messages
from promptstate.stages.truncate import LimitedStrategy
from promptstate.tokens import TokenCounter
from promptstate.types import Message

__all__ = ["TokenBudget"]


class TokenBudget(LimitedStrategy):
    """Keep what fits ``max_tokens`` (:func:`truncate_messages`).

    Args:
        max_tokens: The prompt budget, in the pipeline's token counter's tokens. ``None`` sends
            everything, except in a turn given its own ``max_tokens``
            (``Pipeline.execute(..., max_tokens=...)``).
    """

    __slots__ = ("_window", "max_tokens")

    turn_limits = frozenset({"max_tokens"})
    limit_name = "max_tokens"

    def __init__(self, max_tokens: int | None) -> None:
        super().__init__()
        self.max_tokens = None if max_tokens is None else _positive_int(max_tokens, "max_tokens")
        self._window = 64

    def __repr__(self) -> str:
        return f"TokenBudget({self.max_tokens})"

    def limit(self) -> int | None:
        return self.max_tokens

    def with_limit(self, limit: int) -> TokenBudget:
        return TokenBudget(limit)

    @property
    def inactive(self) -> bool:
        return self.max_tokens is None

    def load_hint(self) -> int | None:
        return None if self.max_tokens is None else self._window

    def needs_more(self, history: Sequence[Message]) -> bool:
        limit = self.max_tokens
        if limit is None:
            return False
        total = 0
        for m in reversed(history):
            tokens = m.tokens
            total += _DEFAULT_COUNTER.count(m) if tokens is None else tokens
            if total >= limit:
                return False
        return True

    def apply(self, messages: Sequence[Message], counter: TokenCounter) -> list[Message]:
        if self.max_tokens is None:
            return list(messages)
        kept = truncate_messages(messages, self.max_tokens, counter=counter)
        # Start the next load near what this one needed (the estimate is shared by sessions).
        self._window = max(16, len(kept) + 4)
        return kept

"""The :class:`TokenBudget` truncation stage: what fits ``max_tokens``."""

from __future__ import annotations

from collections.abc import Sequence

from promptstate._window import _DEFAULT_COUNTER, _positive_int, truncate_messages
from promptstate.stages.truncate import TruncationStrategy
from promptstate.tokens import TokenCounter
from promptstate.types import Message

__all__ = ["TokenBudget"]


class TokenBudget(TruncationStrategy):
    """Keep what fits ``max_tokens`` (:func:`truncate_messages`).

    Args:
        max_tokens: The prompt budget, in the pipeline's token counter's tokens.
    """

    __slots__ = ("_window", "max_tokens")

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = _positive_int(max_tokens, "max_tokens")
        self._window = 64

    def __repr__(self) -> str:
        return f"TokenBudget({self.max_tokens})"

    def load_hint(self) -> int | None:
        return self._window

    def needs_more(self, history: Sequence[Message]) -> bool:
        total = 0
        limit = self.max_tokens
        for m in reversed(history):
            tokens = m.tokens
            total += _DEFAULT_COUNTER.count(m) if tokens is None else tokens
            if total >= limit:
                return False
        return True

    def apply(self, messages: Sequence[Message], counter: TokenCounter) -> list[Message]:
        kept = truncate_messages(messages, self.max_tokens, counter=counter)
        # Start the next load near what this one needed (the estimate is shared by sessions).
        self._window = max(16, len(kept) + len(kept) // 8 + 4)
        return kept

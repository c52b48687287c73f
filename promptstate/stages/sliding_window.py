"""The :class:`SlidingWindow` truncation stage: the newest ``max_messages``."""

from __future__ import annotations

from collections.abc import Sequence

from promptstate._window import _blocks, _positive_int
from promptstate.stages.truncate import LimitedStrategy
from promptstate.tokens import TokenCounter
from promptstate.types import Message

__all__ = ["SlidingWindow"]


class SlidingWindow(LimitedStrategy):
    """Keep the system messages and the newest ``max_messages`` others.

    A tool block cut by the window is dropped whole, so the result may hold fewer.

    Args:
        max_messages: How many messages to keep. ``None`` keeps all of them, except in a turn
            given its own ``max_messages`` (``Pipeline.execute(..., max_messages=...)``).
    """

    __slots__ = ("max_messages",)

    turn_limits = frozenset({"max_messages"})
    limit_name = "max_messages"

    def __init__(self, max_messages: int | None) -> None:
        super().__init__()
        self.max_messages = (
            None if max_messages is None else _positive_int(max_messages, "max_messages")
        )

    def __repr__(self) -> str:
        return f"SlidingWindow({self.max_messages})"

    def limit(self) -> int | None:
        return self.max_messages

    def with_limit(self, limit: int) -> SlidingWindow:
        return SlidingWindow(limit)

    @property
    def inactive(self) -> bool:
        return self.max_messages is None

    def load_hint(self) -> int | None:
        return self.max_messages

    def apply(self, messages: Sequence[Message], counter: TokenCounter) -> list[Message]:
        if self.max_messages is None:
            return list(messages)
        blocks = _blocks(messages)
        keep: set[int] = set()
        left = self.max_messages
        for block in reversed(blocks):
            if len(block) > left:
                break
            keep.update(block)
            left -= len(block)
        return [m for i, m in enumerate(messages) if m.role == "system" or i in keep]

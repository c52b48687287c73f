"""Token counters.

A :class:`TokenCounter` turns a message into a token count. Stores use one to keep
``State.token_count`` and truncation strategies use one to fit a budget. Each message's count is
kept in ``Message.tokens`` once computed (see :func:`with_tokens`), so nothing is counted twice.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

from promptstate.types import Message

__all__ = ["HeuristicTokenCounter", "TokenCounter", "count_tokens", "with_tokens"]


@runtime_checkable
class TokenCounter(Protocol):
    """Anything with ``count(message) -> int``."""

    def count(self, message: Message) -> int:
        """The number of tokens ``message`` costs in a prompt."""
        ...


class HeuristicTokenCounter:
    """A fast estimate that needs no files: about four UTF-8 bytes a token.

    Each message costs ``per_message`` tokens of overhead (role and separators, 4 by default,
    as in OpenAI's chat format), plus one token per four bytes of its content, name, and each
    tool call's name and arguments (rounded up), plus ``per_tool_call`` per call. English text
    averages about four characters a token with OpenAI's encodings; text in scripts that take
    three UTF-8 bytes a character comes out near one token per character, which is close too.
    """

    __slots__ = ("per_message", "per_tool_call")

    def __init__(self, *, per_message: int = 4, per_tool_call: int = 3) -> None:
        self.per_message = per_message
        self.per_tool_call = per_tool_call

    def count(self, message: Message) -> int:
        size = len(message.content.encode())
        if message.name:
            size += len(message.name.encode())
        tokens = self.per_message
        for call in message.tool_calls:
            size += len(call.name.encode()) + len(call.arguments.encode())
            tokens += self.per_tool_call
        return tokens + (size + 3) // 4

    def __repr__(self) -> str:
        return (
            f"HeuristicTokenCounter(per_message={self.per_message}, "
            f"per_tool_call={self.per_tool_call})"
        )


def with_tokens(message: Message, counter: TokenCounter) -> Message:
    """``message`` with ``tokens`` filled in (the same object when it already has a count)."""
    if message.tokens is not None:
        return message
    return msgspec.structs.replace(message, tokens=counter.count(message))


def count_tokens(messages: list[Message], counter: TokenCounter) -> int:
    """The tokens of ``messages``, using each message's kept count where it has one."""
    return sum(m.tokens if m.tokens is not None else counter.count(m) for m in messages)

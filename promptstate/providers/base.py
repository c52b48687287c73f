"""The provider seam: what the pipeline needs from a model.

A provider has two calls: :meth:`Provider.complete` returns a whole :class:`Completion`, and
:meth:`Provider.stream` yields :class:`Chunk` s whose last one carries the assembled message,
usage and cost. Anything with these methods is a provider; no base class is required.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from promptstate.types import Message, ToolCall, Usage

__all__ = ["Chunk", "Completion", "Provider"]


class Completion(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A provider's whole answer to one request.

    Attributes:
        message: The assistant message (with ``tool_calls`` when the model asked for tools).
        usage: Tokens the request consumed.
        cost: Its price in USD by the provider's price table; 0.0 when the price is unknown.
        finish_reason: Why the model stopped (``"stop"``, ``"length"``, ``"tool_calls"`` ...).
        model: The model that answered, as the provider reported it.
    """

    message: Message
    usage: Usage = Usage()
    cost: float = 0.0
    finish_reason: str | None = None
    model: str | None = None


class Chunk(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A piece of a streamed answer.

    Every chunk but the last carries new ``text``. The last one (``done`` is true) carries the
    assembled ``message`` (whole text and whole tool calls), ``usage``, ``cost`` and
    ``finish_reason``, and may carry text of its own too.
    """

    text: str = ""
    done: bool = False
    message: Message | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    cost: float = 0.0
    finish_reason: str | None = None


@runtime_checkable
class Provider(Protocol):
    """What the pipeline calls. ``options`` are request options (temperature, tools, ...)."""

    async def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """Answer ``messages`` in one piece."""
        ...

    def stream(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[Chunk]:
        """Answer ``messages`` piece by piece; the last chunk has ``done=True``."""
        ...

    async def aclose(self) -> None:
        """Release the provider's HTTP client (when it owns one)."""
        ...

"""The truncation stage contract: :class:`TruncationStrategy`, the base of the strategies.

A strategy is a stage that rewrites ``ctx.messages`` (what the provider will be sent) and
tells the load stage how much stored history it can use (:meth:`~TruncationStrategy.load_hint`
and :meth:`~TruncationStrategy.needs_more`, the
:class:`~promptstate.stages.context.WindowStrategy` protocol), so a turn reads only the tail of
a long conversation. The strategies, one module each beside this one:

* :class:`~promptstate.stages.sliding_window.SlidingWindow` keeps the newest ``max_messages``;
* :class:`~promptstate.stages.token_budget.TokenBudget` keeps what fits ``max_tokens``;
* :class:`~promptstate.stages.time_window.TimeWindow` keeps what is younger than ``max_age``;
* :class:`~promptstate.stages.summarize.Summarize` folds the oldest messages into a summary.

The public entry points are :mod:`promptstate.truncation` and :mod:`promptstate.stages`, which
re-export them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from promptstate.exceptions import ValidationError
from promptstate.tokens import TokenCounter
from promptstate.types import Message

if TYPE_CHECKING:
    from promptstate.stages.context import ExecutionContext

__all__ = ["TruncationStrategy"]


class TruncationStrategy:
    """The base of the strategies: a pipeline stage that rewrites ``ctx.messages``.

    Subclasses implement :meth:`apply`; :meth:`load_hint` and :meth:`needs_more` tell the load
    stage how much stored history to read.
    """

    def load_hint(self) -> int | None:
        """How many of the newest stored messages to load first (None: all of them)."""
        return None

    def needs_more(self, history: Sequence[Message]) -> bool:
        """Whether a loaded tail ``history`` may be too short for this strategy."""
        return False

    def apply(self, messages: Sequence[Message], counter: TokenCounter) -> list[Message]:
        """The messages to send, from everything the provider could be sent."""
        raise NotImplementedError

    async def __call__(
        self, ctx: ExecutionContext, call_next: Callable[[ExecutionContext], Awaitable[None]]
    ) -> None:
        ctx.messages = self.apply(ctx.messages, ctx.counter)
        if not ctx.messages or ctx.messages[-1] is not ctx.input:
            raise ValidationError(
                f"the new {ctx.input.role} message alone does not fit the context window of "
                f"{self!r} for session {ctx.session_id!r}"
            )
        await call_next(ctx)

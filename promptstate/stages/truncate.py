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

__all__ = ["LimitedStrategy", "TruncationStrategy"]


#: How many per-turn variants (other limits) of one strategy are kept.
_MAX_COPIES = 32


class TruncationStrategy:
    """The base of the strategies: a pipeline stage that rewrites ``ctx.messages``.

    Subclasses implement :meth:`apply`; :meth:`load_hint` and :meth:`needs_more` tell the load
    stage how much stored history to read. A strategy whose limit a turn may change
    (``execute(..., max_tokens=...)``) names it in :attr:`turn_limits` and returns itself
    with that limit from :meth:`for_turn`.
    """

    #: The per-turn limits (``"max_tokens"``, ``"max_messages"``) this strategy applies.
    turn_limits: frozenset[str] = frozenset()

    #: Runs the rest of the chain once per turn (see :class:`~promptstate.stages.Middleware`).
    single_pass = True

    def for_turn(self, max_tokens: int | None, max_messages: int | None) -> TruncationStrategy:
        """This strategy with a turn's limits (``None``: keep its own); ``self`` by default."""
        return self

    @property
    def inactive(self) -> bool:
        """Whether the strategy has no limit (for this turn) and passes every message on."""
        return False

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
        strategy = self if ctx.limits is None else self.for_turn(*ctx.limits)
        if strategy.inactive:
            await call_next(ctx)
            return
        ctx.messages = strategy.apply(ctx.messages, ctx.counter)
        if not ctx.messages or ctx.messages[-1] is not ctx.input:
            raise ValidationError(
                f"the new {ctx.input.role} message alone does not fit the context window of "
                f"{strategy!r} for session {ctx.session_id!r}"
            )
        await call_next(ctx)


class LimitedStrategy(TruncationStrategy):
    """A strategy with one numeric limit that a turn may change (``max_tokens`` or
    ``max_messages``, named by :attr:`limit_name`). Variants with other limits are kept (the
    32 most recently made), so each keeps its own learned load window across turns."""

    __slots__ = ("_copies",)

    #: The per-turn limit this strategy applies.
    limit_name: str = "max_tokens"

    def __init__(self) -> None:
        self._copies: dict[int, TruncationStrategy] = {}

    def limit(self) -> int | None:
        """This strategy's own limit (``None``: none)."""
        raise NotImplementedError

    def with_limit(self, limit: int) -> TruncationStrategy:
        """A new strategy like this one with ``limit``."""
        raise NotImplementedError

    def for_turn(self, max_tokens: int | None, max_messages: int | None) -> TruncationStrategy:
        limit = max_tokens if self.limit_name == "max_tokens" else max_messages
        if limit is None or limit == self.limit():
            return self
        copies = self._copies
        found = copies.get(limit)
        if found is None:
            if len(copies) >= _MAX_COPIES:
                del copies[next(iter(copies))]  # the oldest
            found = copies[limit] = self.with_limit(limit)
        return found

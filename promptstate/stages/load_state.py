"""The load stage: read the part of the stored history the turn can use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from promptstate.exceptions import ValidationError
from promptstate.types import Message

if TYPE_CHECKING:
    from promptstate.stages.context import ExecutionContext, WindowStrategy

__all__ = ["LoadState"]


class LoadState:
    """Load the session's history into ``ctx.history`` and build ``ctx.messages``.

    ``ctx.messages`` becomes the pipeline's system messages, the history, and the new message.

    Args:
        last: Load only the newest ``last`` messages. By default (``None``) the stage asks the
            truncation strategies in the pipeline how much they can use: it loads their hint
            with ``store.load(session_id, last=...)`` and reads a longer tail (four times as
            long each time) only while a strategy says the tail may be too short. With no
            strategy in the pipeline it loads the whole history.

    When it is the pipeline's first stage and the store can take the turn's lease and read
    in one step (``acquire_and_load``), its first read is done with the lease
    (:meth:`first_window` says how much) and served from there, saving a round trip.
    """

    __slots__ = ("last",)

    #: Runs the rest of the chain once per turn (see :class:`~promptstate.stages.Middleware`).
    single_pass = True

    def __init__(self, *, last: int | None = None) -> None:
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
            raise ValidationError(f"last must be None or an int >= 0, got {last!r}")
        self.last = last

    def __repr__(self) -> str:
        return f"LoadState(last={self.last!r})"

    async def __call__(
        self, ctx: ExecutionContext, call_next: Callable[[ExecutionContext], Awaitable[None]]
    ) -> None:
        ctx.history = await self.load(ctx)
        ctx.messages = [*ctx.system, *ctx.history, ctx.input]
        await call_next(ctx)

    def first_window(self, strategies: tuple[WindowStrategy, ...]) -> int | None:
        """How many of the newest messages the first read asks for (``None``: all)."""
        if self.last is not None:
            return self.last
        if not strategies:
            return None
        window = 1
        for strategy in strategies:
            hint = strategy.load_hint()
            if hint is None:
                return None
            window = max(window, hint)
        return window

    async def load(self, ctx: ExecutionContext) -> list[Message]:
        """The history this stage would load for ``ctx``."""
        lease = ctx.lease
        found = None if lease is None else lease.take_prefetch()
        if found is not None and (self.last is None or found[0] == self.last):
            # Read with the turn's lease (the window asked for then; strategies shared with
            # concurrent turns may have moved it since, and any start window is correct).
            window, history = found
        else:
            window = self.first_window(ctx.strategies)
            history = await ctx.store.load(ctx.session_id, last=window)
        if window is None or self.last is not None:
            return history
        strategies = ctx.strategies
        while True:
            if len(history) < window:
                return history
            for strategy in strategies:
                if strategy.needs_more(history):
                    break
            else:
                return history
            window *= 4
            history = await ctx.store.load(ctx.session_id, last=window)

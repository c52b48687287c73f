"""The save stage: append the turn in one atomic, retry-safe, cancellation-shielded write."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from promptstate.exceptions import (
    LeaseLostError,
    PromptStateError,
    StoreUnavailableError,
    ValidationError,
)
from promptstate.tokens import with_tokens
from promptstate.types import Message

if TYPE_CHECKING:
    from promptstate.stages.context import ExecutionContext

__all__ = ["SaveState"]

logger = logging.getLogger(__name__)


class SaveState:
    """Store ``ctx.pending``, the new message and ``ctx.response`` with ``store.append_turn``.

    * One append is one atomic write on every backend, so a turn is stored whole or not at all.
    * The write is shielded from cancellation: a turn cancelled during its save finishes the
      save, then the cancellation goes on.
    * The turn id rides in the first message's metadata, so when the store's reply is lost
      (:class:`~promptstate.exceptions.StoreUnavailableError`) the write is retried up to
      ``retries`` times and the store skips it if it had in fact been applied.
    * With a cross-process lease, the lease is checked (and renewed if it is close to
      expiring) right before the write; a lost lease raises
      :class:`~promptstate.exceptions.LeaseLostError` and nothing is written. When the store can
      (``append_turn(..., release_lease=owner)``), the write also checks that the lease is
      still the turn's and releases it, in the same atomic step.

    Args:
        retries: How many times to retry a write whose outcome is unknown.
        timeout: Seconds the shielded write may take in all before giving up with
            :class:`~promptstate.exceptions.StoreUnavailableError` (the turn may or may not be
            stored then). ``None`` (the default) relies on the store's own timeouts; set it
            when your store client has none, since a shielded write cannot be cancelled.
    """

    __slots__ = ("retries", "timeout")

    #: Runs the rest of the chain once per turn (see :class:`~promptstate.stages.Middleware`).
    single_pass = True

    def __init__(self, *, retries: int = 2, timeout: float | None = None) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValidationError(f"retries must be an int >= 0, got {retries!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise ValidationError(f"timeout must be None or a positive number, got {timeout!r}")
        self.retries = retries
        self.timeout = None if timeout is None else float(timeout)

    def __repr__(self) -> str:
        return f"SaveState(retries={self.retries}, timeout={self.timeout})"

    async def __call__(
        self, ctx: ExecutionContext, call_next: Callable[[ExecutionContext], Awaitable[None]]
    ) -> None:
        if ctx.response is None:
            raise PromptStateError(
                f"SaveState ran before a response for session {ctx.session_id!r}: "
                "put it after CallProvider"
            )
        counter = ctx.counter
        messages = [with_tokens(m, counter) for m in ctx.pending]
        messages.append(ctx.input)
        messages.append(with_tokens(ctx.response, counter))
        if ctx.emit is not None:
            # A streamed turn is saved only once its consumer asks past the last text chunk;
            # a consumer that stops earlier cancels the turn here, before anything is written.
            await ctx.emit(None)
        if ctx.lease is not None:
            await ctx.lease.ensure(margin=ctx.lease.ttl / 2)
        store = ctx.store
        if self.timeout is None and store.append_turn_never_suspends:
            # The store's append_turn never yields to the event loop (MemoryStore's own): nothing
            # can cancel it half-way, so the shield (a few microseconds) is not needed.
            ctx.message_count = await store.append_turn(
                ctx.session_id, messages, cost=ctx.cost, turn_id=ctx.turn_id
            )
            await call_next(ctx)
            return
        with anyio.CancelScope(shield=True) as scope:
            if self.timeout is not None:
                scope.deadline = anyio.current_time() + self.timeout
            ctx.message_count = await self._write(ctx, messages)
        if scope.cancelled_caught:
            raise StoreUnavailableError(
                f"saving the turn of session {ctx.session_id!r} took over {self.timeout}s; "
                "it may or may not be stored"
            )
        await call_next(ctx)

    async def _write(self, ctx: ExecutionContext, messages: list[Message]) -> int:
        attempt = 0
        lease = ctx.lease
        # Not when the answer asks for tools: a tool loop saves again in this turn.
        release = (
            lease is not None
            and lease.release_on_save
            and not (ctx.response is not None and ctx.response.tool_calls)
        )
        while True:
            try:
                if not release:
                    return await ctx.store.append_turn(
                        ctx.session_id, messages, cost=ctx.cost, turn_id=ctx.turn_id
                    )
                assert lease is not None
                try:
                    # The lease's store is the turn's, typed as the LeasingStore it is.
                    count = await lease.store.append_turn(
                        ctx.session_id,
                        messages,
                        cost=ctx.cost,
                        turn_id=ctx.turn_id,
                        release_lease=lease.owner,
                    )
                except LeaseLostError as exc:
                    if not attempt:
                        raise
                    # An earlier attempt whose reply was lost may have stored the turn (and
                    # released the lease, which someone else then took): nobody can tell now.
                    raise StoreUnavailableError(
                        f"saving the turn of session {ctx.session_id!r} failed and its lease "
                        "is gone: the turn may or may not be stored"
                    ) from exc
                lease.held = False  # released by the write
                return count
            except StoreUnavailableError as exc:
                if attempt >= self.retries or isinstance(exc.__cause__, LeaseLostError):
                    raise
                attempt += 1
                # One line per retry while the store is out; the traceback only at DEBUG.
                logger.warning(
                    "saving the turn of session %r failed (%s), retrying (%d/%d)",
                    ctx.session_id,
                    exc,
                    attempt,
                    self.retries,
                )
                logger.debug("the failed save of session %r", ctx.session_id, exc_info=True)
                await anyio.sleep(0.05 * 2**attempt)

"""The stage contract: what a pipeline turn hands from stage to stage.

A stage (:class:`Middleware`) is any ``async (ctx, call_next) -> None``: it does its work on
the turn's :class:`ExecutionContext` and awaits ``call_next(ctx)`` to run the rest of the
chain. The pipeline (:mod:`promptstate.pipeline`) builds the chain and the context; the stages
(every module of :mod:`promptstate.stages`: load, the truncation strategies, the tool loop, the
provider call, the reply check, save) only depend on this module, never on the pipeline, so
nothing imports back what imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from promptstate.locks import new_id
from promptstate.types import Message, Usage

if TYPE_CHECKING:
    from promptstate.locks import TurnLease
    from promptstate.providers.base import Chunk, Completion, Provider
    from promptstate.stores.base import Store
    from promptstate.tokens import TokenCounter
    from promptstate.validators import Guardrails

__all__ = ["CallNext", "ExecutionContext", "Middleware", "WindowStrategy"]


class WindowStrategy(Protocol):
    """What the load stage asks of a truncation strategy (every
    :class:`~promptstate.truncation.TruncationStrategy` is one): how much history to read."""

    def load_hint(self) -> int | None:
        """How many of the newest messages the strategy can use at most (``None``: all)."""
        ...

    def needs_more(self, history: Sequence[Message]) -> bool:
        """Whether a history read this far back may still be too short for the strategy."""
        ...


#: What a stage calls to run the rest of the chain.
CallNext = Callable[["ExecutionContext"], Awaitable[None]]


class Middleware(Protocol):
    """A pipeline stage: do some work, then ``await call_next(ctx)`` (or don't, to stop).

    A stage may declare ``single_pass = True`` (a class attribute) when it runs the rest of
    the chain at most once per turn, or again only after an answer that asks for tools (as
    :class:`~promptstate.stages.ToolLoop` does). When every stage before the save declares
    it, the save also releases the turn's lease in its own write: a turn on a leasing store
    costs two round trips instead of three. Every bundled stage declares it; a stage that
    does not is taken to possibly call ``call_next`` again.
    """

    async def __call__(self, ctx: ExecutionContext, call_next: CallNext) -> None: ...


class ExecutionContext:
    """Everything one turn knows, handed from stage to stage.

    Attributes:
        session_id: The conversation's key.
        input: The new message of this turn (its tokens counted).
        system: System messages sent first on every turn and never stored.
        history: The stored messages the load stage read (oldest first; maybe only a tail).
        messages: What the provider will be (or was) sent; truncation stages rewrite it.
        pending: Messages to store before ``input`` in this turn's append (e.g. a summary).
        options: Request options for the provider (temperature, tools, ...).
        response: The assistant's message, once the provider answered.
        completion: The provider's whole :class:`~promptstate.providers.Completion`.
        usage: Tokens the turn's model call consumed.
        summary_usage: Tokens spent on summaries (see :class:`~promptstate.truncation.Summarize`).
        cost: USD the turn cost so far (model call plus summaries).
        message_count: The session's number of messages after the save.
        turn_id: This turn's id, stored in the first saved message's metadata.
        store: The pipeline's store.
        provider: The pipeline's provider.
        counter: The token counter.
        strategies: The truncation strategies in the chain (the load stage asks them), with
            this turn's limits.
        limits: ``(max_tokens, max_messages)`` given to this turn
            (``Pipeline.execute(..., max_tokens=...)``), each ``None`` when not given; ``None``
            when the turn gave neither. Truncation strategies apply them instead of their own
            (:meth:`~promptstate.truncation.TruncationStrategy.for_turn`).
        lease: The cross-process lease held for the turn, if the store has leases.
        emit: In a streamed turn, sends a chunk to the consumer; None otherwise.
        guardrails: The prompt's validators, checked on the reply by
            :class:`~promptstate.stages.CheckReply`; None for none.
        telemetry: The turn's OpenTelemetry span and clock when ``opentelemetry-api`` is
            installed (:mod:`promptstate.integrations.opentelemetry`); None otherwise.
        data: Free space for your own stages to share values.
    """

    __slots__ = (
        "completion",
        "cost",
        "counter",
        "data",
        "emit",
        "guardrails",
        "history",
        "input",
        "lease",
        "limits",
        "message_count",
        "messages",
        "options",
        "pending",
        "provider",
        "response",
        "session_id",
        "store",
        "strategies",
        "summary_usage",
        "system",
        "telemetry",
        "turn_id",
        "usage",
    )

    def __init__(
        self,
        *,
        session_id: str,
        input: Message,
        store: Store,
        provider: Provider,
        counter: TokenCounter,
        system: list[Message],
        options: dict[str, Any],
        strategies: tuple[WindowStrategy, ...] = (),
        emit: Callable[[Chunk | None], Awaitable[None]] | None = None,
        turn_id: str | None = None,
        guardrails: Guardrails | None = None,
        limits: tuple[int | None, int | None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.input = input
        self.store = store
        self.provider = provider
        self.counter = counter
        self.system = system
        self.options = options
        self.strategies = strategies
        self.limits = limits
        self.emit = emit
        self.guardrails = guardrails
        self.telemetry: Any = None
        self.history: list[Message] = []
        self.messages: list[Message] = [*system, input]
        self.pending: list[Message] = []
        self.response: Message | None = None
        self.completion: Completion | None = None
        self.usage = Usage()
        self.summary_usage = Usage()
        self.cost = 0.0
        self.message_count: int | None = None
        self.turn_id = turn_id or new_id()
        self.lease: TurnLease | None = None
        self.data: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (
            f"ExecutionContext(session_id={self.session_id!r}, turn_id={self.turn_id!r}, "
            f"history={len(self.history)}, messages={len(self.messages)})"
        )

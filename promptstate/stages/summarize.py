"""The :class:`Summarize` truncation stage: fold the oldest messages into a summary."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from promptstate._window import _positive_int, _tokens, truncate_messages
from promptstate.exceptions import ValidationError
from promptstate.stages.truncate import LimitedStrategy
from promptstate.tokens import TokenCounter, with_tokens
from promptstate.types import Message

if TYPE_CHECKING:
    from promptstate.providers.base import Provider
    from promptstate.stages.context import ExecutionContext

__all__ = ["SUMMARY_KEY", "Summarize"]

logger = logging.getLogger(__name__)

#: ``Message.metadata`` key marking a summary message made by :class:`Summarize`. Its value is
#: how many stored messages right before the summary it did *not* fold (the kept tail).
SUMMARY_KEY = "promptstate.summary"


class Summarize(LimitedStrategy):
    """Fold the oldest messages into a summary when the context outgrows ``max_tokens``.

    When the messages to send exceed ``max_tokens``, everything but the newest ``keep_last``
    messages (and the previous summary) is given to ``summarizer`` (any provider), and its
    answer becomes a ``system`` message, "Summary of the earlier conversation: ...", sent in
    place of what it folded. The summary message is stored in the history in the same atomic
    append as the turn (marked with ``metadata["promptstate.summary"]``), so:

    * nothing is overwritten: the history is only appended to, under the session's turn lock,
      and a turn that fails or is cancelled stores neither its messages nor its summary;
    * the full history stays retrievable with ``store.load(session_id)``, summaries included;
    * later turns read only the tail from the newest summary on.

    The summarizer's cost is added to the turn's cost.

    Args:
        max_tokens: The prompt budget.
        keep_last: How many of the newest messages are never folded.
        summarizer: The provider that writes summaries (it may be the pipeline's own).
        instructions: The system prompt given to the summarizer.
    """

    __slots__ = ("_window", "instructions", "keep_last", "max_tokens", "summarizer")

    turn_limits = frozenset({"max_tokens"})
    limit_name = "max_tokens"

    DEFAULT_INSTRUCTIONS = (
        "Summarize the conversation below for a model that will continue it. Keep names, "
        "facts, decisions, open questions and anything the user asked to remember. Be concise."
    )

    def __init__(
        self,
        max_tokens: int,
        keep_last: int,
        summarizer: Provider,
        *,
        instructions: str = DEFAULT_INSTRUCTIONS,
    ) -> None:
        super().__init__()
        self.max_tokens = _positive_int(max_tokens, "max_tokens")
        self.keep_last = _positive_int(keep_last, "keep_last", allow_zero=True)
        if not callable(getattr(summarizer, "complete", None)):
            raise ValidationError(f"summarizer must be a provider, got {summarizer!r}")
        self.summarizer = summarizer
        self.instructions = instructions
        self._window = 64

    def __repr__(self) -> str:
        return f"Summarize({self.max_tokens}, keep_last={self.keep_last})"

    def limit(self) -> int | None:
        return self.max_tokens

    def with_limit(self, limit: int) -> Summarize:
        return Summarize(limit, self.keep_last, self.summarizer, instructions=self.instructions)

    def load_hint(self) -> int | None:
        return self._window

    def needs_more(self, history: Sequence[Message]) -> bool:
        found = _newest_summary(history)
        if found is None:
            return True  # everything before the first summary has to be read (once)
        index, kept = found
        return index < kept

    def apply(self, messages: Sequence[Message], counter: TokenCounter) -> list[Message]:
        """Without a summarizer call: the context from the newest summary on, cut to budget."""
        return truncate_messages(_from_summary(messages), self.max_tokens, counter=counter)

    async def __call__(
        self, ctx: ExecutionContext, call_next: Callable[[ExecutionContext], Awaitable[None]]
    ) -> None:
        strategy = self if ctx.limits is None else cast(Summarize, self.for_turn(*ctx.limits))
        await strategy._run(ctx, call_next)

    async def _run(
        self, ctx: ExecutionContext, call_next: Callable[[ExecutionContext], Awaitable[None]]
    ) -> None:
        counter = ctx.counter
        history = ctx.history
        context = _from_summary(history)
        messages = [*ctx.system, *context, ctx.input]
        if sum(_tokens(m, counter) for m in messages) > self.max_tokens:
            messages = await self._fold(ctx, history, counter)
        if not messages or messages[-1] is not ctx.input:
            raise ValidationError(
                f"the new {ctx.input.role} message alone does not fit the context window of "
                f"{self!r} for session {ctx.session_id!r}"
            )
        ctx.messages = messages
        self._window = max(16, 2 * (len(context) + 1))
        await call_next(ctx)

    async def _fold(
        self, ctx: ExecutionContext, history: list[Message], counter: TokenCounter
    ) -> list[Message]:
        found = _newest_summary(history)
        previous = history[found[0]] if found is not None else None
        start = 0 if found is None else found[0] - found[1]
        # Positions (in history) of the messages the context holds, summaries left out.
        positions = [
            i for i in range(max(start, 0), len(history)) if SUMMARY_KEY not in history[i].metadata
        ]
        cut = max(len(positions) - self.keep_last, 0)
        # Never start the kept tail inside a tool block: move the cut back to its start.
        while cut > 0 and history[positions[cut]].role == "tool":
            cut -= 1
        fold = [history[i] for i in positions[:cut]]
        kept_positions = positions[cut:]
        if not fold:
            return truncate_messages(
                [*ctx.system, *_from_summary(history), ctx.input], self.max_tokens, counter=counter
            )
        text = await self._summarize(ctx, previous, fold)
        kept_span = len(history) - kept_positions[0] if kept_positions else 0
        summary = with_tokens(
            Message(
                "system",
                f"Summary of the earlier conversation:\n{text}",
                metadata={SUMMARY_KEY: kept_span},
            ),
            counter,
        )
        ctx.pending.append(summary)
        kept = [history[i] for i in kept_positions]
        logger.debug(
            "summarized %d messages of session %r, keeping %d", len(fold), ctx.session_id, len(kept)
        )
        return truncate_messages(
            [*ctx.system, summary, *kept, ctx.input], self.max_tokens, counter=counter
        )

    async def _summarize(
        self, ctx: ExecutionContext, previous: Message | None, fold: list[Message]
    ) -> str:
        from promptstate.exceptions import ProviderError

        lines = []
        if previous is not None:
            lines.append(f"[earlier summary]\n{previous.content}")
        for m in fold:
            who = m.role if not m.name else f"{m.role} ({m.name})"
            text = m.text
            if m.tool_calls:
                calls = ", ".join(f"{c.name}({c.arguments})" for c in m.tool_calls)
                text = f"{text}\n[called {calls}]".strip()
            lines.append(f"{who}: {text}")
        prompt = [Message("system", self.instructions), Message("user", "\n\n".join(lines))]
        try:
            completion: Any = await self.summarizer.complete(prompt)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"the summarizer failed: {exc!r}") from exc
        ctx.cost += completion.cost
        ctx.summary_usage = ctx.summary_usage + completion.usage
        return str(completion.message.content).strip()


def _newest_summary(history: Sequence[Message]) -> tuple[int, int] | None:
    """(index, kept span) of the newest summary message in ``history``, or None."""
    for i in range(len(history) - 1, -1, -1):
        kept = history[i].metadata.get(SUMMARY_KEY)
        if kept is not None and history[i].role == "system":
            return i, int(kept)
    return None


def _from_summary(history: Sequence[Message]) -> list[Message]:
    """The context a stored tail stands for: the newest summary, its kept span, what follows."""
    found = _newest_summary(history)
    if found is None:
        return list(history)
    index, kept = found
    span = [m for m in history[max(index - kept, 0) : index] if SUMMARY_KEY not in m.metadata]
    return [history[index], *span, *history[index + 1 :]]

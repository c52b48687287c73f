"""Fitting a conversation into a model's context window.

:func:`truncate_messages` is the pure function: it keeps the system messages and the newest
messages that fit a token budget, dropping the oldest whole turns first, never separating an
assistant message that asked for tools from the ``tool`` messages that answer it, and
repairing histories that already contain orphaned tool messages.

The strategies are pipeline stages (``async (ctx, call_next)``) that rewrite
``ctx.messages``, the list the provider will be sent:

* :class:`SlidingWindow` keeps the newest ``max_messages``;
* :class:`TokenBudget` keeps what fits ``max_tokens`` (via :func:`truncate_messages`);
* :class:`TimeWindow` keeps what is younger than ``max_age``;
* :class:`Summarize` folds the oldest messages into a summary made by a provider.

Each also tells the load stage how much of the stored history it can use (:meth:`load_hint`
and :meth:`needs_more`), so a turn reads only the tail of a long conversation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from promptstate.exceptions import ValidationError
from promptstate.tokens import HeuristicTokenCounter, TokenCounter, with_tokens
from promptstate.types import Message, utcnow

if TYPE_CHECKING:
    from promptstate.providers.base import Provider
    from promptstate.stages.context import ExecutionContext

__all__ = [
    "SUMMARY_KEY",
    "SlidingWindow",
    "Summarize",
    "TimeWindow",
    "TokenBudget",
    "TruncationStrategy",
    "repair_tool_pairs",
    "truncate_messages",
]

logger = logging.getLogger(__name__)

#: ``Message.metadata`` key marking a summary message made by :class:`Summarize`. Its value is
#: how many stored messages right before the summary it did *not* fold (the kept tail).
SUMMARY_KEY = "promptstate.summary"

_DEFAULT_COUNTER = HeuristicTokenCounter()

#: How many per-turn variants (other limits) of one strategy are kept.
_MAX_COPIES = 32


def _positive_int(value: object, what: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValidationError(f"{what} must be an int >= {0 if allow_zero else 1}, got {value!r}")
    return value


def _tokens(message: Message, counter: TokenCounter) -> int:
    return message.tokens if message.tokens is not None else counter.count(message)


# -- blocks and turns ----------------------------------------------------------------------


def _blocks(messages: Sequence[Message]) -> list[list[int]]:
    """Group the indexes of non-system messages into blocks, dropping orphans.

    A block is one message, or an assistant message with ``tool_calls`` followed by the
    ``tool`` messages answering its calls. A ``tool`` message that answers no call of the
    block right before it is an orphan and is left out; so is an assistant message whose calls
    are not all answered, unless it is the last block (the model is waiting for tool results).
    System messages are not in any block.
    """
    blocks: list[list[int]] = []
    open_calls: set[str] | None = None  # ids the current tool block still waits for
    complete = True
    for i, m in enumerate(messages):
        if m.role == "system":
            continue
        if m.role == "tool":
            if open_calls is not None and m.tool_call_id in open_calls:
                open_calls.discard(m.tool_call_id)
                blocks[-1].append(i)
                complete = not open_calls
            continue  # an orphan: dropped
        if open_calls is not None and not complete:
            blocks.pop()  # the previous tool block never got all its answers
        if m.role == "assistant" and m.tool_calls:
            open_calls = {c.id for c in m.tool_calls}
            complete = False
        else:
            open_calls = None
            complete = True
        blocks.append([i])
    return blocks


def repair_tool_pairs(messages: Sequence[Message]) -> list[Message]:
    """``messages`` without orphaned ``tool`` messages or unanswered tool calls mid-history.

    Kept: system messages, ordinary messages, and each assistant message with ``tool_calls``
    together with the ``tool`` messages that answer it. Dropped: ``tool`` messages that answer
    no call right before them, and assistant tool calls left unanswered (unless they are the
    last thing in the history). Order is preserved.
    """
    keep = {i for block in _blocks(messages) for i in block}
    return [m for i, m in enumerate(messages) if m.role == "system" or i in keep]


def truncate_messages(
    messages: Sequence[Message], max_tokens: int, *, counter: TokenCounter | None = None
) -> list[Message]:
    """The system messages and the newest messages that fit ``max_tokens``, in order.

    System messages are always kept. The rest is kept newest first, dropping the oldest whole
    turns (a turn starts at a ``user`` message) while the total is over budget; when the newest
    turn alone is too big, its oldest parts go, one block at a time. An assistant message with
    ``tool_calls`` and its ``tool`` answers are kept or dropped together, and orphaned tool
    messages are dropped (see :func:`repair_tool_pairs`).

    Each message's kept ``tokens`` count is used when present, else ``counter`` counts it
    (default: :class:`~promptstate.tokens.HeuristicTokenCounter`).

    The result fits the budget unless the system messages alone exceed it (they are kept
    anyway).

    Raises:
        ValidationError: ``max_tokens`` is not an int >= 0.
    """
    _positive_int(max_tokens, "max_tokens", allow_zero=True)
    counter = counter or _DEFAULT_COUNTER
    budget = max_tokens
    total = 0
    plain = True
    for m in messages:
        tokens = m.tokens
        if tokens is None:
            tokens = counter.count(m)
        total += tokens
        role = m.role
        if role == "system":
            budget -= tokens
        elif role == "tool" or m.tool_calls:
            plain = False
    if plain:
        if total <= max_tokens:  # everything fits: the common case, decided in one pass
            return list(messages)
        return _truncate_plain(messages, budget, counter)
    return _truncate_blocks(messages, budget, counter)


def _truncate_blocks(
    messages: Sequence[Message], budget: int, counter: TokenCounter
) -> list[Message]:
    """:func:`truncate_messages` for any history, tool blocks and orphans included."""
    blocks = _blocks(messages)

    # Walk the blocks from the newest, a turn at a time (a turn starts at a user message):
    # keep whole turns while they fit, and stop at the first that does not.
    costs: dict[int, int] = {}
    first_kept = len(blocks)
    used = pending = 0
    for b in range(len(blocks) - 1, -1, -1):
        cost = 0
        for i in blocks[b]:
            tokens = messages[i].tokens
            cost += counter.count(messages[i]) if tokens is None else tokens
        costs[b] = cost
        pending += cost
        if b and messages[blocks[b][0]].role != "user":
            continue
        if used + pending > budget:
            if first_kept == len(blocks):
                # The newest turn alone does not fit: keep its newest blocks that do.
                while first_kept > b and used + costs[first_kept - 1] <= budget:
                    first_kept -= 1
                    used += costs[first_kept]
            break
        used += pending
        pending = 0
        first_kept = b
    if first_kept == 0:
        keep_all = {i for block in blocks for i in block}
        if len(keep_all) + sum(m.role == "system" for m in messages) == len(messages):
            return list(messages)
        return [m for i, m in enumerate(messages) if m.role == "system" or i in keep_all]
    keep = {i for block in blocks[first_kept:] for i in block}
    return [m for i, m in enumerate(messages) if m.role == "system" or i in keep]


def _truncate_plain(
    messages: Sequence[Message], budget: int, counter: TokenCounter
) -> list[Message]:
    """:func:`truncate_messages` for a history without tool messages: every message is a block."""
    used = pending = 0
    first = len(messages)  # the oldest kept position
    turn: list[tuple[int, int]] = []  # (position, tokens) of the turn being added up
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role == "system":
            continue
        tokens = m.tokens
        if tokens is None:
            tokens = counter.count(m)
        pending += tokens
        turn.append((i, tokens))
        if m.role != "user":
            continue
        if used + pending > budget:
            break
        used += pending
        pending = 0
        turn.clear()
        first = i
    else:
        if turn and used + pending <= budget:  # a leading turn that starts without a user
            first = turn[-1][0]
            turn.clear()
    if turn and first == len(messages):
        # The newest turn alone does not fit: keep its newest messages that do.
        for i, tokens in turn:
            if used + tokens > budget:
                break
            used += tokens
            first = i
    if first == 0:
        return list(messages)
    head = [m for m in messages[:first] if m.role == "system"]
    head.extend(messages[first:])
    return head


# -- strategies ----------------------------------------------------------------------------


class TruncationStrategy:
    """The base of the strategies: a pipeline stage that rewrites ``ctx.messages``.

    Subclasses implement :meth:`apply`; :meth:`load_hint` and :meth:`needs_more` tell the load
    stage how much stored history to read. A strategy whose limit a turn may change
    (``execute(..., max_tokens=...)``) names it in :attr:`turn_limits` and returns itself
    with that limit from :meth:`for_turn`.
    """

    #: The per-turn limits (``"max_tokens"``, ``"max_messages"``) this strategy applies.
    turn_limits: frozenset[str] = frozenset()

    def for_turn(self, max_tokens: int | None, max_messages: int | None) -> TruncationStrategy:
        """This strategy with a turn's limits (``None``: keep its own); ``self`` by default."""
        return self

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

    @property
    def inactive(self) -> bool:
        """Whether the strategy has no limit (for this turn) and passes every message on."""
        return False


class _Limited(TruncationStrategy):
    """A strategy with one numeric limit that a turn may change: copies with other limits are
    kept (a few, most recent) so each keeps its own learned load window."""

    __slots__ = ("_copies",)

    _limit_name: str

    def __init__(self) -> None:
        self._copies: dict[int, _Limited] = {}

    def _limit(self) -> int | None:
        raise NotImplementedError

    def _with_limit(self, limit: int) -> _Limited:
        raise NotImplementedError

    def for_turn(self, max_tokens: int | None, max_messages: int | None) -> TruncationStrategy:
        limit = max_tokens if self._limit_name == "max_tokens" else max_messages
        if limit is None or limit == self._limit():
            return self
        copies = self._copies
        found = copies.get(limit)
        if found is None:
            if len(copies) >= _MAX_COPIES:
                del copies[next(iter(copies))]  # the oldest
            found = copies[limit] = self._with_limit(limit)
        return found


class SlidingWindow(_Limited):
    """Keep the system messages and the newest ``max_messages`` others.

    A tool block cut by the window is dropped whole, so the result may hold fewer.

    Args:
        max_messages: How many messages to keep. ``None`` keeps all of them, except in a turn
            given its own ``max_messages`` (``Pipeline.execute(..., max_messages=...)``).
    """

    __slots__ = ("max_messages",)

    turn_limits = frozenset({"max_messages"})
    _limit_name = "max_messages"

    def __init__(self, max_messages: int | None) -> None:
        super().__init__()
        self.max_messages = (
            None if max_messages is None else _positive_int(max_messages, "max_messages")
        )

    def __repr__(self) -> str:
        return f"SlidingWindow({self.max_messages})"

    def _limit(self) -> int | None:
        return self.max_messages

    def _with_limit(self, limit: int) -> SlidingWindow:
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


class TokenBudget(_Limited):
    """Keep what fits ``max_tokens`` (:func:`truncate_messages`).

    Args:
        max_tokens: The prompt budget, in the pipeline's token counter's tokens. ``None`` sends
            everything, except in a turn given its own ``max_tokens``
            (``Pipeline.execute(..., max_tokens=...)``).
    """

    __slots__ = ("_window", "max_tokens")

    turn_limits = frozenset({"max_tokens"})
    _limit_name = "max_tokens"

    def __init__(self, max_tokens: int | None) -> None:
        super().__init__()
        self.max_tokens = None if max_tokens is None else _positive_int(max_tokens, "max_tokens")
        self._window = 64

    def __repr__(self) -> str:
        return f"TokenBudget({self.max_tokens})"

    def _limit(self) -> int | None:
        return self.max_tokens

    def _with_limit(self, limit: int) -> TokenBudget:
        return TokenBudget(limit)

    @property
    def inactive(self) -> bool:
        return self.max_tokens is None

    def load_hint(self) -> int | None:
        return None if self.max_tokens is None else self._window

    def needs_more(self, history: Sequence[Message]) -> bool:
        limit = self.max_tokens
        if limit is None:
            return False
        total = 0
        for m in reversed(history):
            tokens = m.tokens
            total += _DEFAULT_COUNTER.count(m) if tokens is None else tokens
            if total >= limit:
                return False
        return True

    def apply(self, messages: Sequence[Message], counter: TokenCounter) -> list[Message]:
        if self.max_tokens is None:
            return list(messages)
        kept = truncate_messages(messages, self.max_tokens, counter=counter)
        # Start the next load near what this one needed (the estimate is shared by sessions).
        self._window = max(16, len(kept) + len(kept) // 8 + 4)
        return kept


class TimeWindow(TruncationStrategy):
    """Keep the system messages and the messages younger than ``max_age``.

    A tool block is kept when its first message is young enough.

    Args:
        max_age: A ``timedelta`` or seconds.
    """

    __slots__ = ("_window", "max_age")

    def __init__(self, max_age: timedelta | float) -> None:
        if isinstance(max_age, timedelta):
            seconds = max_age.total_seconds()
        elif isinstance(max_age, (int, float)) and not isinstance(max_age, bool):
            seconds = float(max_age)
        else:
            raise ValidationError(f"max_age must be a timedelta or seconds, got {max_age!r}")
        if not 0 < seconds < float("inf"):
            raise ValidationError(f"max_age must be positive and finite, got {max_age!r}")
        self.max_age = timedelta(seconds=seconds)
        self._window = 32

    def __repr__(self) -> str:
        return f"TimeWindow({self.max_age!r})"

    def load_hint(self) -> int | None:
        return self._window

    def needs_more(self, history: Sequence[Message]) -> bool:
        cutoff = utcnow() - self.max_age
        return bool(history) and history[0].timestamp >= cutoff

    def apply(self, messages: Sequence[Message], counter: TokenCounter) -> list[Message]:
        cutoff = utcnow() - self.max_age
        keep = {
            i
            for block in _blocks(messages)
            if messages[block[0]].timestamp >= cutoff
            for i in block
        }
        kept = [m for i, m in enumerate(messages) if m.role == "system" or i in keep]
        self._window = max(16, len(kept) * 2)
        return kept


class Summarize(_Limited):
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
    _limit_name = "max_tokens"

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

    def _limit(self) -> int | None:
        return self.max_tokens

    def _with_limit(self, limit: int) -> Summarize:
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

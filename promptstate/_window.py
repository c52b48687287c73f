"""The window policy: which stored messages fit a model's context window.

Pure functions on message lists, below the stages that use them
(:mod:`promptstate.stages.truncate` and the strategies beside it).
:func:`truncate_messages` keeps the system messages and the newest messages that fit a
token budget, dropping the oldest whole turns first, never separating an assistant message
that asked for tools from the ``tool`` messages that answer it, and repairing histories that
already contain orphaned tool messages.

The public entry point is :mod:`promptstate.truncation`, which re-exports
:func:`truncate_messages` and :func:`repair_tool_pairs` with the strategies.
"""

from __future__ import annotations

from collections.abc import Sequence

from promptstate.exceptions import ValidationError
from promptstate.tokens import HeuristicTokenCounter, TokenCounter
from promptstate.types import Message

__all__ = ["repair_tool_pairs", "truncate_messages"]

_DEFAULT_COUNTER = HeuristicTokenCounter()


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
    # One pass for the system messages (their tokens come off the budget) and the kind of
    # history; the newest-first walk then counts only what it keeps, and stops at the budget.
    budget = max_tokens
    plain = True
    for m in messages:
        role = m.role
        if role == "system":
            tokens = m.tokens
            budget -= counter.count(m) if tokens is None else tokens
        elif plain and (role == "tool" or m.tool_calls):
            plain = False
    if plain:
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
    count = len(messages)
    first = count  # the oldest kept position
    for i in range(count - 1, -1, -1):
        m = messages[i]
        role = m.role
        if role == "system":
            continue
        tokens = m.tokens
        pending += counter.count(m) if tokens is None else tokens
        if role != "user":
            continue
        if used + pending > budget:
            break
        used += pending
        pending = 0
        first = i
    else:
        # A leading turn that starts without a user message: kept whole if it fits.
        lead = next((i for i in range(first) if messages[i].role != "system"), first)
        if used + pending <= budget:
            first = lead
    if first == count:
        # The newest turn alone does not fit: keep its newest messages that do.
        for i in range(count - 1, -1, -1):
            m = messages[i]
            if m.role == "system":
                continue
            tokens = m.tokens
            tokens = counter.count(m) if tokens is None else tokens
            if used + tokens > budget:
                break
            used += tokens
            first = i
            if m.role == "user":
                break
    if first == 0:
        return list(messages)
    head = [m for m in messages[:first] if m.role == "system"]
    head.extend(messages[first:])
    return head

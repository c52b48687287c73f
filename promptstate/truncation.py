"""Fitting a conversation into a model's context window: the public entry point.

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

Each also tells the load stage how much of the stored history it can use (``load_hint``
and ``needs_more``), so a turn reads only the tail of a long conversation.

This module only re-exports; the code lives below it, where the layers show: the window
policy in :mod:`promptstate._window`, the strategies as stages in
:mod:`promptstate.stages` (:mod:`~promptstate.stages.truncate` for the base,
:mod:`~promptstate.stages.sliding_window`, :mod:`~promptstate.stages.token_budget`,
:mod:`~promptstate.stages.time_window`, :mod:`~promptstate.stages.summarize`). Nothing in
the package imports this module but ``promptstate/__init__.py``.
"""

from __future__ import annotations

from promptstate._window import repair_tool_pairs, truncate_messages
from promptstate.stages.sliding_window import SlidingWindow
from promptstate.stages.summarize import SUMMARY_KEY, Summarize
from promptstate.stages.time_window import TimeWindow
from promptstate.stages.token_budget import TokenBudget
from promptstate.stages.truncate import TruncationStrategy

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

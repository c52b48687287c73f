"""The pipeline stages, one small public class each, and the stage contract.

A stage is any ``async (ctx, call_next) -> None`` (:class:`Middleware`, the contract in
:mod:`promptstate.stages.context`); it does its work and then awaits ``call_next(ctx)`` to run
the rest of the chain. The defaults, in order:

* :class:`LoadState` (:mod:`~promptstate.stages.load_state`) reads the stored history the
  truncation strategy can use;
* a truncation strategy fits ``ctx.messages`` to the window: :class:`SlidingWindow`,
  :class:`TokenBudget`, :class:`TimeWindow` or :class:`Summarize`, each a
  :class:`TruncationStrategy` (:mod:`~promptstate.stages.truncate`) in a module of its own;
* :class:`ToolLoop` (:mod:`~promptstate.stages.tool_loop`), when the pipeline has tools, runs
  the rest of the chain once per round of tool calls;
* :class:`CallProvider` asks the provider and records the response, usage and cost;
* :class:`CheckReply` runs the prompt's validators (guardrails) on the reply;
* :class:`SaveState` appends the turn to the store in one atomic, retry-safe write.

Nothing under ``stages/`` imports :mod:`promptstate.pipeline`, which builds the chain from
them, nor the public re-exporting modules :mod:`promptstate.truncation` and
:mod:`promptstate.tools` (``tests/test_architecture.py`` checks it).
"""

from promptstate.stages.call_provider import CallProvider
from promptstate.stages.check_reply import CheckReply
from promptstate.stages.context import CallNext, ExecutionContext, Middleware, WindowStrategy
from promptstate.stages.load_state import LoadState
from promptstate.stages.save_state import SaveState
from promptstate.stages.sliding_window import SlidingWindow
from promptstate.stages.summarize import Summarize
from promptstate.stages.time_window import TimeWindow
from promptstate.stages.token_budget import TokenBudget
from promptstate.stages.tool_loop import ToolLoop
from promptstate.stages.truncate import TruncationStrategy

__all__ = [
    "CallNext",
    "CallProvider",
    "CheckReply",
    "ExecutionContext",
    "LoadState",
    "Middleware",
    "SaveState",
    "SlidingWindow",
    "Summarize",
    "TimeWindow",
    "TokenBudget",
    "ToolLoop",
    "TruncationStrategy",
    "WindowStrategy",
]

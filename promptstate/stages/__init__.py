"""The default pipeline stages, one small public class each.

A stage is any ``async (ctx, call_next) -> None`` (:class:`Middleware`, the contract in
:mod:`promptstate.stages.context`); it does its work and then awaits ``call_next(ctx)`` to run
the rest of the chain. The defaults, in order:

* :class:`LoadState` reads the stored history the truncation strategy can use;
* a truncation strategy (:mod:`promptstate.truncation`) fits ``ctx.messages`` to the window;
* :class:`CallProvider` asks the provider and records the response, usage and cost;
* :class:`CheckReply` runs the prompt's validators (guardrails) on the reply;
* :class:`SaveState` appends the turn to the store in one atomic, retry-safe write.
"""

from promptstate.stages.call_provider import CallProvider
from promptstate.stages.check_reply import CheckReply
from promptstate.stages.context import CallNext, ExecutionContext, Middleware, WindowStrategy
from promptstate.stages.load_state import LoadState
from promptstate.stages.save_state import SaveState

__all__ = [
    "CallNext",
    "CallProvider",
    "CheckReply",
    "ExecutionContext",
    "LoadState",
    "Middleware",
    "SaveState",
    "WindowStrategy",
]

"""The :class:`ToolLoop` stage: run the tools the model asks for, and ask it again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from promptstate._tools import Tool, ToolSpec, as_tools, run_tool_calls
from promptstate.exceptions import ValidationError
from promptstate.stages.call_provider import CallProvider
from promptstate.tokens import with_tokens

if TYPE_CHECKING:
    from promptstate.stages.context import ExecutionContext, Middleware

__all__ = ["ToolLoop", "with_tool_loop"]


class ToolLoop:
    """A pipeline stage that runs the tools the model asks for and asks it again.

    Put it right before :class:`~promptstate.stages.CallProvider` (``Pipeline(tools=...)``
    does that for you). It runs the rest of the chain (call the model, save) once per round:

    1. the model is called with ``tools`` in the options (unless the turn set its own);
    2. the save stage stores the round: the new messages (the user's message, or the tool
       results of the previous round) and the model's answer, under a round-specific turn id,
       with the round's cost;
    3. if the answer asks for tools, they run (concurrently), the call and the results are
       added to what the model sees, and the loop goes on with the results as the round's new
       messages.

    After ``max_rounds`` rounds of tools the model is asked once more with
    ``tool_choice="none"`` for a final answer. A crash or provider error mid-loop leaves every
    finished round stored; only the round in flight is lost (an interrupted call is later
    answered with an error result in the request, see :func:`pair_tool_messages`). At the end,
    ``ctx.cost`` and ``ctx.usage`` cover every round, ``ctx.turn_id`` is the first round's, and
    ``ctx.data["tool_rounds"]`` says how many rounds ran tools.

    Args:
        tools: Tools, functions or JSON tool objects (those without a function answer with an
            error when called).
        max_rounds: How many rounds of tool calls one turn may run (>= 0).
    """

    __slots__ = ("max_rounds", "tools")

    #: Runs the rest of the chain once per turn (see :class:`~promptstate.stages.Middleware`).
    single_pass = True

    def __init__(
        self, tools: Iterable[Tool | Callable[..., Any] | ToolSpec], *, max_rounds: int = 8
    ) -> None:
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
            raise ValidationError(f"max_tool_rounds must be an int >= 0, got {max_rounds!r}")
        self.tools = as_tools(tools)
        self.max_rounds = max_rounds

    def __repr__(self) -> str:
        return f"ToolLoop(tools={list(self.tools)!r}, max_rounds={self.max_rounds})"

    async def __call__(
        self, ctx: ExecutionContext, call_next: Callable[[ExecutionContext], Awaitable[None]]
    ) -> None:
        if self.tools and ctx.options.get("tools") is None:
            ctx.options = {**ctx.options, "tools": list(self.tools.values())}
        if self.max_rounds == 0:
            ctx.options = {**ctx.options, "tool_choice": "none"}
        first_turn_id = ctx.turn_id
        total_cost = 0.0
        rounds = 0
        while True:
            await call_next(ctx)
            total_cost += ctx.cost
            response = ctx.response
            if response is None or not response.tool_calls or rounds >= self.max_rounds:
                break
            rounds += 1
            results = await run_tool_calls(response.tool_calls, self.tools)
            results = [with_tokens(m, ctx.counter) for m in results]
            ctx.messages = [*ctx.messages, response, *results]
            ctx.pending = results[:-1]
            ctx.input = results[-1]
            ctx.turn_id = f"{first_turn_id}.{rounds}"
            ctx.cost = 0.0
            ctx.response = None
            ctx.completion = None
            if rounds >= self.max_rounds:
                ctx.options = {**ctx.options, "tool_choice": "none"}
        ctx.cost = total_cost
        ctx.turn_id = first_turn_id
        ctx.data["tool_rounds"] = rounds


def with_tool_loop(
    stages: Sequence[Middleware],
    tools: Iterable[Tool | Callable[..., Any] | ToolSpec],
    max_rounds: int,
) -> list[Middleware]:
    """``stages`` with a :class:`ToolLoop` inserted right before the first ``CallProvider``.

    Raises:
        ValidationError: No ``CallProvider`` stage to loop around, or a ``ToolLoop`` is
            already in ``stages``.
    """
    loop = ToolLoop(tools, max_rounds=max_rounds)
    result: list[Middleware] = list(stages)
    if any(isinstance(s, ToolLoop) for s in result):
        raise ValidationError("give tools to Pipeline(tools=...) or to a ToolLoop stage, not both")
    for index, stage in enumerate(result):
        if isinstance(stage, CallProvider):
            result.insert(index, loop)
            return result
    raise ValidationError("tools= needs a CallProvider stage in the middleware to loop around")

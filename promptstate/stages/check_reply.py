"""The guardrail stage: check the assistant's reply against the turn's validators."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import msgspec

from promptstate.exceptions import GuardrailError, ValidationError
from promptstate.validators import VIOLATIONS_KEY

if TYPE_CHECKING:
    from promptstate.stages.context import ExecutionContext, Middleware

__all__ = ["CheckReply", "with_check_reply"]

logger = logging.getLogger(__name__)


class CheckReply:
    """Check ``ctx.response`` with ``ctx.guardrails`` before the save stage stores it.

    A violated validator with ``fail_on_violation`` raises
    :class:`~promptstate.exceptions.GuardrailError` (the rest of the chain does not run, so
    nothing of the turn is stored; a streamed turn raises it after its last text chunk).
    Other violations are logged at WARNING and recorded in the reply's
    ``metadata["violations"]``. A reply with no text (one that only asks for tools) is not
    checked. Without guardrails the stage only calls the next one.
    """

    __slots__ = ()

    #: Runs the rest of the chain once per turn (see :class:`~promptstate.stages.Middleware`).
    single_pass = True

    def __repr__(self) -> str:
        return "CheckReply()"

    async def __call__(
        self, ctx: ExecutionContext, call_next: Callable[[ExecutionContext], Awaitable[None]]
    ) -> None:
        guardrails = ctx.guardrails
        reply = ctx.response
        if guardrails and reply is not None and reply.content:
            violations = await guardrails.check(reply)
            if violations:
                for v in violations:
                    logger.warning(
                        "reply in session %r violated validator %r%s: %s",
                        ctx.session_id,
                        v.type,
                        " (fail_on_violation)" if v.fail_on_violation else "",
                        v.message,
                    )
                failing = [v for v in violations if v.fail_on_violation]
                if failing:
                    raise GuardrailError(
                        f"the reply in session {ctx.session_id!r} violated "
                        + "; ".join(f"{v.type}: {v.message}" for v in failing)
                        + " (nothing of the turn was stored)",
                        violations=tuple(violations),
                    )
                recorded = [{"type": v.type, "message": v.message} for v in violations]
                ctx.response = msgspec.structs.replace(
                    reply, metadata={**reply.metadata, VIOLATIONS_KEY: recorded}
                )
        await call_next(ctx)


def with_check_reply(stages: Sequence[Middleware]) -> list[Middleware]:
    """``stages`` with a :class:`CheckReply` right before the first save stage (if absent).

    Raises:
        ValidationError: No :class:`~promptstate.stages.SaveState` to put it before.
    """
    from promptstate.stages.save_state import SaveState

    result: list[Middleware] = list(stages)
    if any(isinstance(s, CheckReply) for s in result):
        return result
    for index, stage in enumerate(result):
        if isinstance(stage, SaveState):
            result.insert(index, CheckReply())
            return result
    raise ValidationError(
        "guardrails need a CheckReply stage (or a SaveState to put it before) in the middleware"
    )

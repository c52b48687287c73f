"""The provider stage: send ``ctx.messages`` to the model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from promptstate.exceptions import ProviderError
from promptstate.providers._http import HTTPProvider
from promptstate.providers.base import Chunk, Completion
from promptstate.tokens import count_tokens, with_tokens
from promptstate.types import Message, Usage, utcnow

if TYPE_CHECKING:
    from promptstate.stages.context import ExecutionContext

__all__ = ["CallProvider"]


class CallProvider:
    """Call ``ctx.provider`` with ``ctx.messages`` and ``ctx.options``.

    Sets ``ctx.completion``, ``ctx.response`` (the assistant message, its tokens counted) and
    adds to ``ctx.usage`` and ``ctx.cost``. In a streamed turn it forwards each text chunk to
    the consumer as it arrives. Any exception from the provider other than a
    :class:`~promptstate.exceptions.ProviderError` is raised as one (the original chained);
    nothing after this stage runs, so nothing is saved.
    """

    __slots__ = ()

    #: Runs the rest of the chain once per turn (see :class:`~promptstate.stages.Middleware`).
    single_pass = True

    def __repr__(self) -> str:
        return "CallProvider()"

    async def __call__(
        self, ctx: ExecutionContext, call_next: Callable[[ExecutionContext], Awaitable[None]]
    ) -> None:
        provider = ctx.provider
        try:
            if ctx.emit is None:
                completion = await provider.complete(ctx.messages, **ctx.options)
            else:
                completion = await self._stream(ctx)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(
                f"{type(provider).__name__} failed for session {ctx.session_id!r}: {exc!r}"
            ) from exc
        if not isinstance(completion, Completion):
            raise ProviderError(
                f"{type(provider).__name__}.complete() returned {type(completion).__name__}, "
                "not a Completion"
            )
        message = completion.message
        if message.role != "assistant":
            message = msgspec.structs.replace(message, role="assistant")
        ctx.response = with_tokens(message, ctx.counter)
        if completion.usage.estimated:
            completion = self._estimated(ctx, completion, ctx.response.tokens or 0)
        ctx.completion = completion
        ctx.usage = ctx.usage + completion.usage
        ctx.cost += completion.cost
        await call_next(ctx)

    @staticmethod
    def _estimated(ctx: ExecutionContext, completion: Completion, output: int) -> Completion:
        """A completion whose server reported no usage, counted with the pipeline's counter
        (the tokens the prompt and reply hold in this turn) and priced again."""
        usage = Usage(count_tokens(ctx.messages, ctx.counter), output, estimated=True)
        cost = completion.cost
        if isinstance(ctx.provider, HTTPProvider):
            model = ctx.options.get("model")
            cost = ctx.provider.cost(
                usage.input_tokens,
                usage.output_tokens,
                model=model if isinstance(model, str) and model else None,
            )
        return msgspec.structs.replace(completion, usage=usage, cost=cost)

    async def _stream(self, ctx: ExecutionContext) -> Completion:
        emit = ctx.emit
        assert emit is not None
        parts: list[str] = []
        final: Chunk | None = None
        stream: AsyncIterator[Chunk] = ctx.provider.stream(ctx.messages, **ctx.options)
        try:
            async for chunk in stream:
                if chunk.text:
                    parts.append(chunk.text)
                    await emit(chunk if not chunk.done else Chunk(text=chunk.text))
                if chunk.done:
                    final = chunk
                    break
        finally:
            aclose: Any = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        text = "".join(parts)
        if final is not None and final.message is not None:
            message = final.message
        else:
            message = Message(
                "assistant",
                text,
                tool_calls=final.tool_calls if final is not None else (),
                timestamp=utcnow(),
            )
        return Completion(
            message=message,
            usage=(final.usage if final is not None and final.usage is not None else Usage()),
            cost=final.cost if final is not None else 0.0,
            finish_reason=final.finish_reason if final is not None else None,
        )

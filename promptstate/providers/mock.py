"""A provider that needs no network: canned replies or a function of the messages."""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio

from promptstate.exceptions import ClosedError, ProviderError, ValidationError
from promptstate.providers.base import Chunk, Completion
from promptstate.tokens import HeuristicTokenCounter, TokenCounter, count_tokens
from promptstate.types import Message, Usage

__all__ = ["MockProvider"]

Reply = str | Message
Responder = Callable[[list[Message]], Reply | Awaitable[Reply]]

_WORDS = re.compile(r"\s*\S+\s*|\s+")


class MockProvider:
    """A provider for tests and demos.

    Args:
        responses: Either a list answered in turn (each a ``str``, a :class:`Message`, or an
            exception instance, which is raised for that call), or a callable (plain or async)
            that receives the list of messages the model would see and returns a ``str`` or a
            ``Message`` (or raises).
        cycle: Start the list over when it runs out, instead of raising
            :class:`~promptstate.exceptions.ProviderError`.
        token_counter: Counts ``usage`` (default: :class:`HeuristicTokenCounter`).
        price: USD per (input token, output token); ``cost`` is 0.0 without it.
        chunk_size: In :meth:`stream`, characters per chunk; by default one word per chunk.
        delay: Seconds to wait before answering (and between streamed chunks), to test timing.
        model: The model name reported in completions.

    Attributes:
        calls: How many requests it answered (or failed).
        last_messages: The messages of the last request.
        last_options: The options of the last request.
    """

    #: The provider's name in traces (``gen_ai.provider.name``).
    name = "mock"

    def __init__(
        self,
        responses: Sequence[Reply | BaseException] | Responder,
        *,
        cycle: bool = False,
        token_counter: TokenCounter | None = None,
        price: tuple[float, float] | None = None,
        chunk_size: int | None = None,
        delay: float = 0.0,
        model: str = "mock",
    ) -> None:
        if callable(responses):
            self._responder: Responder | None = responses
            self._responses: list[Reply | BaseException] = []
        elif isinstance(responses, (str, bytes, Message)) or not isinstance(responses, Iterable):
            raise ValidationError(
                f"responses must be a list of replies or a callable, got {type(responses).__name__}"
            )
        else:
            self._responder = None
            self._responses = list(responses)
            for item in self._responses:
                if not isinstance(item, (str, Message, BaseException)):
                    raise ValidationError(
                        f"a response must be a str, a Message or an exception, got {item!r}"
                    )
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValidationError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise ValidationError(f"delay must be a number >= 0, got {delay!r}")
        self._cycle = cycle
        self._counter = token_counter or HeuristicTokenCounter()
        self._price = price
        self._chunk_size = chunk_size
        self._delay = float(delay)
        self._index = 0
        self._closed = False
        self.model = model
        self.calls = 0
        self.last_messages: list[Message] = []
        self.last_options: dict[str, Any] = {}

    def __repr__(self) -> str:
        kind = "callable" if self._responder is not None else f"{len(self._responses)} replies"
        return f"MockProvider({kind}, model={self.model!r})"

    async def __aenter__(self) -> MockProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Mark the provider closed; later calls raise :class:`ClosedError`."""
        self._closed = True

    async def _reply(self, messages: Sequence[Message], options: dict[str, Any]) -> Message:
        if self._closed:
            raise ClosedError("MockProvider is closed")
        seen = list(messages)
        self.calls += 1
        self.last_messages = seen
        self.last_options = options
        if self._delay:
            await anyio.sleep(self._delay)
        if self._responder is not None:
            reply: Any = self._responder(seen)
            if inspect.isawaitable(reply):
                reply = await reply
        else:
            if self._index >= len(self._responses):
                if not self._cycle or not self._responses:
                    raise ProviderError(
                        f"MockProvider ran out of responses after {len(self._responses)}"
                    )
                self._index = 0
            reply = self._responses[self._index]
            self._index += 1
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, str):
            return Message("assistant", reply)
        if isinstance(reply, Message):
            return reply
        raise ProviderError(f"MockProvider's responder returned {type(reply).__name__}")

    def _usage(self, messages: Sequence[Message], reply: Message) -> tuple[Usage, float]:
        usage = Usage(count_tokens(messages, self._counter), self._counter.count(reply))
        cost = 0.0
        if self._price is not None:
            cost = usage.input_tokens * self._price[0] + usage.output_tokens * self._price[1]
        return usage, cost

    async def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """The next reply, with usage counted by the token counter."""
        reply = await self._reply(messages, options)
        usage, cost = self._usage(messages, reply)
        return Completion(
            message=reply,
            usage=usage,
            cost=cost,
            finish_reason="tool_calls" if reply.tool_calls else "stop",
            model=self.model,
        )

    async def stream(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[Chunk]:
        """The next reply in pieces (words, or ``chunk_size`` characters); the last is done."""
        reply = await self._reply(messages, options)
        text = reply.content
        if self._chunk_size is not None:
            size = self._chunk_size
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
        else:
            pieces = _WORDS.findall(text)
        for piece in pieces:
            yield Chunk(text=piece)
            if self._delay:
                await anyio.sleep(self._delay)
        usage, cost = self._usage(messages, reply)
        yield Chunk(
            done=True,
            message=reply,
            tool_calls=reply.tool_calls,
            usage=usage,
            cost=cost,
            finish_reason="tool_calls" if reply.tool_calls else "stop",
        )

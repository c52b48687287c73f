"""The pipeline: run one turn of a stored conversation, safely and cheaply.

::

    async with Pipeline(provider, store=store, max_tokens=4000) as pipe:
        result = await pipe.execute(session_id, "user", "Hi, I'm Alice")
        print(result.response.content)

A turn runs a chain of middleware stages, each ``async def stage(ctx, call_next)``. The chain
is built once, at construction, with the first stage listed outermost (as in Starlette). The
default chain is :class:`~promptstate.stages.LoadState` -> a truncation strategy ->
:class:`~promptstate.stages.CallProvider` -> :class:`~promptstate.stages.SaveState`.

Around the chain, and not removable, is the turn lock (:mod:`promptstate.locks`): turns on one
session never interleave, within this process or across processes sharing a store with
leases. What makes a turn safe:

* a provider failure raises :class:`~promptstate.exceptions.ProviderError` and stores nothing;
* the save is one atomic append, shielded from cancellation, so a cancelled turn is stored
  whole or not at all, and a cancelled or failed stream stores nothing;
* the save carries a turn id, so retrying it after a lost reply never stores it twice.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
import msgspec

from promptstate._resource import AsyncResource
from promptstate._tools import Tool, ToolSpec
from promptstate.exceptions import ClosedError, PromptStateError, ValidationError
from promptstate.locks import TurnLease, TurnRunner, check_timeout, new_id
from promptstate.providers.base import Chunk, Provider
from promptstate.stages import CallProvider, CheckReply, LoadState, SaveState
from promptstate.stages.check_reply import with_check_reply
from promptstate.stages.context import CallNext, ExecutionContext, Middleware
from promptstate.stages.sliding_window import SlidingWindow
from promptstate.stages.token_budget import TokenBudget
from promptstate.stages.tool_loop import with_tool_loop
from promptstate.stages.truncate import TruncationStrategy
from promptstate.stores.base import TURN_ID_KEY, Store, validate_key
from promptstate.stores.memory import MemoryStore
from promptstate.tokens import TokenCounter, with_tokens
from promptstate.types import Message, Usage
from promptstate.validators import Guardrails

if TYPE_CHECKING:
    from promptstate.integrations.opentelemetry import PipelineTelemetry

__all__ = [
    "CallNext",
    "ExecutionContext",
    "ExecutionResult",
    "Middleware",
    "Pipeline",
]

logger = logging.getLogger(__name__)


class ExecutionResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Pipeline.execute` returns.

    Attributes:
        response: The assistant's message.
        usage: Tokens the model call consumed.
        cost: Its price in USD (0.0 when the model's price is unknown), summaries included.
        messages: What the provider was sent.
        session_id: The conversation's key.
        turn_id: The turn's id (in the first stored message's ``metadata["turn_id"]``).
        message_count: The session's number of messages after the turn, when it was saved.
    """

    response: Message
    usage: Usage
    cost: float
    messages: list[Message]
    session_id: str
    turn_id: str
    message_count: int | None = None


async def _end_of_chain(ctx: ExecutionContext) -> None:
    return None


def _build_chain(stages: Sequence[Middleware]) -> CallNext:
    """Fold the stages once, in reverse, so the first listed is the outermost."""
    handler: CallNext = _end_of_chain
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Middleware, call_next: CallNext) -> CallNext:
    # Returns the stage's own awaitable: no wrapper coroutine per stage and turn (each one
    # was a frame to run and an object for the cycle collector while the turn is in flight).
    def call(ctx: ExecutionContext) -> Awaitable[None]:
        return stage(ctx, call_next)

    return call


def default_stages(
    max_tokens: int | None = None,
    *,
    max_messages: int | None = None,
) -> list[Middleware]:
    """The default chain: load -> :class:`SlidingWindow` (``max_messages``) ->
    :class:`TokenBudget` (``max_tokens``) -> call -> check the reply -> save.

    A limit left ``None`` keeps its stage in the chain, passing every message on, so a turn
    can still give its own (``execute(..., max_tokens=...)``); such a stage costs next to
    nothing. Use it to add your own stages around the defaults::

        Pipeline(provider, middleware=[my_logger, *default_stages(max_tokens=4000)])
    """
    stages: list[Middleware] = [
        LoadState(),
        SlidingWindow(max_messages),
        TokenBudget(max_tokens),
        CallProvider(),
    ]
    stages.append(CheckReply())
    stages.append(SaveState())
    return stages


def _saves_once(stages: Sequence[Middleware]) -> bool:
    """Whether the save stage runs at most once per turn, so it may release the turn's lease.

    True when every stage before the first :class:`SaveState` declares ``single_pass``: it
    runs the rest of the chain once per turn (a :class:`~promptstate.tools.ToolLoop` runs it
    once per round, but its rounds that ask for tools are not the last, and the save stage
    keeps the lease for those). A stage that does not declare it might call ``call_next``
    again, so then the lease is kept until the turn ends (one more round trip).
    """
    for stage in stages:
        if isinstance(stage, SaveState):
            return True
        if getattr(stage, "single_pass", False) is not True:
            return False
    return False


def _telemetry(store: Store, provider: Provider) -> PipelineTelemetry | None:
    """The pipeline's OpenTelemetry instruments, or None when opentelemetry-api is absent.

    Nothing of OpenTelemetry is imported without the package. ``promptstate`` in
    ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` turns it off.
    """
    global _otel_available
    if _otel_available is None:
        try:
            _otel_available = importlib.util.find_spec("opentelemetry.trace") is not None
        except (ImportError, ValueError):
            _otel_available = False
    if not _otel_available:
        return None
    disabled = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    if "promptstate" in (item.strip() for item in disabled.split(",")):
        return None
    from promptstate.integrations.opentelemetry import PipelineTelemetry

    model = getattr(provider, "model", None)
    return PipelineTelemetry(
        db_system=store.db_system,
        provider_name=str(getattr(provider, "name", None) or type(provider).__name__.lower()),
        request_model=model if isinstance(model, str) else None,
    )


_otel_available: bool | None = None


def _traced(telemetry: PipelineTelemetry, stage: Middleware) -> Middleware:
    """The bundled load, provider and save stages report spans; other stages run as they are."""
    if isinstance(stage, LoadState):
        return cast(Middleware, telemetry.wrap(stage, "load"))
    if isinstance(stage, CallProvider):
        return cast(Middleware, telemetry.wrap(stage, "provider"))
    if isinstance(stage, SaveState):
        return cast(Middleware, telemetry.wrap(stage, "save"))
    return stage


def _stream_error(failure: list[BaseException], scope: anyio.CancelScope) -> BaseException | None:
    if failure:
        return failure[0]
    if scope.cancel_called:
        return anyio.get_cancelled_exc_class()()
    return None


def _check_guardrails(guardrails: object) -> None:
    if not isinstance(guardrails, Guardrails):
        raise ValidationError(
            f"guardrails must be a promptstate.validators.Guardrails, got {guardrails!r}"
        )


def _system_messages(system: str | Sequence[Message] | None) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [Message("system", system)] if system else []
    items = list(system)
    for m in items:
        if not isinstance(m, Message):
            raise ValidationError(f"system must be a str or a list of Message, got {m!r}")
    return items


class Pipeline(AsyncResource):
    """Runs turns of stored conversations through a chain of middleware stages.

    Args:
        provider: The model provider. Borrowed: :meth:`aclose` does not close it.
        store: Where conversations live. Default: a new :class:`~promptstate.MemoryStore`,
            which the pipeline owns and closes; a store passed in is borrowed.
        middleware: The stages, first listed outermost. Default: :func:`default_stages`.
            ``max_tokens`` only shapes the default chain.
        max_tokens: The prompt budget of the default chain's :class:`TokenBudget`; ``None``
            sends the whole history.
        max_messages: Send only the newest ``max_messages`` messages (and the system
            messages): the default chain's :class:`SlidingWindow`. With ``max_tokens`` too,
            both limits hold. Only for the default chain: with ``middleware``, put a
            :class:`SlidingWindow` in it instead.
        token_counter: Counts message tokens (default: the store's counter).
        lock_timeout: Seconds a turn waits for its session to be free before
            :class:`~promptstate.exceptions.SessionBusyError`; ``None`` waits for ever.
        lease_ttl: Lifetime in seconds of the cross-process lease (renewed from a third of it
            on, within 4/9 of it, while the turn runs), for stores with leases. A dead holder
            blocks the session for at most this long.
        system: A system prompt (or system messages) sent first on every turn, never stored.
        tools: Functions (plain or async), :class:`~promptstate.tools.Tool` s or JSON tool
            objects the model may call. A :class:`~promptstate.tools.ToolLoop` is put right
            before the chain's :class:`~promptstate.stages.CallProvider` to run them.
        max_tool_rounds: How many rounds of tool calls one turn may run.
        guardrails: Validators checked on every reply (:mod:`promptstate.validators`); a turn
            may give its own. A :class:`~promptstate.stages.CheckReply` stage is put right
            before the chain's :class:`~promptstate.stages.SaveState` to run them.

    Every turn, :meth:`execute` and :meth:`stream` alike, runs through one
    :class:`~promptstate.locks.TurnRunner`: the session's lock, and its lease when the store is
    a :class:`~promptstate.LeasingStore` (asked once, here), around the chain. A streamed turn is
    a turn whose provider stage also sends chunks to an emitter.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        store: Store | None = None,
        middleware: Sequence[Middleware] | None = None,
        max_tokens: int | None = None,
        max_messages: int | None = None,
        token_counter: TokenCounter | None = None,
        lock_timeout: float | None = 30.0,
        lease_ttl: float = 30.0,
        system: str | Sequence[Message] | None = None,
        tools: Sequence[Tool | Callable[..., Any] | ToolSpec] | None = None,
        max_tool_rounds: int = 8,
        guardrails: Guardrails | None = None,
    ) -> None:
        if not callable(getattr(provider, "complete", None)):
            raise ValidationError(f"provider must have complete() and stream(), got {provider!r}")
        if store is not None and not isinstance(store, Store):
            raise ValidationError(f"store must be a promptstate Store, got {store!r}")
        self._provider = provider
        self._owns_store = store is None
        self._store: Store = MemoryStore() if store is None else store
        if middleware is None:
            stages = default_stages(max_tokens, max_messages=max_messages)
        elif max_messages is not None:
            raise ValidationError(
                "max_messages shapes the default stages; with middleware=..., put a "
                f"SlidingWindow({max_messages!r}) in it instead"
            )
        else:
            stages = list(middleware)
        if tools:
            stages = with_tool_loop(stages, tools, max_tool_rounds)
        if guardrails is not None:
            _check_guardrails(guardrails)
            stages = with_check_reply(stages)
        self._guardrails = guardrails
        self._checks_replies = any(isinstance(s, CheckReply) for s in stages)
        for stage in stages:
            if not callable(stage):
                raise ValidationError(f"a middleware must be async (ctx, call_next), got {stage!r}")
        self._middleware: tuple[Middleware, ...] = tuple(stages)
        strategies = tuple(s for s in stages if isinstance(s, TruncationStrategy))
        self._all_strategies = strategies
        # What the load stage asks, without the stages that pass everything on.
        self._strategies = tuple(s for s in strategies if not s.inactive)
        # The limits a turn may give (execute(..., max_tokens=...)): those the chain applies.
        self._turn_limits = frozenset(name for s in strategies for name in s.turn_limits)
        self._lock_timeout = check_timeout(lock_timeout, "lock_timeout")
        ttl = check_timeout(lease_ttl, "lease_ttl")
        if ttl is None:
            raise ValidationError("lease_ttl must be a positive number of seconds")
        self._lease_ttl = ttl
        # The one question asked of the store, once: does it declare cross-process leases?
        self._turns = TurnRunner(
            self._store,
            max_wait=self._lock_timeout,
            lease_ttl=ttl,
            release_on_save=_saves_once(stages),
        )
        self._leasing = self._turns.leasing
        if not self._leasing and callable(getattr(self._store, "acquire_lease", None)):
            raise ValidationError(
                f"{type(self._store).__name__} has lease methods but is not a LeasingStore: "
                "subclass promptstate.LeasingStore to declare them (a pipeline would otherwise "
                "serialize its turns within this process only)"
            )
        # When the chain starts with the load stage, a leasing store reads the first window
        # together with taking the turn's lease (acquire_and_load).
        first = stages[0] if stages else None
        self._first_load: LoadState | None = (
            first if isinstance(first, LoadState) and self._leasing else None
        )
        self._counter: TokenCounter = token_counter or self._store.token_counter
        self._system = [with_tokens(m, self._counter) for m in _system_messages(system)]
        self._closed = False
        self._tasks: set[Any] = set()
        self._streams: dict[anyio.CancelScope, anyio.Event] = {}
        self._chain = _build_chain(self._middleware)
        # With opentelemetry-api, a second chain whose load, provider and save stages report
        # spans; a turn uses it only while a tracer or meter provider is configured.
        self._telemetry = _telemetry(self._store, provider)
        self._traced_chain = self._chain
        if self._telemetry is not None:
            telemetry = self._telemetry
            self._traced_chain = _build_chain([_traced(telemetry, s) for s in self._middleware])

    def __repr__(self) -> str:
        return (
            f"Pipeline({type(self._provider).__name__}, store={type(self._store).__name__}, "
            f"middleware={list(self._middleware)!r})"
        )

    # -- properties ---------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store turns are kept in."""
        return self._store

    @property
    def provider(self) -> Provider:
        """The model provider."""
        return self._provider

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The stages, outermost first."""
        return self._middleware

    @property
    def token_counter(self) -> TokenCounter:
        """The token counter."""
        return self._counter

    # -- lifecycle ----------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._owns_store:
            await self._store.__aenter__()

    async def aclose(self) -> None:
        """Close the store if the pipeline created it; the provider is borrowed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Streams still running are cancelled (they save nothing, unless already saving).
        streams = list(self._streams.items())
        for scope, _ in streams:
            scope.cancel()
        with anyio.CancelScope(shield=True):
            for _, finished in streams:
                await finished.wait()
        if self._owns_store:
            await self._store.aclose()

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``fn`` in a task that outlives the caller's frame (for :meth:`stream`)."""
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio, or no event loop at all
            raise PromptStateError("Pipeline.stream() runs on asyncio only (for now)") from None

        async def main() -> None:
            await fn()

        task = loop.create_task(main())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- turns --------------------------------------------------------------------------------

    def _context(
        self,
        session_id: str,
        role: str | Message,
        content: str,
        metadata: Mapping[str, Any] | None,
        system: str | Sequence[Message] | None,
        options: dict[str, Any],
        guardrails: Guardrails | None,
        max_tokens: int | None,
        max_messages: int | None,
    ) -> ExecutionContext:
        self._check_open()
        strategies = self._strategies
        limits = self._limits(max_tokens, max_messages)
        if limits is not None:
            strategies = tuple(
                t for s in self._all_strategies if not (t := s.for_turn(*limits)).inactive
            )
        if guardrails is None:
            guardrails = self._guardrails
        elif not self._checks_replies:
            _check_guardrails(guardrails)
            raise ValidationError(
                "guardrails given for a turn, but the pipeline's middleware has no CheckReply "
                "stage to check them (add one before SaveState)"
            )
        else:
            _check_guardrails(guardrails)
        validate_key(session_id, what="session_id")
        if isinstance(role, Message):
            if content or metadata:
                raise ValidationError("give either a Message or a role and content, not both")
            message = role
        else:
            if not isinstance(content, str):
                raise ValidationError(f"content must be a str, got {type(content).__name__}")
            if not isinstance(role, str):
                raise ValidationError(f"role must be a str or a Message, got {role!r}")
            message = Message(role, content, metadata=dict(metadata) if metadata else {})
        turn_id = new_id()
        if message.role == "assistant" or message.role == "system":
            raise ValidationError(
                f"a turn starts with a user or tool message, not {message.role!r}"
            )
        counter = self._counter
        # The turn id rides in the new message's metadata (see Store.append_turn).
        message = msgspec.structs.replace(
            message,
            metadata={**message.metadata, TURN_ID_KEY: turn_id},
            tokens=counter.count(message) if message.tokens is None else message.tokens,
        )
        return ExecutionContext(
            session_id=session_id,
            turn_id=turn_id,
            input=message,
            store=self._store,
            provider=self._provider,
            counter=counter,
            system=self._system
            if system is None
            else [with_tokens(m, counter) for m in _system_messages(system)],
            options=options,
            strategies=strategies,
            guardrails=guardrails,
            limits=limits,
        )

    def _limits(
        self, max_tokens: object, max_messages: object
    ) -> tuple[int | None, int | None] | None:
        """A turn's ``(max_tokens, max_messages)``, checked; None when it gives neither."""
        if max_tokens is None and max_messages is None:
            return None
        return (
            self._turn_limit(max_tokens, "max_tokens", "a TokenBudget or Summarize"),
            self._turn_limit(max_messages, "max_messages", "a SlidingWindow"),
        )

    def _turn_limit(self, value: object, name: str, stage: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationError(f"{name} must be None or an int >= 1, got {value!r}")
        if name not in self._turn_limits:
            raise ValidationError(
                f"{name} given for a turn, but the pipeline's middleware has no stage that "
                f"applies it (add {stage} stage; the default stages have one)"
            )
        return value

    async def execute(
        self,
        session_id: str,
        role: str | Message,
        content: str = "",
        *,
        metadata: Mapping[str, Any] | None = None,
        system: str | Sequence[Message] | None = None,
        options: Mapping[str, Any] | None = None,
        guardrails: Guardrails | None = None,
        max_tokens: int | None = None,
        max_messages: int | None = None,
        **provider_options: Any,
    ) -> ExecutionResult:
        """Run one turn: the new message in, the assistant's answer out, both stored.

        Args:
            session_id: The conversation's key.
            role: ``"user"`` (or ``"tool"``), or a whole :class:`~promptstate.Message`.
            content: The message text.
            metadata: The new message's metadata.
            system: This turn's system prompt, instead of the pipeline's.
            options: Provider request options, for names that clash with the arguments here:
                the model's answer length is ``options={"max_tokens": 256}``.
            guardrails: This turn's validators, instead of the pipeline's.
            max_tokens: This turn's prompt budget, instead of the pipeline's (applied by the
                chain's :class:`TokenBudget` or :class:`~promptstate.truncation.Summarize`).
            max_messages: This turn's window, instead of the pipeline's (applied by the
                chain's :class:`SlidingWindow`).
            **provider_options: More provider request options (``temperature=0.2``, ...).

        Raises:
            ProviderError: The provider failed; nothing was stored.
            GuardrailError: The reply violated a validator with ``fail_on_violation``;
                nothing of the turn was stored.
            SessionBusyError: The session stayed busy for ``lock_timeout`` seconds.
            ClosedError: The pipeline was closed.
            ValidationError: A bad argument, or a limit the chain has no stage to apply.
        """
        ctx = self._context(
            session_id,
            role,
            content,
            metadata,
            system,
            {**options, **provider_options} if options else provider_options,
            guardrails,
            max_tokens,
            max_messages,
        )
        telemetry = self._telemetry
        turn = telemetry.start_turn(ctx, stream=False) if telemetry is not None else None
        if turn is None:
            await self._run(ctx, self._chain)
            return self._result(ctx)
        token = turn.attach()
        try:
            await self._run(ctx, self._traced_chain)
        except BaseException as exc:
            turn.end(ctx, exc)
            raise
        finally:
            turn.detach(token)
        turn.end(ctx, None)
        return self._result(ctx)

    async def _run(self, ctx: ExecutionContext, chain: CallNext) -> None:
        """Run one turn, streamed or not: the chain while the turn runner holds the session."""
        # A turn on a leasing store may never suspend outside a shielded step (lease, save)
        # when its provider answers at once: without this, a cancelled caller that runs
        # turns in a loop would never see its cancellation.
        await anyio.lowlevel.checkpoint_if_cancelled()

        async def body(lease: TurnLease | None) -> None:
            ctx.lease = lease
            await chain(ctx)

        first = self._first_load
        await self._turns.run(
            ctx.session_id,
            body,
            # What the lease may read with it: the first load's window.
            load=None if first is None else (first.first_window(ctx.strategies),),
        )

    def _result(self, ctx: ExecutionContext) -> ExecutionResult:
        if ctx.response is None:
            raise PromptStateError(
                f"the pipeline finished the turn of session {ctx.session_id!r} without a "
                "response: a stage did not call call_next or set ctx.response"
            )
        return ExecutionResult(
            response=ctx.response,
            usage=ctx.usage,
            cost=ctx.cost,
            messages=ctx.messages,
            session_id=ctx.session_id,
            turn_id=ctx.turn_id,
            message_count=ctx.message_count,
        )

    async def stream(
        self,
        session_id: str,
        role: str | Message,
        content: str = "",
        *,
        metadata: Mapping[str, Any] | None = None,
        system: str | Sequence[Message] | None = None,
        options: Mapping[str, Any] | None = None,
        guardrails: Guardrails | None = None,
        max_tokens: int | None = None,
        max_messages: int | None = None,
        **provider_options: Any,
    ) -> AsyncIterator[Chunk]:
        """Run one turn, yielding the answer's text as it arrives.

        The chunks carry ``.text``; the last one (``done=True``) carries the whole ``message``,
        ``usage`` and ``cost``, and comes only after the turn is saved. A stream that fails,
        is cancelled, or is left before its last chunk stores nothing. Leave early with
        ``contextlib.aclosing``::

            async with aclosing(pipe.stream(sid, "user", "hi")) as chunks:
                async for chunk in chunks:
                    ...

        Arguments and errors are as for :meth:`execute`.
        """
        ctx = self._context(
            session_id,
            role,
            content,
            metadata,
            system,
            {**options, **provider_options} if options else provider_options,
            guardrails,
            max_tokens,
            max_messages,
        )
        send, receive = anyio.create_memory_object_stream[Chunk | None](0)
        failure: list[BaseException] = []
        scope = anyio.CancelScope()
        finished = anyio.Event()

        async def emit(chunk: Chunk | None) -> None:
            try:
                await send.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # The consumer left between two chunks: the turn is cancelled, not failed
                # (the provider stage would report a send to a closed stream as its error).
                scope.cancel()
                await anyio.lowlevel.checkpoint()
                raise

        ctx.emit = emit

        # The turn runs in a task of its own, outside this generator's frame: no cancel scope
        # or task group stays open across a ``yield``, so a consumer may leave the loop at any
        # point (even without aclosing(), when the generator is finalised by another task).
        telemetry = self._telemetry
        turn = telemetry.start_turn(ctx, stream=True) if telemetry is not None else None
        chain = self._chain if turn is None else self._traced_chain

        async def run() -> None:
            token = turn.attach() if turn is not None else None
            try:
                with scope:
                    async with send:
                        await self._run(ctx, chain)
            except Exception as exc:
                failure.append(exc)
            finally:
                if turn is not None:
                    turn.detach(token)
                    turn.end(ctx, _stream_error(failure, scope))
                self._streams.pop(scope, None)
                finished.set()

        self._streams[scope] = finished
        try:
            self._spawn(run)
        except BaseException:
            del self._streams[scope]
            raise
        try:
            async with receive:
                async for chunk in receive:
                    if chunk is not None:
                        yield chunk
        finally:
            if not finished.is_set():
                # Left early (closed, cancelled or abandoned): stop the turn before it saves
                # (a save already under way completes) and wait until its lock is released.
                scope.cancel()
                with anyio.CancelScope(shield=True):
                    await finished.wait()
        if scope.cancelled_caught:
            raise ClosedError(f"the pipeline was closed while streaming session {session_id!r}")
        if failure:
            raise failure[0]
        result = self._result(ctx)
        completion = ctx.completion
        yield Chunk(
            done=True,
            message=result.response,
            tool_calls=result.response.tool_calls,
            usage=result.usage,
            cost=result.cost,
            finish_reason=completion.finish_reason if completion is not None else None,
        )

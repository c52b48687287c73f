"""OpenTelemetry traces and metrics for pipeline turns (``pip install 'promptstate[otel]'``).

Nothing to call: when ``opentelemetry-api`` is installed, every
:class:`~promptstate.Pipeline` (and so every :class:`~promptstate.ConversationManager`)
reports to the global tracer and meter providers. Configure them with the SDK as usual::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)

Spans (tracer ``promptstate``):

* ``promptstate.turn`` (INTERNAL): one turn, lock and lease included; attributes
  ``gen_ai.conversation.id`` (the session id), ``db.system``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``promptstate.cost`` (USD), ``promptstate.stream``,
  ``promptstate.message_count``, ``promptstate.tool_rounds``;
* children ``promptstate.load`` and ``promptstate.save`` (CLIENT): the store calls, with
  ``db.system`` / ``db.system.name`` (``memory``, ``sqlite``, ``redis``, ``postgresql``) and
  ``db.operation.name`` (``load``, ``append_turn``), and the session id as
  ``gen_ai.conversation.id`` (never any other key content);
* a ``chat {model}`` child (CLIENT) per provider call, tool-loop rounds each their own, with
  the GenAI semantic conventions: ``gen_ai.operation.name`` (``chat``), ``gen_ai.system`` and
  ``gen_ai.provider.name``, ``gen_ai.request.model`` (and ``temperature``, ``max_tokens``,
  ``top_p`` when set), ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``, and ``error.type``
  with an ERROR status when it fails.

Message text is recorded only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is
``true``: then the provider span carries ``gen_ai.input.messages`` and
``gen_ai.output.messages`` (JSON, the semantic conventions' shape).

Metrics (meter ``promptstate``): ``gen_ai.client.operation.duration`` (s) and
``gen_ai.client.token.usage`` (``{token}``, by ``gen_ai.token.type``) per provider call;
``promptstate.turn.duration`` (s) and ``promptstate.turn.cost`` (USD, a counter) per turn.

When the turn's span is not recording (no SDK configured, or not sampled) no child spans
are made; the metrics are recorded all the same (no-ops without a meter provider).
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as _metrics_internal
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from promptstate.types import AudioPart, ImagePart, Part, ReasoningPart, TextPart

__all__ = ["CAPTURE_CONTENT_ENV", "PipelineTelemetry", "TurnTelemetry", "capture_content"]


class _Turn(Protocol):
    """What the spans read of a turn (a :class:`promptstate.ExecutionContext`)."""

    session_id: str
    options: dict[str, Any]
    messages: list[Any]
    history: list[Any]
    completion: Any
    response: Any
    usage: Any
    cost: float
    message_count: int | None
    data: dict[str, Any]
    telemetry: Any


CallNext = Callable[[Any], Awaitable[None]]
Middleware = Callable[[Any, CallNext], Coroutine[Any, Any, None]]


#: The environment variable that turns on recording message text (``true``).
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

_SCOPE = "promptstate"

_REQUEST_OPTIONS = (
    ("temperature", "gen_ai.request.temperature"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("top_p", "gen_ai.request.top_p"),
)
_json = msgspec.json.Encoder()


def _version() -> str:
    try:
        return importlib.metadata.version("promptstate")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "0"


def capture_content() -> bool:
    """Whether message text may be recorded (the environment variable is ``true``)."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"


def _part_json(part: Part) -> dict[str, Any]:
    """A message part in the GenAI conventions' shapes; bytes are never recorded, only their
    size (a ``blob`` without ``content``)."""
    if isinstance(part, TextPart):
        return {"type": "text", "content": part.text}
    if isinstance(part, ReasoningPart):
        return {"type": "reasoning", "content": part.text}
    modality = (
        "image"
        if isinstance(part, ImagePart)
        else "audio"
        if isinstance(part, AudioPart)
        else "file"
    )
    found: dict[str, Any] = {"modality": modality}
    if part.media_type:
        found["mime_type"] = part.media_type
    if not isinstance(part, AudioPart) and part.url is not None:
        return {"type": "uri", **found, "uri": part.url}
    return {"type": "blob", **found, "size": len(part.data or b"")}


def _messages_json(messages: Sequence[Any]) -> str:
    items = []
    for m in messages:
        parts: list[dict[str, Any]] = []
        if m.content:
            parts.append({"type": "text", "content": m.content})
        parts.extend(_part_json(part) for part in getattr(m, "parts", ()))
        for call in m.tool_calls:
            parts.append(
                {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments}
            )
        if m.role == "tool":
            parts = [{"type": "tool_call_response", "id": m.tool_call_id, "response": m.content}]
        items.append({"role": m.role, "parts": parts})
    return _json.encode(items).decode()


class PipelineTelemetry:
    """The instruments of one pipeline (each :class:`~promptstate.Pipeline` makes its own).

    Args:
        db_system: The store's ``db.system`` (``Store.db_system``).
        provider_name: ``gen_ai.provider.name`` (the provider's ``name``).
        request_model: The provider's default model, if it has one.
    """

    __slots__ = (
        "cost",
        "db_system",
        "operation_duration",
        "provider_name",
        "request_model",
        "token_usage",
        "tracer",
        "turn_duration",
    )

    def __init__(self, *, db_system: str, provider_name: str, request_model: str | None) -> None:
        version = _VERSION
        self.tracer = trace.get_tracer(_SCOPE, version)
        meter = metrics.get_meter(_SCOPE, version)
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per call"
        )
        self.turn_duration = meter.create_histogram(
            "promptstate.turn.duration", unit="s", description="Pipeline turn duration"
        )
        self.cost = meter.create_counter(
            "promptstate.turn.cost", unit="USD", description="Provider cost of turns"
        )
        # Providers named by OTEL_PYTHON_TRACER_PROVIDER / _METER_PROVIDER are loaded now.
        trace.get_tracer_provider()
        metrics.get_meter_provider()
        self.db_system = db_system
        self.provider_name = provider_name
        self.request_model = request_model

    def wrap(self, stage: Middleware, kind: str) -> Middleware:
        """``stage`` reporting a span for its part: ``kind`` is load, provider or save."""
        return _Traced(stage, _KINDS[kind])

    def start_turn(self, ctx: _Turn, *, stream: bool) -> TurnTelemetry | None:
        """Start the turn's span (made current by :meth:`TurnTelemetry.attach`).

        None while neither a tracer provider nor a meter provider is configured: then the turn
        runs the plain chain and costs nothing more.
        """
        if self._off():
            return None
        span = self.tracer.start_span("promptstate.turn", kind=SpanKind.INTERNAL)
        turn = TurnTelemetry(self, span, ctx.session_id)
        if turn.recording:
            span.set_attribute("gen_ai.conversation.id", ctx.session_id)
            span.set_attribute("db.system", self.db_system)
            span.set_attribute("promptstate.stream", stream)
        ctx.telemetry = turn
        return turn

    def _off(self) -> bool:
        global _configured
        if _configured:
            return False
        if not _providers_set():
            return True
        # The global providers are set once per process and never unset: once configured,
        # stay on without asking again.
        _configured = True
        return False


def _providers_set() -> bool:
    """Whether a global tracer or meter provider has been set (cheaply: this runs per turn)."""
    try:
        # The API's own globals: two attribute reads instead of two environment lookups.
        return trace._TRACER_PROVIDER is not None or _metrics_internal._METER_PROVIDER is not None
    except AttributeError:  # pragma: no cover - another opentelemetry-api layout
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


_configured = False


class TurnTelemetry:
    """One turn's span and clock."""

    __slots__ = ("capture", "context", "owner", "recording", "session_id", "span", "start")

    def __init__(self, owner: PipelineTelemetry, span: Span, session_id: str) -> None:
        self.owner = owner
        self.span = span
        self.session_id = session_id
        self.recording = span.is_recording()
        self.context = trace.set_span_in_context(span) if self.recording else None
        self.capture = self.recording and capture_content()
        self.start = time.perf_counter()

    def attach(self) -> object | None:
        """Make the turn's span current; returns the token for :meth:`detach`."""
        return otel_context.attach(self.context) if self.context is not None else None

    def detach(self, token: object | None) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def end(self, ctx: _Turn, error: BaseException | None) -> None:
        """End the turn: its attributes, status and metrics."""
        owner = self.owner
        attributes: dict[str, Any] = {"db.system": owner.db_system}
        if error is not None:
            attributes["error.type"] = type(error).__qualname__
        owner.turn_duration.record(time.perf_counter() - self.start, attributes)
        if ctx.cost:
            owner.cost.add(ctx.cost, {"gen_ai.provider.name": owner.provider_name})
        span = self.span
        if self.recording:
            usage = ctx.usage
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            span.set_attribute("promptstate.cost", ctx.cost)
            if ctx.message_count is not None:
                span.set_attribute("promptstate.message_count", ctx.message_count)
            rounds = ctx.data.get("tool_rounds")
            if rounds:
                span.set_attribute("promptstate.tool_rounds", rounds)
            if error is not None:
                _fail(span, error)
        span.end()


def _fail(span: Span, error: BaseException) -> None:
    span.set_attribute("error.type", type(error).__qualname__)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))


# -- the stage spans --------------------------------------------------------------------------


class _StageSpan:
    """A span for one bundled stage's own part of a turn (until it calls the next stage)."""

    __slots__ = ("span",)

    span: Span | None

    def __init__(self, turn: TurnTelemetry, ctx: _Turn) -> None:
        raise NotImplementedError

    def done(self, ctx: _Turn) -> None:
        """The stage did its part: finish the attributes."""

    def failed(self, error: BaseException) -> None:
        """The stage raised before calling the next one."""


class _StoreSpan(_StageSpan):
    __slots__ = ()

    operation = ""
    name = ""

    def __init__(self, turn: TurnTelemetry, ctx: _Turn) -> None:
        db_system = turn.owner.db_system
        self.span = turn.owner.tracer.start_span(
            self.name,
            context=turn.context,
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": db_system,
                "db.system.name": db_system,
                "db.operation.name": self.operation,
                "gen_ai.conversation.id": turn.session_id,
            },
        )


class _LoadSpan(_StoreSpan):
    __slots__ = ()

    operation = "load"
    name = "promptstate.load"

    def done(self, ctx: _Turn) -> None:
        assert self.span is not None
        self.span.set_attribute("promptstate.messages_loaded", len(ctx.history))


class _SaveSpan(_StoreSpan):
    __slots__ = ()

    operation = "append_turn"
    name = "promptstate.save"

    def done(self, ctx: _Turn) -> None:
        assert self.span is not None
        if ctx.message_count is not None:
            self.span.set_attribute("promptstate.message_count", ctx.message_count)


class _ProviderSpan(_StageSpan):
    """A provider call: a ``chat {model}`` span (when recording) and the GenAI metrics."""

    __slots__ = ("metric_attributes", "start", "turn")

    def __init__(self, turn: TurnTelemetry, ctx: _Turn) -> None:
        owner = turn.owner
        self.turn = turn
        model = ctx.options.get("model") or owner.request_model
        metric_attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": owner.provider_name,
            "gen_ai.provider.name": owner.provider_name,
        }
        if isinstance(model, str):
            metric_attributes["gen_ai.request.model"] = model
        self.metric_attributes = metric_attributes
        self.span = None
        if turn.recording:
            attributes = {**metric_attributes, "gen_ai.conversation.id": turn.session_id}
            for option, name in _REQUEST_OPTIONS:
                value = ctx.options.get(option)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    attributes[name] = value
            if turn.capture:
                attributes["gen_ai.input.messages"] = _messages_json(ctx.messages)
            self.span = owner.tracer.start_span(
                f"chat {model}" if isinstance(model, str) else "chat",
                context=turn.context,
                kind=SpanKind.CLIENT,
                attributes=attributes,
            )
        self.start = time.perf_counter()

    def done(self, ctx: _Turn) -> None:
        owner = self.turn.owner
        attributes = self.metric_attributes
        completion = ctx.completion
        if completion is not None and completion.model:
            attributes["gen_ai.response.model"] = completion.model
        owner.operation_duration.record(time.perf_counter() - self.start, attributes)
        if completion is None:
            return
        usage = completion.usage
        owner.token_usage.record(usage.input_tokens, {**attributes, "gen_ai.token.type": "input"})
        owner.token_usage.record(usage.output_tokens, {**attributes, "gen_ai.token.type": "output"})
        span = self.span
        if span is None:
            return
        if completion.model:
            span.set_attribute("gen_ai.response.model", completion.model)
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if completion.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason])
        span.set_attribute("promptstate.cost", completion.cost)
        if self.turn.capture and ctx.response is not None:
            span.set_attribute("gen_ai.output.messages", _messages_json([ctx.response]))

    def failed(self, error: BaseException) -> None:
        self.turn.owner.operation_duration.record(
            time.perf_counter() - self.start,
            {**self.metric_attributes, "error.type": type(error).__qualname__},
        )


class _Traced:
    """A bundled stage, reporting a span for its own part of the turn."""

    __slots__ = ("kind", "stage")

    def __init__(self, stage: Middleware, kind: type[_StageSpan]) -> None:
        self.stage = stage
        self.kind = kind

    def __repr__(self) -> str:
        return repr(self.stage)

    async def __call__(self, ctx: _Turn, call_next: CallNext) -> None:
        turn: TurnTelemetry | None = ctx.telemetry
        if turn is None or (not turn.recording and self.kind is not _ProviderSpan):
            await self.stage(ctx, call_next)
            return
        probe = self.kind(turn, ctx)
        span = probe.span
        token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
        open_ = True

        def close(error: BaseException | None) -> None:
            nonlocal open_
            open_ = False
            if token is not None:
                otel_context.detach(token)
            if error is None:
                probe.done(ctx)
            else:
                probe.failed(error)
                if span is not None:
                    _fail(span, error)
            if span is not None:
                span.end()

        async def next_stage(ctx: _Turn) -> None:
            if open_:
                close(None)
            await call_next(ctx)

        try:
            await self.stage(ctx, next_stage)
        except BaseException as error:
            if open_:
                close(error)
            raise
        if open_:
            close(None)


_KINDS: dict[str, type[_StageSpan]] = {
    "load": _LoadSpan,
    "provider": _ProviderSpan,
    "save": _SaveSpan,
}
_VERSION = _version()

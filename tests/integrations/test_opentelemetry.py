"""OpenTelemetry spans and metrics of pipeline turns, asserted from the SDK's in-memory
exporter and reader: execute, stream, tool loops, failures, content capture off and on."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import context, metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from promptstate import (
    ConversationManager,
    GuardrailError,
    Guardrails,
    Message,
    Pipeline,
    ProviderError,
    SQLiteStore,
    ToolCall,
    Validator,
)
from promptstate.integrations.opentelemetry import CAPTURE_CONTENT_ENV
from promptstate.providers.mock import MockProvider

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()
_PROVIDERS: list[Any] = []


@pytest.fixture(autouse=True, scope="module")
def _stop_keeping_spans() -> Iterator[None]:
    yield
    # The global tracer provider stays set for the rest of the process; later tests' spans
    # are no longer kept in memory.
    _EXPORTER.shutdown()


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    # The global providers can be set once per process: the first test sets them.
    if not _PROVIDERS:
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(tracer_provider)
        meter_provider = MeterProvider(metric_readers=[_READER])
        metrics.set_meter_provider(meter_provider)
        _PROVIDERS.extend([tracer_provider, meter_provider])
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _by_name(spans: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def _points(name: str, model: str) -> list[Any]:
    data = _READER.get_metrics_data()
    found = []
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    if attrs.get("gen_ai.request.model", model) == model:
                        found.append(point)
    return found


def _model() -> str:
    return f"mock-{uuid.uuid4().hex[:8]}"


async def test_execute_is_one_turn_span_with_load_provider_and_save(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CAPTURE_CONTENT_ENV, raising=False)
    model = _model()
    provider = MockProvider(["Hello Alice"], model=model, price=(1.0, 2.0))
    async with Pipeline(provider) as pipe:
        await pipe.execute("alice:1", "user", "secret words", temperature=0.3)
    by_name = _by_name(spans)
    (turn,) = by_name["promptstate.turn"]
    (load,) = by_name["promptstate.load"]
    (call,) = by_name[f"chat {model}"]
    (save,) = by_name["promptstate.save"]
    for child in (load, call, save):
        assert child.parent is not None
        assert child.parent.span_id == turn.context.span_id
        assert child.context.trace_id == turn.context.trace_id
    assert load.end_time <= call.start_time <= call.end_time <= save.start_time
    assert turn.attributes["gen_ai.conversation.id"] == "alice:1"
    assert turn.attributes["db.system"] == "memory"
    assert turn.attributes["promptstate.stream"] is False
    assert turn.attributes["promptstate.message_count"] == 2
    assert load.kind == SpanKind.CLIENT
    assert load.attributes["db.system"] == "memory"
    assert load.attributes["db.operation.name"] == "load"
    assert save.attributes["db.operation.name"] == "append_turn"
    assert call.kind == SpanKind.CLIENT
    attrs = call.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "mock"
    assert attrs["gen_ai.request.model"] == model
    assert attrs["gen_ai.response.model"] == model
    assert attrs["gen_ai.request.temperature"] == 0.3
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert turn.attributes["gen_ai.usage.output_tokens"] == attrs["gen_ai.usage.output_tokens"]
    # No message text without the environment variable, anywhere.
    for span in spans.get_finished_spans():
        assert "secret words" not in json.dumps(dict(span.attributes or {}))
        assert "Hello Alice" not in json.dumps(dict(span.attributes or {}))
    # Metrics.
    (duration,) = _points("gen_ai.client.operation.duration", model)
    assert duration.count == 1
    usage = {
        p.attributes["gen_ai.token.type"]: p.sum
        for p in _points("gen_ai.client.token.usage", model)
    }
    assert usage == {
        "input": attrs["gen_ai.usage.input_tokens"],
        "output": attrs["gen_ai.usage.output_tokens"],
    }


async def test_content_capture_on(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CAPTURE_CONTENT_ENV, "true")
    model = _model()
    async with Pipeline(MockProvider(["Hello Alice"], model=model), system="Be brief.") as pipe:
        await pipe.execute("s", "user", "Hi, I'm Alice")
    (call,) = _by_name(spans)[f"chat {model}"]
    sent = json.loads(call.attributes["gen_ai.input.messages"])
    assert sent == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Hi, I'm Alice"}]},
    ]
    got = json.loads(call.attributes["gen_ai.output.messages"])
    assert got == [{"role": "assistant", "parts": [{"type": "text", "content": "Hello Alice"}]}]


async def test_content_capture_records_parts_without_their_bytes(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptstate import AudioPart, ImagePart, Message, ReasoningPart, TextPart

    monkeypatch.setenv(CAPTURE_CONTENT_ENV, "true")
    model = _model()
    reply = Message("assistant", "A cat.", parts=(ReasoningPart(text="whiskers"),))
    question = Message(
        "user",
        "What is it?",
        parts=(
            ImagePart(data=b"\x89PNG" + bytes(100), media_type="image/png"),
            ImagePart(url="https://example.com/a.jpg"),
            AudioPart(data=bytes(10), media_type="audio/wav"),
            TextPart("more"),
        ),
    )
    async with Pipeline(MockProvider([reply], model=model)) as pipe:
        await pipe.execute("s", question)
    (call,) = _by_name(spans)[f"chat {model}"]
    assert "PNG" not in call.attributes["gen_ai.input.messages"]
    sent = json.loads(call.attributes["gen_ai.input.messages"])
    assert sent[0]["parts"] == [
        {"type": "text", "content": "What is it?"},
        {"type": "blob", "modality": "image", "mime_type": "image/png", "size": 104},
        {"type": "uri", "modality": "image", "uri": "https://example.com/a.jpg"},
        {"type": "blob", "modality": "audio", "mime_type": "audio/wav", "size": 10},
        {"type": "text", "content": "more"},
    ]
    got = json.loads(call.attributes["gen_ai.output.messages"])
    assert got[0]["parts"] == [
        {"type": "text", "content": "A cat."},
        {"type": "reasoning", "content": "whiskers"},
    ]


async def test_stream_turn(spans: InMemorySpanExporter) -> None:
    model = _model()
    async with (
        Pipeline(MockProvider(["one two three"], model=model)) as pipe,
        aclosing(pipe.stream("s", "user", "count")) as chunks,
    ):
        text = "".join([c.text async for c in chunks])
    assert text == "one two three"
    by_name = _by_name(spans)
    (turn,) = by_name["promptstate.turn"]
    assert turn.attributes["promptstate.stream"] is True
    assert turn.status.status_code == StatusCode.UNSET
    (call,) = by_name[f"chat {model}"]
    assert call.parent is not None
    assert call.parent.span_id == turn.context.span_id
    assert len(by_name["promptstate.save"]) == 1


async def test_tool_loop_has_one_provider_span_per_round(spans: InMemorySpanExporter) -> None:
    model = _model()

    def answer(messages: list[Message]) -> Message | str:
        if messages[-1].role == "user":
            return Message("assistant", tool_calls=(ToolCall("c1", "lookup", "{}"),))
        return "42"

    def lookup() -> str:
        return "forty-two"

    async with Pipeline(MockProvider(answer, model=model), tools=[lookup]) as pipe:
        await pipe.execute("s", "user", "look it up")
    by_name = _by_name(spans)
    (turn,) = by_name["promptstate.turn"]
    calls = by_name[f"chat {model}"]
    assert len(calls) == 2
    assert [c.attributes["gen_ai.response.finish_reasons"] for c in calls] == [
        ("tool_calls",),
        ("stop",),
    ]
    assert len(by_name["promptstate.save"]) == 2
    assert all(c.parent is not None and c.parent.span_id == turn.context.span_id for c in calls)
    assert turn.attributes["promptstate.tool_rounds"] == 1
    assert _points("gen_ai.client.operation.duration", model)[0].count == 2


async def test_provider_failure_marks_the_provider_and_turn_spans(
    spans: InMemorySpanExporter,
) -> None:
    model = _model()

    def broken(messages: list[Message]) -> str:
        raise ProviderError("upstream 503", status_code=503, retryable=True)

    async with Pipeline(MockProvider(broken, model=model)) as pipe:
        with pytest.raises(ProviderError):
            await pipe.execute("s", "user", "hi")
        async with aclosing(pipe.stream("s", "user", "hi")) as chunks:
            with pytest.raises(ProviderError):
                [c async for c in chunks]
    by_name = _by_name(spans)
    assert "promptstate.save" not in by_name
    for span in [*by_name["promptstate.turn"], *by_name[f"chat {model}"]]:
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == "ProviderError"
        assert any(e.name == "exception" for e in span.events)
    assert len(by_name["promptstate.turn"]) == 2
    (duration,) = _points("gen_ai.client.operation.duration", model)
    assert duration.attributes["error.type"] == "ProviderError"
    assert duration.count == 2


async def test_guardrail_failure_ends_the_turn_in_error_after_a_good_provider_span(
    spans: InMemorySpanExporter,
) -> None:
    model = _model()
    guard = Guardrails(
        [Validator(type="max_length", fail_on_violation=True, params={"max_characters": 2})]
    )
    async with Pipeline(MockProvider(["too long"], model=model), guardrails=guard) as pipe:
        with pytest.raises(GuardrailError):
            await pipe.execute("s", "user", "hi")
    by_name = _by_name(spans)
    (turn,) = by_name["promptstate.turn"]
    (call,) = by_name[f"chat {model}"]
    assert turn.status.status_code == StatusCode.ERROR
    assert turn.attributes["error.type"] == "GuardrailError"
    assert call.status.status_code == StatusCode.UNSET
    assert "promptstate.save" not in by_name


async def test_manager_turns_and_sqlite_db_system(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    model = _model()
    async with (
        SQLiteStore(tmp_path / "t.db") as store,
        ConversationManager(MockProvider(["hi"], model=model), store) as manager,
    ):
        conv = await manager.new_conversation()
        await conv.send("hello")
    by_name = _by_name(spans)
    (turn,) = by_name["promptstate.turn"]
    assert turn.attributes["db.system"] == "sqlite"
    assert by_name["promptstate.save"][0].attributes["db.system"] == "sqlite"


async def test_a_non_recording_turn_makes_no_child_spans(spans: InMemorySpanExporter) -> None:
    # The default sampler follows the parent: under a parent that was not sampled, the
    # turn's span does not record, and no child spans are made at all.
    model = _model()
    parent = NonRecordingSpan(
        SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(0))
    )
    token = context.attach(trace.set_span_in_context(parent))
    try:
        async with Pipeline(MockProvider(["x"], model=model)) as pipe:
            await pipe.execute("s", "user", "hi")
    finally:
        context.detach(token)
    assert spans.get_finished_spans() == ()
    # The metrics are recorded all the same.
    assert _points("gen_ai.client.operation.duration", model)[0].count == 1


def test_without_the_package_nothing_is_imported() -> None:
    # sys.modules[name] = None is how Python spells "not installed" for find_spec and import.
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import asyncio, promptstate\n"
        "async def main():\n"
        "    async with promptstate.Pipeline(promptstate.MockProvider(['ok'])) as p:\n"
        "        r = await p.execute('s', 'user', 'hi')\n"
        "    print(r.response.content)\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m, v in sys.modules.items() if 'opentelemetry' in m and v))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "[]"]


def test_the_console_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "opentelemetry_console.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert '"name": "promptstate.turn"' in done.stdout
    assert '"name": "chat mock-model"' in done.stdout
    assert '"gen_ai.usage.output_tokens"' in done.stdout


async def test_cancelled_turns_end_their_spans_and_leave_no_context(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    import random

    import anyio

    model = _model()
    rng = random.Random(17)
    attempts = 40
    async with Pipeline(MockProvider(["a b c d"], model=model, cycle=True, delay=0.002)) as pipe:
        for i in range(attempts):
            # Some turns run to the end, some are cancelled at once, the rest at random points.
            deadline = None if i % 5 == 0 else 0.0 if i % 5 == 1 else rng.uniform(0, 0.006)
            with anyio.move_on_after(deadline):
                if i % 2:
                    await pipe.execute("s", "user", "hi")
                else:
                    async with aclosing(pipe.stream("s", "user", "hi")) as chunks:
                        async for _ in chunks:
                            pass
            assert not trace.get_current_span().get_span_context().is_valid
    by_name = _by_name(spans)
    turns = by_name["promptstate.turn"]
    assert len(turns) == attempts  # every turn's span ended, cancelled or not
    cancelled = [t for t in turns if t.status.status_code == StatusCode.ERROR]
    assert cancelled, "no turn was cancelled: the test did not test anything"
    assert len(cancelled) < attempts, "every turn was cancelled: nothing ran to the end"
    errors = sorted({(str(t.attributes["error.type"]), t.status.description) for t in cancelled})
    assert [e for e in errors if e[0] != "CancelledError"] == [], errors
    for span in spans.get_finished_spans():
        if span.name != "promptstate.turn":
            assert span.parent is not None
    assert "Failed to detach context" not in caplog.text

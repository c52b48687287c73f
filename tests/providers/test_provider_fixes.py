"""Provider fixes found against real servers (issue 13), each on the loopback server.

* a per-request ``model=`` is priced at that model's price;
* a stream without usage is counted (the pipeline's counter in a turn), marked
  ``Usage.estimated`` and priced;
* tool-call ``arguments`` sent as a JSON object are kept as JSON text;
* a plain JSON body answering a streaming request is that complete response.
"""

from __future__ import annotations

import json

import pytest

from promptstate import MemoryStore, Message, ToolCall, Usage
from promptstate.pipeline import Pipeline
from promptstate.providers import AnthropicProvider, OpenAIProvider
from tests.providers.loopback import (
    LoopbackServer,
    anthropic_sse,
    drain,
    json_reply,
    openai_sse,
    sse_reply,
)
from tests.providers.test_anthropic_provider import message_doc, stream_events
from tests.providers.test_openai_provider import chunk, completion, usage_chunk

pytestmark = pytest.mark.anyio

MINI = (0.15, 0.60)  # gpt-4o-mini, USD per 1M tokens (input, output)
GPT4O = (2.50, 10.0)
SONNET = (3.0, 15.0)
HAIKU = (1.0, 5.0)


def openai(server: LoopbackServer, model: str = "gpt-4o-mini") -> OpenAIProvider:
    return OpenAIProvider(model, base_url=server.url + "/v1", api_key="sk-x", backoff=0.01)


def anthropic(server: LoopbackServer, model: str = "claude-sonnet-4-5") -> AnthropicProvider:
    return AnthropicProvider(model, base_url=server.url, api_key="sk-a", backoff=0.01)


def price(tokens: tuple[int, int], prices: tuple[float, float]) -> float:
    return (tokens[0] * prices[0] + tokens[1] * prices[1]) / 1e6


# -- per-request model ---------------------------------------------------------------------


async def test_openai_per_request_model_is_priced_at_that_model(server: LoopbackServer) -> None:
    server.queue(
        json_reply(200, completion(usage=(1000, 100), model="gpt-4o-2024-08-06")),
        sse_reply(openai_sse([chunk({"content": "x"}, finish="stop"), usage_chunk(1000, 100)])),
        json_reply(200, completion(usage=(1000, 100))),
    )
    async with openai(server) as provider:
        big = await provider.complete([Message("user", "hi")], model="gpt-4o")
        streamed = await drain(provider.stream([Message("user", "hi")], model="gpt-4o"))
        default = await provider.complete([Message("user", "hi")])
    assert server.requests[0].json()["model"] == "gpt-4o"
    assert big.cost == pytest.approx(price((1000, 100), GPT4O))
    assert streamed[-1].cost == pytest.approx(price((1000, 100), GPT4O))
    assert default.cost == pytest.approx(price((1000, 100), MINI))


async def test_anthropic_per_request_model_is_priced_at_that_model(
    server: LoopbackServer,
) -> None:
    server.queue(
        json_reply(200, message_doc(usage={"input_tokens": 1000, "output_tokens": 100})),
        sse_reply(anthropic_sse(stream_events(tool=False))),
    )
    async with anthropic(server) as provider:
        plain = await provider.complete([Message("user", "hi")], model="claude-haiku-4-5")
        streamed = await drain(provider.stream([Message("user", "hi")], model="claude-haiku-4-5"))
    assert [r.json()["model"] for r in server.requests] == ["claude-haiku-4-5"] * 2
    assert plain.cost == pytest.approx(price((1000, 100), HAIKU))
    assert streamed[-1].usage == Usage(25, 15)
    assert streamed[-1].cost == pytest.approx(price((25, 15), HAIKU))


async def test_per_request_model_through_the_pipeline(server: LoopbackServer) -> None:
    server.queue(json_reply(200, completion(usage=(1000, 100))))
    async with openai(server) as provider, Pipeline(provider, store=MemoryStore()) as pipe:
        result = await pipe.execute("s", "user", "hi", model="gpt-4o")
    assert result.cost == pytest.approx(price((1000, 100), GPT4O))


# -- a stream without usage ----------------------------------------------------------------


class TenPerMessage:
    """A token counter whose counts are easy to predict."""

    def count(self, message: Message) -> int:
        return 10


async def test_stream_without_usage_is_counted_by_the_pipeline_and_priced(
    server: LoopbackServer,
) -> None:
    # A server that ignores stream_options.include_usage: no usage anywhere in the stream.
    server.queue(
        sse_reply(
            openai_sse([chunk({"content": "Hello "}), chunk({"content": "you."}, finish="stop")])
        )
    )
    async with (
        openai(server) as provider,
        MemoryStore() as store,
        Pipeline(provider, store=store, token_counter=TenPerMessage(), system="Be kind.") as pipe,
    ):
        chunks = await drain(pipe.stream("s", "user", "hi", model="gpt-4o"))
        state = await store.get("s")
    final = chunks[-1]
    # The prompt is two messages (system, user) and the reply one, 10 tokens each.
    assert final.usage == Usage(20, 10, estimated=True)
    assert final.cost == pytest.approx(price((20, 10), GPT4O))
    assert state.total_cost == pytest.approx(price((20, 10), GPT4O))


async def test_reported_usage_is_not_estimated(server: LoopbackServer) -> None:
    server.queue(
        sse_reply(openai_sse([chunk({"content": "x"}, finish="stop"), usage_chunk(7, 3)])),
        json_reply(200, completion(usage=(7, 3))),
    )
    async with openai(server) as provider, Pipeline(provider, store=MemoryStore()) as pipe:
        streamed = await drain(pipe.stream("s", "user", "hi"))
        plain = await pipe.execute("s", "user", "hi")
    assert streamed[-1].usage == Usage(7, 3)
    assert not streamed[-1].usage.estimated  # type: ignore[union-attr]
    assert plain.usage == Usage(7, 3, estimated=False)


def test_usage_sums_are_estimated_when_a_term_is() -> None:
    assert Usage(1, 2) + Usage(3, 4) == Usage(4, 6)
    assert (Usage(1, 2) + Usage(3, 4, estimated=True)).estimated
    assert Usage().estimated is False


# -- tool-call arguments as a JSON object ---------------------------------------------------


async def test_tool_call_arguments_sent_as_an_object_are_kept_as_json(
    server: LoopbackServer,
) -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": {"a": [1, "é"]}},
        }
    ]
    server.queue(
        json_reply(200, completion(None, tool_calls=calls, finish="tool_calls")),
        sse_reply(
            openai_sse(
                [
                    chunk({"tool_calls": [{"index": 0, **calls[0]}]}),
                    chunk({}, finish="tool_calls"),
                    usage_chunk(5, 5),
                ]
            )
        ),
    )
    async with openai(server) as provider:
        plain = await provider.complete([Message("user", "go")])
        streamed = await drain(provider.stream([Message("user", "go")]))
    for call in (plain.message.tool_calls[0], streamed[-1].tool_calls[0]):
        assert json.loads(call.arguments) == {"a": [1, "é"]}
        assert "'" not in call.arguments  # not Python's repr
    assert (
        plain.message.tool_calls
        == streamed[-1].tool_calls
        == (ToolCall("call_1", "f", '{"a":[1,"é"]}'),)
    )


# -- a JSON body answering a streaming request ----------------------------------------------


async def test_openai_json_body_answering_a_stream_is_the_whole_response(
    server: LoopbackServer,
) -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    server.queue(
        json_reply(200, completion("Whole answer.", usage=(12, 5))),
        json_reply(200, completion(None, tool_calls=calls, finish="tool_calls")),
    )
    async with openai(server) as provider:
        chunks = await drain(provider.stream([Message("user", "hi")]))
        calls_chunks = await drain(provider.stream([Message("user", "hi")]))
    assert len(server.requests) == 2  # read as it is, not retried as a broken stream
    assert [c.text for c in chunks] == ["Whole answer.", ""]
    final = chunks[-1]
    assert final.done
    assert final.usage == Usage(12, 5)
    assert final.cost == pytest.approx(price((12, 5), MINI))
    assert final.finish_reason == "stop"
    assert final.message is not None
    assert final.message.content == "Whole answer."
    assert [c.done for c in calls_chunks] == [True]
    assert calls_chunks[0].tool_calls == (ToolCall("call_1", "f", "{}"),)


async def test_anthropic_json_body_answering_a_stream_is_the_whole_response(
    server: LoopbackServer,
) -> None:
    server.queue(json_reply(200, message_doc()))
    async with anthropic(server) as provider, Pipeline(provider, store=MemoryStore()) as pipe:
        chunks = await drain(pipe.stream("s", "user", "hi"))
    assert "".join(c.text for c in chunks) == "Hi there"
    assert chunks[-1].done
    assert chunks[-1].usage == Usage(20, 10)


async def test_an_error_json_body_answering_a_stream_is_a_provider_error(
    server: LoopbackServer,
) -> None:
    from promptstate import ProviderError

    server.queue(json_reply(200, {"error": {"message": "model overloaded", "type": "server"}}))
    async with openai(server) as provider:
        with pytest.raises(ProviderError, match="model overloaded"):
            await drain(provider.stream([Message("user", "hi")]))

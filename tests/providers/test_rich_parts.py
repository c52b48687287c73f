"""Message parts on the wire: images, audio, files and reasoning, both HTTP providers.

Every test talks to the loopback server (loopback.py) in the providers' real wire formats:
what the request carries is read back from the recorded body, and the replies are shaped as
the APIs document them (streams included).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from promptstate import (
    AudioPart,
    FilePart,
    ImagePart,
    MemoryStore,
    Message,
    ReasoningPart,
    TextPart,
    ToolCall,
    ValidationError,
)
from promptstate.pipeline import Pipeline
from promptstate.providers import AnthropicProvider, OpenAIProvider
from promptstate.providers.mock import MockProvider
from tests.providers.loopback import (
    LoopbackServer,
    anthropic_sse,
    drain,
    json_reply,
    openai_sse,
    sse_reply,
)
from tests.providers.test_anthropic_provider import message_doc
from tests.providers.test_openai_provider import chunk, completion, usage_chunk

pytestmark = pytest.mark.anyio

EVERY = bytes(range(256))
B64 = base64.b64encode(EVERY).decode()
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+/sig=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4"


def openai(server: LoopbackServer, **kwargs: Any) -> OpenAIProvider:
    kwargs.setdefault("backoff", 0.01)
    return OpenAIProvider(
        kwargs.pop("model", "gpt-4o-mini"), base_url=server.url + "/v1", api_key="sk-x", **kwargs
    )


def anthropic(server: LoopbackServer, **kwargs: Any) -> AnthropicProvider:
    kwargs.setdefault("backoff", 0.01)
    return AnthropicProvider(
        kwargs.pop("model", "claude-sonnet-4-5"), base_url=server.url, api_key="sk-a", **kwargs
    )


# -- OpenAI-compatible: content arrays -----------------------------------------------------


async def test_openai_user_content_array(server: LoopbackServer) -> None:
    server.queue(json_reply(200, completion("A cat.")))
    question = Message(
        "user",
        "What is in these?",
        parts=(
            ImagePart(url="https://example.com/cat.png", detail="low"),
            ImagePart(data=EVERY, media_type="image/png"),
            AudioPart(data=EVERY, media_type="audio/wav"),
            AudioPart(data=b"ID3", media_type="audio/mpeg"),
            FilePart(data=b"%PDF-1.7", media_type="application/pdf", name="report.pdf"),
            TextPart("and this"),
            ReasoningPart(text="never sent"),
        ),
    )
    async with openai(server) as provider:
        await provider.complete([Message("system", "Be brief."), question])
    body = server.requests[0].json()
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in these?"},
            {
                "type": "image_url",
                "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
            },
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
            {"type": "input_audio", "input_audio": {"data": B64, "format": "wav"}},
            {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}},
            {
                "type": "file",
                "file": {
                    "filename": "report.pdf",
                    "file_data": "data:application/pdf;base64,JVBERi0xLjc=",
                },
            },
            {"type": "text", "text": "and this"},
        ],
    }
    assert "never sent" not in server.requests[0].body.decode()


async def test_openai_text_parts_of_other_roles_are_text(server: LoopbackServer) -> None:
    server.queue(json_reply(200, completion("ok")))
    history = [
        Message("system", "Be", parts=(TextPart("brief."),)),
        Message("user", "q"),
        Message(
            "assistant",
            "",
            parts=(ReasoningPart(text="private", provider="openai"),),
            tool_calls=(ToolCall("c1", "f", "{}"),),
        ),
        Message("tool", "one", tool_call_id="c1", parts=(TextPart("two"),)),
        Message(
            "assistant",
            "",
            parts=(AudioPart(data=b"RIFF", media_type="audio/wav", transcript="spoken answer"),),
        ),
        Message("user", "plain"),
    ]
    async with openai(server) as provider:
        await provider.complete(history)
    sent = server.requests[0].json()["messages"]
    assert sent[0] == {"role": "system", "content": "Be\nbrief."}
    assert sent[2]["content"] is None  # the reasoning is not sent back
    assert sent[3] == {"role": "tool", "tool_call_id": "c1", "content": "one\ntwo"}
    assert sent[4] == {"role": "assistant", "content": "spoken answer"}
    assert sent[5] == {"role": "user", "content": "plain"}
    assert "private" not in server.requests[0].body.decode()


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (
            Message("user", "x", parts=(FilePart(url="https://example.com/a.pdf"),)),
            "openai cannot send a FilePart in a user message: .*not a URL",
        ),
        (
            Message("user", "x", parts=(AudioPart(data=b"Ogg", media_type="audio/ogg"),)),
            "openai cannot send a AudioPart in a user message: .*'audio/ogg'",
        ),
        (
            Message("system", "x", parts=(ImagePart(url="https://x/y.png"),)),
            "openai cannot send a ImagePart in a system message",
        ),
        (
            Message("assistant", "x", parts=(FilePart(data=b"1"),)),
            "openai cannot send a FilePart in a assistant message",
        ),
    ],
)
async def test_openai_refuses_a_part_it_cannot_send_before_any_request(
    server: LoopbackServer, message: Message, match: str
) -> None:
    async with openai(server) as provider:
        with pytest.raises(ValidationError, match=match):
            await provider.complete([Message("user", "hi"), message])
        with pytest.raises(ValidationError, match=match):
            await drain(provider.stream([message]))
    assert server.requests == []


async def test_tool_image_is_refused_by_openai_and_sent_by_anthropic(
    server: LoopbackServer,
) -> None:
    history = [
        Message("user", "look"),
        Message("assistant", "", tool_calls=(ToolCall("toolu_1", "shot", "{}"),)),
        Message(
            "tool",
            "screenshot:",
            tool_call_id="toolu_1",
            parts=(ImagePart(data=EVERY, media_type="image/png"),),
        ),
    ]
    async with openai(server) as provider:
        with pytest.raises(ValidationError, match="openai cannot send a ImagePart in a tool"):
            await provider.complete(history)
    assert server.requests == []
    server.queue(json_reply(200, message_doc()))
    async with anthropic(server) as provider:
        await provider.complete(history)
    sent = server.requests[0].json()["messages"]
    assert sent[-1] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": [
                    {"type": "text", "text": "screenshot:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": B64},
                    },
                ],
            }
        ],
    }


# -- OpenAI-compatible: reasoning and audio in replies -------------------------------------


async def test_openai_reasoning_content_becomes_a_part_and_is_not_sent_back(
    server: LoopbackServer,
) -> None:
    reply = completion("42.", model="deepseek-reasoner")
    reply["choices"][0]["message"]["reasoning_content"] = "6 times 7 is 42."
    server.queue(json_reply(200, reply), json_reply(200, completion("Sure.")))
    async with (
        openai(server, model="deepseek-reasoner") as provider,
        MemoryStore() as store,
        Pipeline(provider, store=store) as pipe,
    ):
        result = await pipe.execute("s", "user", "6*7?")
        assert result.response.content == "42."
        assert result.response.parts == (ReasoningPart(text="6 times 7 is 42.", provider="openai"),)
        await pipe.execute("s", "user", "Thanks")
        stored = await store.load("s")
    assert stored[1].parts == result.response.parts
    second = server.requests[1].json()["messages"]
    assert second[1] == {"role": "assistant", "content": "42."}
    assert "6 times 7" not in server.requests[1].body.decode()


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_openai_streamed_reasoning_deltas(server: LoopbackServer, field: str) -> None:
    server.queue(
        sse_reply(
            openai_sse(
                [
                    chunk({"role": "assistant", "content": None, field: "Let me "}),
                    chunk({field: "think."}),
                    chunk({"content": "Done."}),
                    chunk({}, finish="stop"),
                    usage_chunk(10, 5),
                ]
            )
        )
    )
    async with openai(server) as provider:
        chunks = await drain(provider.stream([Message("user", "hm")]))
    assert [c.text for c in chunks if not c.done] == ["Done."]
    final = chunks[-1].message
    assert final is not None
    assert final.content == "Done."
    assert final.parts == (ReasoningPart(text="Let me think.", provider="openai"),)


async def test_openai_audio_reply_plain_and_streamed(server: LoopbackServer) -> None:
    reply = completion(None)
    reply["choices"][0]["message"]["audio"] = {
        "id": "audio_abc",
        "data": B64,
        "expires_at": 1700003600,
        "transcript": "Hello there.",
    }
    server.queue(
        json_reply(200, reply),
        sse_reply(
            openai_sse(
                [
                    chunk({"role": "assistant", "audio": {"id": "audio_x", "transcript": "Hel"}}),
                    chunk({"audio": {"data": base64.b64encode(EVERY[:100]).decode()}}),
                    chunk(
                        {
                            "audio": {
                                "transcript": "lo.",
                                "data": base64.b64encode(EVERY[100:]).decode(),
                            }
                        }
                    ),
                    chunk({}, finish="stop"),
                    usage_chunk(10, 5),
                ]
            )
        ),
    )
    options = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "mp3"}}
    async with openai(server, model="gpt-4o-audio-preview") as provider:
        result = await provider.complete([Message("user", "Say hello")], **options)
        chunks = await drain(provider.stream([Message("user", "Say hello")], **options))
    assert server.requests[0].json()["audio"] == {"voice": "alloy", "format": "mp3"}
    assert result.message.parts == (
        AudioPart(data=EVERY, media_type="audio/mpeg", transcript="Hello there."),
    )
    assert result.message.metadata["audio_id"] == "audio_abc"
    final = chunks[-1].message
    assert final is not None
    assert final.parts == (AudioPart(data=EVERY, media_type="audio/mpeg", transcript="Hello."),)


# -- Anthropic: images, documents ----------------------------------------------------------


async def test_anthropic_image_and_document_blocks(server: LoopbackServer) -> None:
    server.queue(json_reply(200, message_doc()))
    question = Message(
        "user",
        "Compare these.",
        parts=(
            ImagePart(data=EVERY, media_type="image/png"),
            ImagePart(url="https://example.com/cat.jpg"),
            ImagePart(url="data:image/gif;base64,R0lGODlh"),
            FilePart(data=b"%PDF-1.7", media_type="application/pdf", name="Q3 report"),
            FilePart(data="Zoë's notes".encode(), media_type="text/plain"),
            FilePart(url="https://example.com/paper.pdf", media_type="application/pdf"),
            TextPart("Be thorough."),
        ),
    )
    async with anthropic(server) as provider:
        await provider.complete([question])
    (turn,) = server.requests[0].json()["messages"]
    assert turn == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Compare these."},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": B64},
            },
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlh"},
            },
            {
                "type": "document",
                "source": {
                    "type": "base64",
                    "media_type": "application/pdf",
                    "data": "JVBERi0xLjc=",
                },
                "title": "Q3 report",
            },
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "Zoë's notes"},
            },
            {
                "type": "document",
                "source": {"type": "url", "url": "https://example.com/paper.pdf"},
            },
            {"type": "text", "text": "Be thorough."},
        ],
    }


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (
            Message("user", "x", parts=(AudioPart(data=b"RIFF", media_type="audio/wav"),)),
            "anthropic cannot send a AudioPart in a user message: .*no audio",
        ),
        (
            Message("user", "x", parts=(FilePart(data=b"PK", media_type="application/zip"),)),
            "anthropic cannot send a FilePart in a user message: .*'application/zip'",
        ),
        (
            Message("assistant", "x", parts=(ImagePart(url="https://x/y.png"),)),
            "anthropic cannot send a ImagePart in a assistant message",
        ),
        (
            Message("system", "x", parts=(FilePart(data=b"a", media_type="text/plain"),)),
            "anthropic cannot send a FilePart in a system message",
        ),
    ],
)
async def test_anthropic_refuses_a_part_it_cannot_send_before_any_request(
    server: LoopbackServer, message: Message, match: str
) -> None:
    async with anthropic(server) as provider:
        with pytest.raises(ValidationError, match=match):
            await provider.complete([Message("user", "hi"), message])
        with pytest.raises(ValidationError, match=match):
            await drain(provider.stream([message]))
    assert server.requests == []


# -- Anthropic: thinking -------------------------------------------------------------------

THINKING = {"type": "thinking", "thinking": "The user wants order 7.", "signature": SIGNATURE}
REDACTED_BLOCK = {"type": "redacted_thinking", "data": REDACTED}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"order_id": "7"}}


def lookup(order_id: str) -> str:
    """Look up an order.

    Args:
        order_id: The order's id.
    """
    return f"order {order_id} shipped"


def thinking_stream(*, tool: bool) -> list[dict[str, Any]]:
    """A streamed reply as the API sends it with extended thinking on."""
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-5",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 40, "output_tokens": 1},
            },
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "The user wants "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "order 7."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": SIGNATURE},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": REDACTED_BLOCK},
        {"type": "content_block_stop", "index": 1},
    ]
    if tool:
        events += [
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "lookup",
                    "input": {},
                },
            },
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": '{"order_id": "7"}'},
            },
            {"type": "content_block_stop", "index": 2},
        ]
    else:
        events += [
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "text_delta", "text": "It shipped."},
            },
            {"type": "content_block_stop", "index": 2},
        ]
    events += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 30},
        },
        {"type": "message_stop"},
    ]
    return events


EXPECTED_REASONING = (
    ReasoningPart(text="The user wants order 7.", signature=SIGNATURE, provider="anthropic"),
    ReasoningPart(data=REDACTED, provider="anthropic"),
)


def _assert_thinking_sent_back(body: dict[str, Any]) -> None:
    """The second request of the loop: the first reply's thinking, unchanged, in order,
    before its tool_use, and the tool result after it."""
    assert body["messages"][-2] == {
        "role": "assistant",
        "content": [THINKING, REDACTED_BLOCK, TOOL_USE],
    }
    assert body["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "order 7 shipped"}
        ],
    }


@pytest.mark.parametrize("streamed", [False, True])
async def test_anthropic_tool_loop_with_thinking(server: LoopbackServer, streamed: bool) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    if streamed:
        server.queue(
            sse_reply(anthropic_sse(thinking_stream(tool=True))),
            sse_reply(anthropic_sse(thinking_stream(tool=False))),
            json_reply(200, message_doc()),
        )
    else:
        server.queue(
            json_reply(200, message_doc([THINKING, REDACTED_BLOCK, TOOL_USE], stop="tool_use")),
            json_reply(
                200,
                message_doc([THINKING, REDACTED_BLOCK, {"type": "text", "text": "It shipped."}]),
            ),
            json_reply(
                200,
                message_doc([THINKING, REDACTED_BLOCK, {"type": "text", "text": "It shipped."}]),
            ),
        )
    async with (
        anthropic(server) as provider,
        MemoryStore() as store,
        Pipeline(provider, store=store, tools=[lookup]) as pipe,
    ):
        if streamed:
            chunks = await drain(pipe.stream("s", "user", "Where is order 7?", thinking=thinking))
            assert chunks[-1].message is not None
            assert chunks[-1].message.content == "It shipped."
        else:
            result = await pipe.execute("s", "user", "Where is order 7?", thinking=thinking)
            assert result.response.content == "It shipped."
            assert result.response.parts == EXPECTED_REASONING
        stored = await store.load("s")
        # A later turn: the finished loop's thinking is no longer sent.
        await pipe.execute("s", "user", "Thanks", thinking=thinking)
    first, second, third = (r.json() for r in server.requests)
    assert first["thinking"] == second["thinking"] == thinking
    _assert_thinking_sent_back(second)
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].parts == EXPECTED_REASONING
    (call,) = stored[1].tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == (
        "toolu_1",
        "lookup",
        {"order_id": "7"},
    )
    assert stored[3].parts == EXPECTED_REASONING
    assert json.dumps(THINKING) not in json.dumps(third["messages"])
    assert third["messages"][1]["content"] == [TOOL_USE]
    assert third["messages"][3] == {"role": "assistant", "content": "It shipped."}


async def test_anthropic_sends_only_its_own_signed_reasoning(server: LoopbackServer) -> None:
    server.queue(json_reply(200, message_doc()))
    history = [
        Message("user", "q"),
        Message(
            "assistant",
            "",
            parts=(
                ReasoningPart(text="from another model", provider="openai"),
                ReasoningPart(text="unsigned"),
                ReasoningPart(text="signed", signature="s1"),
            ),
            tool_calls=(ToolCall("toolu_9", "f", "{}"),),
        ),
        Message("tool", "r", tool_call_id="toolu_9"),
    ]
    async with anthropic(server) as provider:
        await provider.complete(history)
    sent = server.requests[0].json()["messages"][1]
    assert sent["content"] == [
        {"type": "thinking", "thinking": "signed", "signature": "s1"},
        {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}},
    ]


# -- MockProvider --------------------------------------------------------------------------


async def test_mock_provider_callables_see_parts() -> None:
    image = ImagePart(data=EVERY, media_type="image/png")
    seen: list[Message] = []

    def respond(messages: list[Message]) -> Message:
        seen.extend(messages)
        return Message("assistant", "ok", parts=(ReasoningPart(text="saw an image"),))

    async with MemoryStore() as store, Pipeline(MockProvider(respond), store=store) as pipe:
        result = await pipe.execute("s", Message("user", "look", parts=(image,)))
        chunks = await drain(pipe.stream("s", Message("user", "again", parts=(image,))))
    assert seen[0].parts == (image,)
    assert result.response.parts == (ReasoningPart(text="saw an image"),)
    assert chunks[-1].message is not None
    assert chunks[-1].message.parts == (ReasoningPart(text="saw an image"),)

"""Provider overhead: OpenAIProvider / AnthropicProvider against raw httpx doing the same work.

Run: ``python -m benchmarks.bench_providers``

Both contenders talk to the same in-process ``httpx.MockTransport`` (no network, no server), so
what is measured is the client side alone: building the request body from a 40-message
history, sending it through httpx, and turning the answer into usable values. "raw httpx"
builds the body from plain dicts it already has, posts it with ``json=``, and ``json.loads``
the answer (for a stream: reads ``aiter_lines`` and ``json.loads`` each ``data:`` line,
joining the text). promptstate additionally converts ``Message`` objects, validates, prices
the call and assembles a typed ``Completion`` / ``Chunk``. Ratios are raw time / promptstate
time: 1.0 means no overhead, below 1 means promptstate is slower by that factor.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from benchmarks._timing import fmt_us, machine
from promptstate import AnthropicProvider, Message, OpenAIProvider, ToolCall

N_MESSAGES = 40
N_CHUNKS = 200


def history() -> list[Message]:
    out = [Message("system", "You are a helpful assistant.")]
    for i in range(N_MESSAGES):
        if i % 10 == 5:
            out.append(Message("assistant", "", tool_calls=(ToolCall(f"c{i}", "f", '{"q": "x"}'),)))
            out.append(Message("tool", '{"r": 1}', tool_call_id=f"c{i}"))
        else:
            role = "user" if i % 2 == 0 else "assistant"
            out.append(Message(role, f"message {i}: " + "lorem ipsum dolor sit amet " * 6))
    return out


def as_dicts(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


OPENAI_BODY = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello " * 50},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 900, "completion_tokens": 60, "total_tokens": 960},
    }
).encode()


def openai_stream_body() -> bytes:
    parts = [
        "data: "
        + json.dumps(
            {"choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]}
        )
        + "\n\n"
        for i in range(N_CHUNKS)
    ]
    parts.append(
        "data: "
        + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + "\n\n"
    )
    parts.append(
        "data: "
        + json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 200}})
        + "\n\n"
    )
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def anthropic_stream_body() -> bytes:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    events += [
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": f"tok{i} "},
        }
        for i in range(N_CHUNKS)
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 200},
        },
        {"type": "message_stop"},
    ]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def transport(body: bytes, content_type: str) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    return httpx.MockTransport(handler)


async def time_async(fn: Callable[[], Awaitable[object]], budget: float = 1.0) -> float:
    await fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while len(samples) < 20 or time.perf_counter() < deadline:
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def main() -> None:
    messages = history()
    dicts = as_dicts(messages)
    rows: list[tuple[str, float, float]] = []

    # complete(): OpenAI
    async with httpx.AsyncClient(transport=transport(OPENAI_BODY, "application/json")) as client:
        provider = OpenAIProvider("gpt-4o-mini", base_url="http://bench/v1", http_client=client)

        async def ours() -> object:
            return await provider.complete(messages, temperature=0.2)

        async def raw() -> object:
            r = await client.post(
                "http://bench/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": dicts, "temperature": 0.2},
                headers={"authorization": "Bearer x"},
            )
            doc = json.loads(r.content)
            return doc["choices"][0]["message"]["content"], doc["usage"]

        rows.append(("openai complete", await time_async(ours), await time_async(raw)))

    # stream(): OpenAI
    async with httpx.AsyncClient(
        transport=transport(openai_stream_body(), "text/event-stream")
    ) as client:
        provider = OpenAIProvider("gpt-4o-mini", base_url="http://bench/v1", http_client=client)

        async def ours_stream() -> object:
            return [c async for c in provider.stream(messages)]

        async def raw_stream() -> object:
            text: list[str] = []
            body = {"model": "gpt-4o-mini", "messages": dicts, "stream": True}
            async with client.stream("POST", "http://bench/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        doc = json.loads(line[6:])
                        for choice in doc["choices"]:
                            text.append(choice["delta"].get("content") or "")
            return "".join(text)

        rows.append(
            (
                f"openai stream ({N_CHUNKS} chunks)",
                await time_async(ours_stream),
                await time_async(raw_stream),
            )
        )

    # stream(): Anthropic
    async with httpx.AsyncClient(
        transport=transport(anthropic_stream_body(), "text/event-stream")
    ) as client:
        anthropic = AnthropicProvider(
            "claude-3-5-haiku", base_url="http://bench", http_client=client
        )

        async def ours_anthropic() -> object:
            return [c async for c in anthropic.stream(messages)]

        async def raw_anthropic() -> object:
            text: list[str] = []
            body = {
                "model": "claude-3-5-haiku",
                "max_tokens": 4096,
                "messages": dicts[1:],
                "stream": True,
            }
            async with client.stream("POST", "http://bench/v1/messages", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        doc = json.loads(line[6:])
                        if doc["type"] == "content_block_delta":
                            text.append(doc["delta"]["text"])
            return "".join(text)

        rows.append(
            (
                f"anthropic stream ({N_CHUNKS} events)",
                await time_async(ours_anthropic),
                await time_async(raw_anthropic),
            )
        )

    print(f"Provider client overhead, median per call ({machine()})")
    print(f"{'case':32} {'promptstate µs':>15} {'raw httpx µs':>13} {'raw/ours':>9}")
    for name, ours_t, raw_t in rows:
        print(f"{name:32} {fmt_us(ours_t):>15} {fmt_us(raw_t):>13} {raw_t / ours_t:>9.2f}")


if __name__ == "__main__":
    asyncio.run(main())

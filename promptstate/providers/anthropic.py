"""Anthropic's messages API over httpx.

``system`` messages become the top-level ``system`` prompt; an assistant message's tool calls
become ``tool_use`` blocks and ``tool`` messages become ``tool_result`` blocks of a user turn
(consecutive turns of one role are merged, as the API wants). Stop reasons are reported in
the OpenAI vocabulary the rest of promptstate uses: ``end_turn`` and ``stop_sequence`` →
``"stop"``, ``max_tokens`` → ``"length"``, ``tool_use`` → ``"tool_calls"``; others as sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import msgspec

from promptstate.exceptions import ProviderError, ValidationError
from promptstate.providers._http import HTTPProvider, Secret, read_key
from promptstate.providers.base import Chunk, Completion
from promptstate.providers.pricing import ANTHROPIC_PRICES, Price
from promptstate.tools import Tool, pair_tool_messages
from promptstate.types import Message, ToolCall, Usage

__all__ = ["AnthropicProvider"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
# OpenAI-only options that the messages API would reject: refused before any request.
_UNSUPPORTED = ("seed", "response_format", "frequency_penalty", "presence_penalty", "n")
_RETRYABLE_ERRORS = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _tool_entry(item: Any) -> Any:
    if isinstance(item, Tool):
        return item.to_anthropic()
    if isinstance(item, Mapping):
        if item.get("type") == "function" or "parameters" in item:
            return Tool.from_spec(item).to_anthropic()
        return dict(item)  # Anthropic's own shape, or a server tool
    if callable(item):
        return Tool.from_function(item).to_anthropic()
    raise ValidationError(f"not a tool: {item!r}")


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, Mapping):
        return dict(choice)
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, str):
        return {"type": "tool", "name": choice}
    raise ValidationError(f"tool_choice must be a string or an object, got {choice!r}")


def _tool_input(call: ToolCall) -> dict[str, Any]:
    try:
        value = _decode(call.arguments or "{}")
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        logger.warning("tool call %r has arguments that are not a JSON object; sent as {}", call.id)
        return {}
    return value


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and content blocks of one of our (non-system) messages."""
    if message.role == "tool":
        if not message.tool_call_id:
            raise ValidationError("a tool message needs tool_call_id (the call it answers)")
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": message.content,
        }
        if message.metadata.get("is_error"):
            block["is_error"] = True
        return "user", [block]
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    if message.role == "assistant":
        blocks.extend(
            {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c)}
            for c in message.tool_calls
        )
    return message.role, blocks


def _usage(doc: Any) -> tuple[int, int, int, int]:
    """(input incl. cache, output, cache writes, cache reads) from an Anthropic usage object."""
    if not isinstance(doc, dict):
        return 0, 0, 0, 0
    write = int(doc.get("cache_creation_input_tokens") or 0)
    read = int(doc.get("cache_read_input_tokens") or 0)
    plain = int(doc.get("input_tokens") or 0)
    return plain + write + read, int(doc.get("output_tokens") or 0), write, read


class AnthropicProvider(HTTPProvider):
    """A Claude model behind Anthropic's messages API.

    Args:
        model: The model name, e.g. ``"claude-sonnet-4-5"``.
        api_key: The API key; defaults to the ``ANTHROPIC_API_KEY`` environment variable.
            May be omitted when ``base_url`` points to a server that needs none.
        base_url: The API root, ``https://api.anthropic.com`` by default (or
            ``ANTHROPIC_BASE_URL``); requests go to ``{base_url}/v1/messages``.
        max_tokens: The ``max_tokens`` sent when a request does not set it (the API
            requires one).
        timeout: Seconds per request (connect at most 10), or an :class:`httpx.Timeout`.
        max_retries: How often to resend a request that failed with 408, 409, 429, 5xx
            (including 529 overloaded), a timeout or a connection error.
        http_client: An :class:`httpx.AsyncClient` to borrow (not closed by :meth:`aclose`).
        prices: Extra or overriding prices, ``{"model": Price(...) or (input, output)}``.
        anthropic_version: The ``anthropic-version`` header.
        headers: Extra HTTP headers for every request (e.g. ``anthropic-beta``).
        backoff: First retry delay in seconds (doubled each retry, with jitter).
        max_backoff: Longest retry delay in seconds.

    Request options: ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``
    (sent as ``stop_sequences``), ``tools``, ``tool_choice`` (``"auto"``, ``"none"``,
    ``"required"`` or a tool's name, or Anthropic's own object) and anything else the API
    accepts (``metadata``, ``thinking`` ...), sent as given. ``seed``, ``response_format``,
    ``frequency_penalty``, ``presence_penalty`` and ``n`` do not exist in this API and raise
    :class:`~promptstate.exceptions.ValidationError`.
    """

    name = "anthropic"
    path = "/v1/messages"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_tokens: int = 4096,
        timeout: float | httpx.Timeout = 600.0,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
        prices: Mapping[str, Price | tuple[float, float]] | None = None,
        anthropic_version: str = API_VERSION,
        headers: Mapping[str, str] | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        key = read_key(api_key, "ANTHROPIC_API_KEY")
        url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        if not key and url.rstrip("/") == DEFAULT_BASE_URL:
            raise ValidationError("no Anthropic API key: pass api_key= or set ANTHROPIC_API_KEY")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValidationError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        self.max_tokens = max_tokens
        super().__init__(
            model,
            api_key=Secret(key) if key else None,
            auth_header="x-api-key",
            auth_prefix="",
            base_url=url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
            prices=prices,
            default_prices=ANTHROPIC_PRICES,
            headers={"anthropic-version": anthropic_version, **(headers or {})},
            backoff=backoff,
            max_backoff=max_backoff,
        )

    # -- requests ----------------------------------------------------------------------------

    def build_body(
        self, messages: Sequence[Message], options: Mapping[str, Any], *, stream: bool
    ) -> dict[str, Any]:
        """The JSON body for ``POST /v1/messages`` (public so it can be inspected)."""
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for message in pair_tool_messages(messages):
            if message.role == "system":
                if message.content:
                    system.append(message.content)
                continue
            role, blocks = _blocks(message)
            if not blocks:
                continue
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})
        for turn in turns:  # a lone text block is sent as plain text, as most clients do
            content = turn["content"]
            if len(content) == 1 and content[0]["type"] == "text":
                turn["content"] = content[0]["text"]
        body: dict[str, Any] = {
            "model": options.get("model") or self.model,
            "max_tokens": self.max_tokens,
            "messages": turns,
        }
        if system:
            body["system"] = "\n\n".join(system)
        for key, value in options.items():
            if value is None or key in ("model", "stream"):
                continue
            if key in _UNSUPPORTED:
                raise ValidationError(f"AnthropicProvider does not support the {key!r} option")
            if key == "stop":
                body["stop_sequences"] = [value] if isinstance(value, str) else list(value)
            elif key == "tools":
                if value:
                    body["tools"] = [_tool_entry(t) for t in value]
            elif key == "tool_choice":
                body["tool_choice"] = _tool_choice(value)
            elif key == "system":
                body["system"] = value if not system else f"{value}\n\n{body['system']}"
            else:
                body[key] = value
        if stream:
            body["stream"] = True
        return body

    def _parse_completion(self, doc: Any) -> Completion:
        if not isinstance(doc, dict) or doc.get("type") == "error":
            raise self._error(f"error in response: {doc!r}"[:500])
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in doc.get("content") or ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                text.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                calls.append(
                    ToolCall(
                        str(block.get("id") or f"toolu_{len(calls)}"),
                        str(block.get("name") or ""),
                        _encode(block.get("input") or {}).decode(),
                    )
                )
        tool_calls = tuple(calls)
        inp, out, write, read = _usage(doc.get("usage"))
        stop = doc.get("stop_reason")
        return Completion(
            message=Message("assistant", "".join(text), tool_calls=tool_calls),
            usage=Usage(inp, out),
            cost=self.cost(inp, out, cache_write_tokens=write, cache_read_tokens=read),
            finish_reason=_STOP_REASONS.get(stop, stop) if isinstance(stop, str) else None,
            model=doc.get("model"),
        )

    async def _read_stream(self, response: httpx.Response) -> AsyncIterator[Chunk]:
        text: list[str] = []
        blocks: dict[int, list[Any]] = {}  # index -> [id, name, [json parts]] for tool_use
        usage_doc: dict[str, Any] = {}
        stop: str | None = None
        finished = False
        async for event in self._events(response):
            doc = self._decode_event(event.data)
            if not isinstance(doc, dict):
                continue
            kind = doc.get("type") or event.event
            if kind == "message_start":
                message = doc.get("message") or {}
                usage_doc.update(message.get("usage") or {})
            elif kind == "content_block_start":
                block = doc.get("content_block") or {}
                if block.get("type") == "tool_use":
                    index = int(doc.get("index") or 0)
                    blocks[index] = [block.get("id") or f"toolu_{index}", block.get("name"), []]
                    initial = block.get("input")
                    if initial:
                        blocks[index][2].append(_encode(initial).decode())
                elif block.get("type") == "text" and block.get("text"):
                    text.append(block["text"])
                    yield Chunk(text=block["text"])
            elif kind == "content_block_delta":
                delta = doc.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    text.append(delta["text"])
                    yield Chunk(text=delta["text"])
                elif delta.get("type") == "input_json_delta":
                    slot = blocks.get(int(doc.get("index") or 0))
                    if slot is not None and delta.get("partial_json"):
                        slot[2].append(delta["partial_json"])
            elif kind == "message_delta":
                delta = doc.get("delta") or {}
                stop = delta.get("stop_reason") or stop
                # message_delta usage counts are cumulative: they replace earlier ones.
                usage_doc.update(
                    {k: v for k, v in (doc.get("usage") or {}).items() if v is not None}
                )
            elif kind == "message_stop":
                finished = True
                break
            elif kind == "error":
                raise self._stream_error(doc.get("error"))
        if not finished:
            raise self._error("stream ended before message_stop", retryable=True)
        calls = tuple(
            ToolCall(str(call_id), str(name or ""), "".join(parts) or "{}")
            for _, (call_id, name, parts) in sorted(blocks.items())
        )
        inp, out, write, read = _usage(usage_doc)
        yield Chunk(
            done=True,
            message=Message("assistant", "".join(text), tool_calls=calls),
            tool_calls=calls,
            usage=Usage(inp, out),
            cost=self.cost(inp, out, cache_write_tokens=write, cache_read_tokens=read),
            finish_reason=_STOP_REASONS.get(stop, stop) if stop else None,
        )

    def _stream_error(self, error: Any) -> ProviderError:
        kind = error.get("type") if isinstance(error, dict) else None
        msg = error.get("message") if isinstance(error, dict) else None
        text = f"{msg or error} ({kind})" if kind else str(msg or error)
        return self._error(f"error in stream: {text}", retryable=kind in _RETRYABLE_ERRORS)

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

from promptstate._tools import Tool, pair_tool_messages
from promptstate.exceptions import ProviderError, ValidationError
from promptstate.providers._http import HTTPProvider, Request, read_key
from promptstate.providers._parts import b64, parse_data_url, unsupported
from promptstate.providers.base import Chunk, Completion
from promptstate.providers.pricing import ANTHROPIC_PRICES, Price
from promptstate.redaction import Secret
from promptstate.types import (
    FilePart,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    TextPart,
    ToolCall,
    Usage,
)

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


def _image_block(part: ImagePart) -> dict[str, Any]:
    if part.data is not None:
        source = {"type": "base64", "media_type": part.media_type, "data": b64(part.data)}
    else:
        url = part.url or ""
        inline = parse_data_url(url)
        if inline is not None:
            source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
        else:
            source = {"type": "url", "url": url}
    return {"type": "image", "source": source}


def _document_block(part: FilePart, role: str) -> dict[str, Any]:
    media_type = part.media_type.split(";")[0].strip().lower()
    source: dict[str, Any]
    if part.data is not None:
        if media_type == "application/pdf":
            source = {"type": "base64", "media_type": media_type, "data": b64(part.data)}
        elif media_type.startswith("text/"):
            try:
                text = part.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise unsupported("anthropic", part, role, "a text document must be UTF-8") from exc
            source = {"type": "text", "media_type": "text/plain", "data": text}
        else:
            raise unsupported(
                "anthropic",
                part,
                role,
                f"documents are PDF or plain text, not {part.media_type!r}",
            )
    else:
        url = part.url or ""
        inline = parse_data_url(url)
        if inline is not None:
            if inline[0] != "application/pdf":
                raise unsupported(
                    "anthropic", part, role, f"documents are PDF or plain text, not {inline[0]!r}"
                )
            source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
        else:
            source = {"type": "url", "url": url}
    block: dict[str, Any] = {"type": "document", "source": source}
    if part.name:
        block["title"] = part.name
    return block


def _part_block(part: Part, role: str) -> dict[str, Any] | None:
    """The content block of one part of a user or tool message (``None``: not sent)."""
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        return _image_block(part)
    if isinstance(part, FilePart):
        return _document_block(part, role)
    if isinstance(part, ReasoningPart):
        return None
    raise unsupported("anthropic", part, role, "the messages API takes no audio")


def _thinking_block(part: ReasoningPart) -> dict[str, Any] | None:
    """The ``thinking``/``redacted_thinking`` block a reasoning part came from, verbatim;
    ``None`` for reasoning Anthropic did not sign (another provider's, or shown text only)."""
    if part.provider not in (None, "anthropic"):
        return None
    if part.data is not None:
        return {"type": "redacted_thinking", "data": part.data}
    if part.signature is not None:
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    return None


def _blocks(message: Message, *, thinking: bool) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and content blocks of one of our (non-system) messages.

    ``thinking``: send an assistant message's reasoning back (as the blocks it came from,
    first, in order), which the API needs for the turns of a tool loop still going on.
    """
    if message.role == "tool":
        if not message.tool_call_id:
            raise ValidationError("a tool message needs tool_call_id (the call it answers)")
        content: str | list[dict[str, Any]] = message.content
        if message.parts:
            items = [{"type": "text", "text": message.content}] if message.content else []
            for part in message.parts:
                item = _part_block(part, "tool")
                if item is not None:
                    items.append(item)
            content = items
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": content,
        }
        if message.metadata.get("is_error"):
            block["is_error"] = True
        return "user", [block]
    blocks: list[dict[str, Any]] = []
    if message.role == "assistant":
        for part in message.parts:
            if isinstance(part, ReasoningPart):
                if thinking:
                    found = _thinking_block(part)
                    if found is not None:
                        blocks.append(found)
            elif not isinstance(part, TextPart):
                raise unsupported(
                    "anthropic", part, "assistant", "assistant messages take text and reasoning"
                )
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        blocks.extend(
            {"type": "text", "text": p.text} for p in message.parts if isinstance(p, TextPart)
        )
        blocks.extend(
            {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c)}
            for c in message.tool_calls
        )
        return "assistant", blocks
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for part in message.parts:
        item = _part_block(part, message.role)
        if item is not None:
            blocks.append(item)
    return message.role, blocks


def _reasoning_part(block: Mapping[str, Any]) -> ReasoningPart | None:
    """A ``thinking`` or ``redacted_thinking`` block of a reply as a reasoning part."""
    if block.get("type") == "thinking":
        signature = block.get("signature")
        return ReasoningPart(
            text=str(block.get("thinking") or ""),
            signature=signature if isinstance(signature, str) else None,
            provider="anthropic",
        )
    if block.get("type") == "redacted_thinking":
        return ReasoningPart(data=str(block.get("data") or ""), provider="anthropic")
    return None


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
        paired = pair_tool_messages(messages)
        # Reasoning goes back for the assistant turns after the last user message: the tool
        # loop in progress, whose thinking blocks the API wants back unchanged.
        last_user = max((i for i, m in enumerate(paired) if m.role == "user"), default=-1)
        for index, message in enumerate(paired):
            if message.role == "system":
                for part in message.parts:
                    if not isinstance(part, TextPart):
                        raise unsupported(
                            "anthropic", part, "system", "the system prompt takes text only"
                        )
                if message.text:
                    system.append(message.text)
                continue
            role, blocks = _blocks(message, thinking=index > last_user)
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

    def _parse_completion(self, doc: Any, request: Request) -> Completion:
        if not isinstance(doc, dict) or doc.get("type") == "error":
            raise self._error(f"error in response: {doc!r}"[:500])
        text: list[str] = []
        calls: list[ToolCall] = []
        parts: list[Part] = []
        for block in doc.get("content") or ():
            if not isinstance(block, dict):
                continue
            reasoning = _reasoning_part(block)
            if reasoning is not None:
                parts.append(reasoning)
            elif block.get("type") == "text":
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
            message=Message("assistant", "".join(text), tool_calls=tool_calls, parts=tuple(parts)),
            usage=Usage(inp, out),
            cost=self.cost(
                inp, out, cache_write_tokens=write, cache_read_tokens=read, model=request.model
            ),
            finish_reason=_STOP_REASONS.get(stop, stop) if isinstance(stop, str) else None,
            model=doc.get("model"),
        )

    async def _read_stream(
        self, response: httpx.Response, request: Request
    ) -> AsyncIterator[Chunk]:
        text: list[str] = []
        blocks: dict[int, list[Any]] = {}  # index -> [id, name, [json parts]] for tool_use
        # index -> [kind, [thinking pieces], [signature pieces], data] for (redacted) thinking
        thinking: dict[int, list[Any]] = {}
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
                elif block.get("type") == "thinking":
                    index = int(doc.get("index") or 0)
                    first, sig = block.get("thinking"), block.get("signature")
                    thinking[index] = [
                        "thinking",
                        [first] if isinstance(first, str) and first else [],
                        [sig] if isinstance(sig, str) and sig else [],
                        None,
                    ]
                elif block.get("type") == "redacted_thinking":
                    index = int(doc.get("index") or 0)
                    thinking[index] = ["redacted", [], [], str(block.get("data") or "")]
            elif kind == "content_block_delta":
                delta = doc.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    text.append(delta["text"])
                    yield Chunk(text=delta["text"])
                elif delta.get("type") in ("thinking_delta", "signature_delta"):
                    slot = thinking.get(int(doc.get("index") or 0))
                    if slot is not None:
                        if delta.get("type") == "thinking_delta" and delta.get("thinking"):
                            slot[1].append(str(delta["thinking"]))
                        elif delta.get("type") == "signature_delta" and delta.get("signature"):
                            slot[2].append(str(delta["signature"]))
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
        parts: list[Part] = []
        for _, (kind, pieces, signature, data) in sorted(thinking.items()):
            if kind == "redacted":
                parts.append(ReasoningPart(data=data, provider="anthropic"))
            else:
                parts.append(
                    ReasoningPart(
                        text="".join(pieces),
                        signature="".join(signature) or None,
                        provider="anthropic",
                    )
                )
        message = Message("assistant", "".join(text), tool_calls=calls, parts=tuple(parts))
        inp, out, write, read = _usage(usage_doc)
        usage = Usage(inp, out)
        if not usage_doc:  # a server that sent no usage at all: counted here, marked so
            usage = self._estimate(request, message)
            inp, out = usage.input_tokens, usage.output_tokens
        yield Chunk(
            done=True,
            message=message,
            tool_calls=calls,
            usage=usage,
            cost=self.cost(
                inp, out, cache_write_tokens=write, cache_read_tokens=read, model=request.model
            ),
            finish_reason=_STOP_REASONS.get(stop, stop) if stop else None,
        )

    def _stream_error(self, error: Any) -> ProviderError:
        kind = error.get("type") if isinstance(error, dict) else None
        msg = error.get("message") if isinstance(error, dict) else None
        text = f"{msg or error} ({kind})" if kind else str(msg or error)
        return self._error(f"error in stream: {text}", retryable=kind in _RETRYABLE_ERRORS)

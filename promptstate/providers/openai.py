"""OpenAI chat completions over httpx, for OpenAI and every OpenAI-compatible server.

The same provider talks to api.openai.com and, with ``base_url``, to vLLM, llama.cpp's
server, Ollama, LM Studio, Together, Groq and anything else that serves ``POST
{base_url}/chat/completions`` with the OpenAI request and response shapes::

    OpenAIProvider("gpt-4o-mini")                                       # OPENAI_API_KEY
    OpenAIProvider("llama3.1", base_url="http://localhost:11434/v1")    # Ollama, no key
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from promptstate.exceptions import ProviderError, ValidationError
from promptstate.providers._http import HTTPProvider, Secret, read_key
from promptstate.providers.base import Chunk, Completion
from promptstate.providers.pricing import OPENAI_PRICES, Price
from promptstate.tools import Tool, pair_tool_messages
from promptstate.types import Message, ToolCall, Usage

__all__ = ["OpenAIProvider"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def _tool_entry(item: Any) -> Any:
    if isinstance(item, Tool):
        return item.to_openai()
    if isinstance(item, Mapping):
        if "type" in item:
            return dict(item)  # already OpenAI's shape (function or a built-in tool)
        return Tool.from_spec(item).to_openai()
    if callable(item):
        return Tool.from_function(item).to_openai()
    raise ValidationError(f"not a tool: {item!r}")


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": choice}}
    return choice


def _message_entry(message: Message) -> dict[str, Any]:
    role = message.role
    entry: dict[str, Any] = {"role": role}
    if role == "tool":
        if not message.tool_call_id:
            raise ValidationError("a tool message needs tool_call_id (the call it answers)")
        entry["tool_call_id"] = message.tool_call_id
        entry["content"] = message.content
        return entry
    if role == "assistant" and message.tool_calls:
        entry["content"] = message.content or None
        entry["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    else:
        entry["content"] = message.content
    if message.name:
        entry["name"] = message.name
    return entry


def _usage(doc: Any) -> tuple[Usage, int]:
    """Usage and cached prompt tokens from an OpenAI ``usage`` object."""
    if not isinstance(doc, dict):
        return Usage(), 0
    details = doc.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return (
        Usage(int(doc.get("prompt_tokens") or 0), int(doc.get("completion_tokens") or 0)),
        int(cached or 0),
    )


class _ToolCallBuilder:
    """Assembles streamed ``delta.tool_calls`` fragments (keyed by ``index``) into calls.

    Some servers (Ollama) send every call of a parallel batch whole at index 0, told apart
    only by their ids: a new id at an index already in use starts a new call.
    """

    def __init__(self) -> None:
        self._calls: list[list[Any]] = []  # [id, name, [argument parts]] in arrival order
        self._slot_of: dict[int, int] = {}  # the server's index -> position in _calls

    def add(self, fragment: Mapping[str, Any]) -> None:
        index = fragment.get("index")
        if not isinstance(index, int):
            index = len(self._slot_of)
        call_id = fragment.get("id")
        position = self._slot_of.get(index)
        if position is None or (call_id and self._calls[position][0] not in ("", call_id)):
            position = len(self._calls)
            self._calls.append(["", "", []])
            self._slot_of[index] = position
        slot = self._calls[position]
        if call_id:
            slot[0] = call_id
        function = fragment.get("function") or {}
        if function.get("name") and not slot[1]:
            slot[1] = function["name"]
        if function.get("arguments"):
            slot[2].append(function["arguments"])

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(call_id or f"call_{position}", name, "".join(parts))
            for position, (call_id, name, parts) in enumerate(self._calls)
        )


class OpenAIProvider(HTTPProvider):
    """A model behind the OpenAI chat completions API.

    Args:
        model: The model name (``"gpt-4o-mini"``, or whatever the server calls its model).
        api_key: The API key; defaults to the ``OPENAI_API_KEY`` environment variable. May be
            omitted when ``base_url`` points to a server that needs none.
        base_url: The API root, ``https://api.openai.com/v1`` by default (or
            ``OPENAI_BASE_URL``); e.g. ``http://localhost:8000/v1`` for vLLM.
        timeout: Seconds per request (connect at most 10), or an :class:`httpx.Timeout`.
        max_retries: How often to resend a request that failed with 408, 409, 429, 5xx, a
            timeout or a connection error.
        http_client: An :class:`httpx.AsyncClient` to borrow (not closed by :meth:`aclose`).
        prices: Extra or overriding prices, ``{"model": Price(...) or (input, output)}`` in
            USD per million tokens.
        organization: Sent as ``OpenAI-Organization`` when given.
        headers: Extra HTTP headers for every request.
        max_tokens_field: The body field ``max_tokens=`` is sent as. By default
            ``max_completion_tokens`` for api.openai.com (required by its reasoning models)
            and ``max_tokens`` for any other server.
        backoff: First retry delay in seconds (doubled each retry, with jitter).
        max_backoff: Longest retry delay in seconds.

    Request options (``complete(messages, **options)``): ``temperature``, ``max_tokens``,
    ``top_p``, ``stop``, ``seed``, ``response_format``, ``tools`` (:class:`~promptstate.tools.Tool`
    objects, functions or JSON tool objects), ``tool_choice`` (``"auto"``, ``"none"``,
    ``"required"`` or a tool's name) and anything else the server accepts, sent as given.
    Options set to ``None`` are left out.

    Raises:
        ValidationError: No API key for api.openai.com, or a bad argument.
    """

    name = "openai"
    path = "/chat/completions"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = 600.0,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
        prices: Mapping[str, Price | tuple[float, float]] | None = None,
        organization: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_tokens_field: str | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        key = read_key(api_key, "OPENAI_API_KEY")
        explicit_url = base_url or os.environ.get("OPENAI_BASE_URL")
        url = explicit_url or DEFAULT_BASE_URL
        official = url.rstrip("/") == DEFAULT_BASE_URL
        if not key and official:
            raise ValidationError(
                "no OpenAI API key: pass api_key= or set OPENAI_API_KEY "
                "(a local server without keys needs base_url=)"
            )
        extra = dict(headers or {})
        if organization:
            extra["OpenAI-Organization"] = organization
        self.max_tokens_field = max_tokens_field or (
            "max_completion_tokens" if official else "max_tokens"
        )
        super().__init__(
            model,
            api_key=Secret(key) if key else None,
            auth_header="Authorization",
            auth_prefix="Bearer ",
            base_url=url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
            prices=prices,
            default_prices=OPENAI_PRICES,
            headers=extra,
            backoff=backoff,
            max_backoff=max_backoff,
        )

    # -- requests ----------------------------------------------------------------------------

    def build_body(
        self, messages: Sequence[Message], options: Mapping[str, Any], *, stream: bool
    ) -> dict[str, Any]:
        """The JSON body for ``POST /chat/completions`` (public so it can be inspected)."""
        body: dict[str, Any] = {
            "model": options.get("model") or self.model,
            "messages": [_message_entry(m) for m in pair_tool_messages(messages)],
        }
        for key, value in options.items():
            if value is None or key == "model":
                continue
            if key == "max_tokens":
                body[self.max_tokens_field] = value
            elif key == "tools":
                if value:
                    body["tools"] = [_tool_entry(t) for t in value]
            elif key == "tool_choice":
                body["tool_choice"] = _tool_choice(value)
            elif key in ("stream", "stream_options"):
                continue
            else:
                body[key] = value
        if stream:
            body["stream"] = True
            if "stream_options" in options:
                if options["stream_options"] is not None:
                    body["stream_options"] = options["stream_options"]
            else:
                body["stream_options"] = {"include_usage": True}
        return body

    def _parse_completion(self, doc: Any) -> Completion:
        if isinstance(doc, dict) and doc.get("error"):
            raise self._error(f"error in response: {doc['error']!r}")
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise self._error("response has no choices")
        choice = choices[0]
        raw = choice.get("message") or {}
        calls = tuple(
            ToolCall(
                str(call.get("id") or f"call_{i}"),
                str((call.get("function") or {}).get("name") or ""),
                str((call.get("function") or {}).get("arguments") or ""),
            )
            for i, call in enumerate(raw.get("tool_calls") or ())
        )
        metadata: dict[str, Any] = {}
        if raw.get("refusal"):
            metadata["refusal"] = raw["refusal"]
        message = Message(
            "assistant", raw.get("content") or "", tool_calls=calls, metadata=metadata
        )
        usage, cached = _usage(doc.get("usage"))
        return Completion(
            message=message,
            usage=usage,
            cost=self.cost(usage.input_tokens, usage.output_tokens, cache_read_tokens=cached),
            finish_reason=choice.get("finish_reason"),
            model=doc.get("model"),
        )

    async def _read_stream(self, response: httpx.Response) -> AsyncIterator[Chunk]:
        text: list[str] = []
        builder = _ToolCallBuilder()
        finish_reason: str | None = None
        usage: Usage | None = None
        cached = 0
        refusal: list[str] = []
        done = False
        async for event in self._events(response):
            if event.data.strip() == "[DONE]":
                done = True
                break
            doc = self._decode_event(event.data)
            if not isinstance(doc, dict):
                continue
            if doc.get("error"):
                raise self._stream_error(doc["error"])
            if doc.get("usage"):
                usage, cached = _usage(doc["usage"])
            for choice in doc.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                if piece:
                    text.append(piece)
                    yield Chunk(text=piece)
                if delta.get("refusal"):
                    refusal.append(delta["refusal"])
                for fragment in delta.get("tool_calls") or ():
                    if isinstance(fragment, dict):
                        builder.add(fragment)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
        if not done and finish_reason is None:
            raise self._error("stream ended before the answer was complete", retryable=True)
        calls = builder.calls()
        metadata: dict[str, Any] = {"refusal": "".join(refusal)} if refusal else {}
        message = Message("assistant", "".join(text), tool_calls=calls, metadata=metadata)
        final_usage = usage or Usage()
        yield Chunk(
            done=True,
            message=message,
            tool_calls=calls,
            usage=final_usage,
            cost=self.cost(
                final_usage.input_tokens, final_usage.output_tokens, cache_read_tokens=cached
            ),
            finish_reason=finish_reason,
        )

    def _stream_error(self, error: Any) -> ProviderError:
        if isinstance(error, dict):
            msg = str(error.get("message") or error)
            kind = error.get("type") or error.get("code")
            if kind:
                msg = f"{msg} ({kind})"
        else:
            msg = str(error)
        return self._error(f"error in stream: {msg}")

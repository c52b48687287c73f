"""OpenAI chat completions over httpx, for OpenAI and every OpenAI-compatible server.

The same provider talks to api.openai.com and, with ``base_url``, to vLLM, llama.cpp's
server, Ollama, LM Studio, Together, Groq and anything else that serves ``POST
{base_url}/chat/completions`` with the OpenAI request and response shapes::

    OpenAIProvider("gpt-4o-mini")                                       # OPENAI_API_KEY
    OpenAIProvider("llama3.1", base_url="http://localhost:11434/v1")    # Ollama, no key
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import msgspec

from promptstate._tools import Tool, pair_tool_messages
from promptstate.exceptions import ProviderError, ValidationError
from promptstate.providers._http import HTTPProvider, Request, read_key
from promptstate.providers._parts import b64, data_url, unsupported
from promptstate.providers.base import Chunk, Completion
from promptstate.providers.pricing import OPENAI_PRICES, Price
from promptstate.redaction import Secret
from promptstate.types import (
    AudioPart,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    TextPart,
    ToolCall,
    Usage,
)

__all__ = ["OpenAIProvider"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

_json_encode = msgspec.json.Encoder().encode


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


#: Media types of the audio OpenAI's ``input_audio`` takes, and the format it names them by.
_AUDIO_FORMATS = {
    "audio/wav": "wav",
    "audio/wave": "wav",
    "audio/x-wav": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}
#: The media type of an audio reply, by the ``audio.format`` the request asked for.
_AUDIO_MEDIA_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "pcm16": "audio/pcm",
}


def _content_item(part: Part, role: str) -> dict[str, Any] | None:
    """One item of a user message's content array (``None`` for a part never sent)."""
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ReasoningPart):
        return None  # a model's reasoning is not sent back
    if isinstance(part, ImagePart):
        if part.data is not None:
            url = data_url(part.media_type or "application/octet-stream", part.data)
        else:
            url = part.url or ""
        image: dict[str, Any] = {"url": url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, AudioPart):
        audio_format = _AUDIO_FORMATS.get(part.media_type.lower())
        if audio_format is None:
            raise unsupported(
                "openai", part, role, f"input_audio takes wav or mp3, not {part.media_type!r}"
            )
        return {
            "type": "input_audio",
            "input_audio": {"data": b64(part.data), "format": audio_format},
        }
    if part.data is None:
        raise unsupported("openai", part, role, "the file part takes the file's data, not a URL")
    return {
        "type": "file",
        "file": {
            "filename": part.name or "file",
            "file_data": data_url(part.media_type, part.data),
        },
    }


def _text_only(message: Message) -> str:
    """The text of a message whose role takes text only (reasoning is left out)."""
    for part in message.parts:
        if not isinstance(part, (TextPart, ReasoningPart)):
            if message.role == "assistant" and isinstance(part, AudioPart):
                continue  # a model's audio reply: its transcript stands for it
            raise unsupported(
                "openai", part, message.role, f"{message.role} messages take text only"
            )
    text = message.text
    if not text and message.role == "assistant":
        text = "\n".join(
            p.transcript for p in message.parts if isinstance(p, AudioPart) and p.transcript
        )
    return text


def _message_entry(message: Message) -> dict[str, Any]:
    role = message.role
    entry: dict[str, Any] = {"role": role}
    if role == "tool":
        if not message.tool_call_id:
            raise ValidationError("a tool message needs tool_call_id (the call it answers)")
        entry["tool_call_id"] = message.tool_call_id
        entry["content"] = _text_only(message)
        return entry
    if role == "user" and message.parts:
        items: list[dict[str, Any]] = []
        if message.content:
            items.append({"type": "text", "text": message.content})
        for part in message.parts:
            item = _content_item(part, role)
            if item is not None:
                items.append(item)
        entry["content"] = items
    elif role == "assistant" and message.tool_calls:
        entry["content"] = _text_only(message) or None
        entry["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    else:
        entry["content"] = _text_only(message) if message.parts else message.content
    if message.name:
        entry["name"] = message.name
    return entry


def _arguments(value: Any) -> str:
    """Tool-call arguments as JSON text: a server that sends a JSON object gets it encoded."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return _json_encode(value).decode()


def _reasoning(doc: Mapping[str, Any]) -> str:
    """The reasoning text of a message or delta: ``reasoning_content`` (DeepSeek, vLLM) or
    ``reasoning`` (OpenRouter, newer vLLM)."""
    value = doc.get("reasoning_content")
    if not isinstance(value, str) or not value:
        value = doc.get("reasoning")
    return value if isinstance(value, str) else ""


def _audio_media_type(options: Mapping[str, Any]) -> str:
    audio = options.get("audio")
    audio_format = audio.get("format") if isinstance(audio, Mapping) else None
    return _AUDIO_MEDIA_TYPES.get(str(audio_format), "audio/wav")


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
            slot[2].append(_arguments(function["arguments"]))

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

    def _parse_completion(self, doc: Any, request: Request) -> Completion:
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
                _arguments((call.get("function") or {}).get("arguments")),
            )
            for i, call in enumerate(raw.get("tool_calls") or ())
        )
        metadata: dict[str, Any] = {}
        if raw.get("refusal"):
            metadata["refusal"] = raw["refusal"]
        parts: list[Part] = []
        reasoning = _reasoning(raw)
        if reasoning:
            parts.append(ReasoningPart(text=reasoning, provider=self.name))
        audio = raw.get("audio")
        if isinstance(audio, dict) and audio.get("data"):
            parts.append(
                AudioPart(
                    data=base64.b64decode(audio["data"]),
                    media_type=_audio_media_type(request.options),
                    transcript=audio.get("transcript") or None,
                )
            )
            if audio.get("id"):
                metadata["audio_id"] = audio["id"]
        message = Message(
            "assistant",
            raw.get("content") or "",
            tool_calls=calls,
            metadata=metadata,
            parts=tuple(parts),
        )
        usage, cached = _usage(doc.get("usage"))
        return Completion(
            message=message,
            usage=usage,
            cost=self.cost(
                usage.input_tokens,
                usage.output_tokens,
                cache_read_tokens=cached,
                model=request.model,
            ),
            finish_reason=choice.get("finish_reason"),
            model=doc.get("model"),
        )

    async def _read_stream(
        self, response: httpx.Response, request: Request
    ) -> AsyncIterator[Chunk]:
        text: list[str] = []
        reasoning: list[str] = []
        audio_data: list[bytes] = []
        transcript: list[str] = []
        audio_id: str | None = None
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
                thought = _reasoning(delta)
                if thought:
                    reasoning.append(thought)
                audio = delta.get("audio")
                if isinstance(audio, dict):
                    if audio.get("data"):
                        audio_data.append(base64.b64decode(audio["data"]))
                    if audio.get("transcript"):
                        transcript.append(audio["transcript"])
                    if audio.get("id"):
                        audio_id = audio["id"]
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
        parts: list[Part] = []
        if reasoning:
            parts.append(ReasoningPart(text="".join(reasoning), provider=self.name))
        if audio_data:
            parts.append(
                AudioPart(
                    data=b"".join(audio_data),
                    media_type=_audio_media_type(request.options),
                    transcript="".join(transcript) or None,
                )
            )
            if audio_id:
                metadata["audio_id"] = audio_id
        message = Message(
            "assistant", "".join(text), tool_calls=calls, metadata=metadata, parts=tuple(parts)
        )
        final_usage = usage if usage is not None else self._estimate(request, message)
        yield Chunk(
            done=True,
            message=message,
            tool_calls=calls,
            usage=final_usage,
            cost=self.cost(
                final_usage.input_tokens,
                final_usage.output_tokens,
                cache_read_tokens=cached,
                model=request.model,
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

"""What the HTTP providers share: the client, retries, Server-Sent Events and error mapping.

:class:`HTTPProvider` owns (or borrows) one :class:`httpx.AsyncClient`, refuses use after
:meth:`~HTTPProvider.aclose`, and sends every request through :meth:`HTTPProvider._send`, which
retries 408/409/429, 5xx, timeouts and connection errors with exponential backoff and jitter,
honouring ``Retry-After``. Every ``httpx`` error is translated into
:class:`~promptstate.exceptions.ProviderError` here, at the boundary.

The API key is kept in a :class:`~promptstate.redaction.Secret` and attached to each request
by an :class:`httpx.Auth` flow, so it is never in the client's default headers, a repr, a log
line or an error message (error texts are scrubbed of it and of the base URL's password too,
in case a server echoes them back; :mod:`promptstate.redaction`).
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import logging
import os
import random
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx
import msgspec

from promptstate.exceptions import ClosedError, PromptStateError, ProviderError, ValidationError
from promptstate.providers.base import Chunk, Completion
from promptstate.providers.pricing import Price, PriceTable, cost_of, lookup_price
from promptstate.redaction import Secret, redact, scrub, url_secrets
from promptstate.tokens import HeuristicTokenCounter, count_tokens
from promptstate.types import Message, Usage

__all__ = ["HTTPProvider", "Request", "SSEEvent", "iter_sse", "parse_retry_after"]

logger = logging.getLogger(__name__)

_P = TypeVar("_P", bound="HTTPProvider")

#: HTTP statuses below 500 that are worth sending again.
RETRYABLE_STATUS = frozenset({408, 409, 429})
#: Longest ``Retry-After`` we wait for; longer ones fall back to our own backoff.
MAX_RETRY_AFTER = 60.0

_ESTIMATOR = HeuristicTokenCounter()

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


def read_key(value: str | None, env: str) -> str | None:
    """The API key from ``value`` or the ``env`` variable, stripped; ``None`` when unset.

    Raises:
        ValidationError: The key is not a string of printable ASCII without spaces (the
            message never shows the key).
    """
    key = value if value is not None else os.environ.get(env)
    if key is None:
        return None
    if not isinstance(key, str):
        raise ValidationError(f"api_key must be a str, got {type(key).__name__}")
    key = key.strip()
    if any(not ("!" <= ch <= "~") for ch in key):
        source = "api_key" if value is not None else env
        raise ValidationError(f"{source} holds characters an API key cannot have")
    return key or None


class _KeyAuth(httpx.Auth):
    """Sets the API key header on each request, so no client default header holds it."""

    def __init__(self, header: str, secret: Secret, prefix: str = "") -> None:
        self._header = header
        self._secret = secret
        self._prefix = prefix

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._header] = self._prefix + self._secret.reveal()
        yield request

    def __repr__(self) -> str:
        return f"_KeyAuth({self._header!r}, ***)"


class _ClientState(enum.Enum):
    OPEN = 1
    CLOSED = 2


class Request(msgspec.Struct, frozen=True):
    """One call's messages, options and model, for the parsers of its answer."""

    messages: Sequence[Message]
    options: Mapping[str, Any]
    model: str


class SSEEvent(msgspec.Struct, frozen=True):
    """One Server-Sent Event: its ``event`` name (``"message"`` by default) and ``data``."""

    event: str
    data: str


async def iter_sse(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """The events of a ``text/event-stream`` response, as the SSE specification parses them.

    ``data:`` lines of one event are joined with newlines, lines starting with ``:`` are
    comments, a blank line dispatches the event, and an event cut off by the end of the stream
    (no blank line after it) is dropped.
    """
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``), if any."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _error_text(body: bytes) -> str:
    """The provider's own error message from an error body, in any of the common shapes."""
    try:
        doc = _json_decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body.decode("utf-8", "replace").strip()[:500]
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, str):
            return err[:500]
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            kind = err.get("type") or err.get("code")
            if isinstance(msg, str):
                return f"{msg} ({kind})" if isinstance(kind, str) and kind else msg[:500]
            if isinstance(msg, (list, dict)):
                return _json_encode(msg).decode()[:500]
    return body.decode("utf-8", "replace").strip()[:500]


class HTTPProvider:
    """The shared machinery of the HTTP providers (not a provider by itself).

    Subclasses set :attr:`name`, :attr:`env_key` and :attr:`path`, and supply the API's
    shapes: :meth:`build_body`, :meth:`_parse_completion` and :meth:`_read_stream`. The
    calls themselves, :meth:`complete` and :meth:`stream`, are shared.
    """

    #: Short provider name used in error messages ("openai", "anthropic").
    name = "http"
    #: The endpoint both calls POST to, relative to ``base_url``.
    path = ""

    # -- the API's shapes, supplied by each provider -------------------------------------------

    def build_body(
        self, messages: Sequence[Message], options: Mapping[str, Any], *, stream: bool
    ) -> dict[str, Any]:
        """The JSON body for ``POST`` :attr:`path` (public so it can be inspected)."""
        raise NotImplementedError

    def _parse_completion(self, doc: Any, request: Request) -> Completion:
        raise NotImplementedError

    def _read_stream(self, response: httpx.Response, request: Request) -> AsyncIterator[Chunk]:
        raise NotImplementedError

    def _request(self, messages: Sequence[Message], options: Mapping[str, Any]) -> Request:
        return Request(messages, options, str(options.get("model") or self.model))

    @staticmethod
    def _estimate(request: Request, message: Message) -> Usage:
        """Usage counted locally, for a stream whose server sent none (``estimated=True``).

        Messages that carry a count (the pipeline's counter filled ``tokens``) keep it; the
        rest are counted by a :class:`~promptstate.tokens.HeuristicTokenCounter`. The
        pipeline counts the reply again with its own counter.
        """
        return Usage(
            count_tokens(list(request.messages), _ESTIMATOR),
            _ESTIMATOR.count(message),
            estimated=True,
        )

    # -- the calls -----------------------------------------------------------------------------

    async def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """Send ``messages`` and return the whole answer.

        Raises:
            ProviderError: The request failed (after retries where it may help), or the answer
                was malformed.
            ValidationError: An option the provider's API does not have.
            ClosedError: The provider was closed.
        """
        body = self.build_body(messages, options, stream=False)
        doc = await self._post_json(self.path, body)
        with self._malformed():
            completion = self._parse_completion(doc, self._request(messages, options))
            self._check_answer(completion.message)
        return completion

    async def stream(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[Chunk]:
        """Send ``messages`` and yield the answer as it arrives; the last chunk is ``done``.

        Raises:
            ProviderError: The request failed, the API sent an error event, or the stream
                broke off before it ended.
            ValidationError: An option the provider's API does not have.
            ClosedError: The provider was closed.
        """
        body = self.build_body(messages, options, stream=True)
        request = self._request(messages, options)
        response = await self._send(self.path, body, stream=True)
        try:
            media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type == "application/json" or media_type.endswith("+json"):
                # Some proxies answer a streaming request with the whole response as JSON.
                async for chunk in self._whole_json(response, request):
                    yield chunk
                return
            with self._malformed():
                async for chunk in self._read_stream(response, request):
                    self._check_answer(chunk.message, chunk.text)
                    yield chunk
        finally:
            await response.aclose()

    async def _whole_json(self, response: httpx.Response, request: Request) -> AsyncIterator[Chunk]:
        """A complete JSON answer to a streaming request, as the chunks a stream would give."""
        try:
            data = await response.aread()
        except httpx.HTTPError as exc:
            raise self._error(f"stream interrupted ({type(exc).__name__})", retryable=True) from exc
        try:
            doc = _json_decode(data)
        except msgspec.DecodeError as exc:
            raise self._error(
                "response is not valid JSON", status_code=response.status_code
            ) from exc
        with self._malformed():
            completion = self._parse_completion(doc, request)
            self._check_answer(completion.message)
        message = completion.message
        if message.content:
            yield Chunk(text=message.content)
        yield Chunk(
            done=True,
            message=message,
            tool_calls=message.tool_calls,
            usage=completion.usage,
            cost=completion.cost,
            finish_reason=completion.finish_reason,
        )

    def __init__(
        self,
        model: str,
        *,
        api_key: Secret | None,
        auth_header: str,
        auth_prefix: str,
        base_url: str,
        timeout: float | httpx.Timeout,
        max_retries: int,
        http_client: httpx.AsyncClient | None,
        prices: Mapping[str, Price | tuple[float, float]] | None,
        default_prices: PriceTable,
        headers: Mapping[str, str],
        backoff: float,
        max_backoff: float,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValidationError("model must be a non-empty string")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValidationError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if backoff < 0 or max_backoff < 0:
            raise ValidationError("backoff and max_backoff must be >= 0")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._secret = api_key
        self._auth: httpx.Auth | None = (
            _KeyAuth(auth_header, api_key, auth_prefix) if api_key else None
        )
        self._headers = dict(headers)
        if isinstance(timeout, httpx.Timeout):
            self._timeout = timeout
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValidationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        else:
            self._timeout = httpx.Timeout(timeout, connect=min(float(timeout), 10.0))
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        table = dict(default_prices)
        for key, value in (prices or {}).items():
            table[key] = value if isinstance(value, Price) else Price(*value)
        self._prices: PriceTable = table
        self._price = lookup_price(model, self._prices)
        self._state = _ClientState.OPEN

    # -- lifecycle -------------------------------------------------------------------------

    def __repr__(self) -> str:
        base_url = redact(self.base_url)
        return f"{type(self).__name__}(model={self.model!r}, base_url={base_url!r})"

    async def __aenter__(self: _P) -> _P:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client when the provider created it (a borrowed one stays open)."""
        if self._state is _ClientState.CLOSED:
            return
        self._state = _ClientState.CLOSED
        if self._owns_client:
            await self._client.aclose()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._state is _ClientState.CLOSED

    def _check_open(self) -> None:
        if self._state is _ClientState.CLOSED:
            raise ClosedError(f"{type(self).__name__} is closed")

    # -- cost -------------------------------------------------------------------------------

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_write_tokens: int = 0,
        cache_read_tokens: int = 0,
        model: str | None = None,
    ) -> float:
        """USD for a request of ``model`` (by default the provider's model; 0.0 when its price
        is unknown).

        ``input_tokens`` are all prompt tokens, cache writes and reads included; those are
        billed at the table's cache multipliers instead of the full input price.
        """
        price = self._price
        if model is not None and model != self.model:
            price = lookup_price(model, self._prices)
        return cost_of(
            price,
            input_tokens,
            output_tokens,
            cache_write_tokens=cache_write_tokens,
            cache_read_tokens=cache_read_tokens,
        )

    # -- errors -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` without the API key or the base URL's password, should a server echo them."""
        return scrub(text, self._secret, *url_secrets(self.base_url))

    def _error(
        self, what: str, *, status_code: int | None = None, retryable: bool = False
    ) -> ProviderError:
        return ProviderError(
            self._scrub(f"{self.name}: {what}"), status_code=status_code, retryable=retryable
        )

    @contextlib.contextmanager
    def _malformed(self) -> Iterator[None]:
        """Turn a response of the wrong shape into a :class:`ProviderError`.

        The parsers read the provider's JSON freely (``doc.get(...)``, ``int(...)``, joins); a
        server that sends a field of another type than the API documents (a number for the
        content, a string for the token counts, a list where an object belongs) would
        otherwise surface as a bare ``TypeError``/``ValueError``/``AttributeError``.
        """
        try:
            yield
        except PromptStateError:
            raise
        except (AttributeError, KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
            raise self._error(f"response is malformed: {type(exc).__name__}: {exc}") from exc

    def _check_answer(self, message: Message | None, text: object = "") -> None:
        """Refuse an answer (or streamed text) whose fields are not the types they claim."""
        if not isinstance(text, str) or (
            message is not None
            and (
                not isinstance(message.content, str)
                or not all(
                    isinstance(part, str)
                    for call in message.tool_calls
                    for part in (call.id, call.name, call.arguments)
                )
            )
        ):
            raise self._error("response is malformed: the answer's content is not text")

    def _status_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        status = response.status_code
        should = response.headers.get("x-should-retry")
        retryable = status in RETRYABLE_STATUS or status >= 500
        if should in ("true", "false"):
            retryable = should == "true"
        detail = _error_text(body) or response.reason_phrase
        return self._error(f"HTTP {status}: {detail}", status_code=status, retryable=retryable)

    def _transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            return self._error(f"request timed out ({type(exc).__name__})", retryable=True)
        if isinstance(exc, (httpx.TransportError,)):
            kind = type(exc).__name__
            text = str(exc) or kind
            return self._error(f"connection failed ({kind}: {text})", retryable=True)
        return self._error(f"HTTP error ({type(exc).__name__}: {exc})")

    # -- sending ----------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after <= MAX_RETRY_AFTER:
            return retry_after
        delay = min(self._backoff * (2.0**attempt), self._max_backoff)
        return delay * (1.0 - 0.25 * random.random())

    async def _send(self, path: str, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        """POST ``body`` to ``path``, retrying what may succeed on a second try.

        Returns a response with a 2xx status; with ``stream=True`` its body is not read yet and
        the caller must close it. Raises :class:`ProviderError` for everything else.
        """
        self._check_open()
        url = f"{self.base_url}{path}"
        try:
            content = _json_encode(body)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{self.name}: a request option is not JSON: {exc}") from exc
        headers = {"content-type": "application/json", **self._headers}
        if stream:
            headers["accept"] = "text/event-stream"
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                # No local keeps the request: after the auth flow its headers hold the key.
                response = await self._client.send(
                    self._client.build_request(
                        "POST", url, content=content, headers=headers, timeout=self._timeout
                    ),
                    auth=self._auth,
                    stream=True,
                )
            except httpx.HTTPError as exc:
                error = self._transport_error(exc)
                if not error.retryable or attempt >= self.max_retries:
                    raise error from exc
            except RuntimeError as exc:
                # httpx raises RuntimeError when a borrowed client was closed under us.
                if self._client.is_closed:
                    raise ClosedError(f"{type(self).__name__}'s HTTP client is closed") from exc
                raise
            else:
                if response.is_success:
                    if not stream:
                        try:
                            await response.aread()
                        except httpx.HTTPError as exc:
                            error = self._transport_error(exc)
                            if not error.retryable or attempt >= self.max_retries:
                                raise error from exc
                            attempt += 1
                            await anyio.sleep(self._delay(attempt - 1, None))
                            continue
                        finally:
                            await response.aclose()
                    return response
                try:
                    body_bytes = await response.aread()
                except httpx.HTTPError:
                    body_bytes = b""
                finally:
                    await response.aclose()
                error = self._status_error(response, body_bytes)
                if not error.retryable or attempt >= self.max_retries:
                    raise error
                retry_after = parse_retry_after(response.headers)
            delay = self._delay(attempt, retry_after)
            attempt += 1
            logger.info(
                "%s: retrying request to %s in %.2fs (attempt %d of %d): %s",
                self.name,
                path,
                delay,
                attempt,
                self.max_retries,
                error.message,
            )
            await anyio.sleep(delay)

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        """POST and decode the JSON answer (retried as :meth:`_send` does)."""
        response = await self._send(path, body, stream=False)
        try:
            return _json_decode(response.content)
        except msgspec.DecodeError as exc:
            raise self._error(
                "response is not valid JSON", status_code=response.status_code
            ) from exc
        except RecursionError:
            raise self._error(
                "response is nested too deeply to decode", status_code=response.status_code
            ) from None

    async def _events(self, response: httpx.Response) -> AsyncIterator[SSEEvent]:
        """The SSE events of a streamed response; transport errors become ProviderError."""
        try:
            async for event in iter_sse(response):
                yield event
        except httpx.HTTPError as exc:
            raise self._error(f"stream interrupted ({type(exc).__name__})", retryable=True) from exc

    def _decode_event(self, data: str) -> Any:
        try:
            return _json_decode(data)
        except msgspec.DecodeError as exc:
            raise self._error("stream sent an event that is not valid JSON") from exc
        except RecursionError:
            raise self._error("stream sent an event nested too deeply to decode") from None

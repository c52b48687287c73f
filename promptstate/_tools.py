"""Tool definitions and running tool calls: the code behind :mod:`promptstate.tools`.

:mod:`promptstate.tools` is the public entry point and documents these names (how a function
becomes a tool, how calls run and fail); it re-exports them with the
:class:`~promptstate.stages.tool_loop.ToolLoop` stage. They live here, below the stages, so
that providers and stages can use them without importing a stage.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, overload

import anyio
import anyio.to_thread
import msgspec

from promptstate.exceptions import ValidationError
from promptstate.types import Message, ToolCall

__all__ = [
    "MISSING_RESULT",
    "Tool",
    "ToolSpec",
    "as_tools",
    "pair_tool_messages",
    "run_tool_calls",
    "tool",
]

logger = logging.getLogger(__name__)


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Returns|Return|Yields|Raises|Examples?|Notes?|Attributes"
    r"|Warnings?|See Also|Todo):\s*$"
)
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_encoder = msgspec.json.Encoder()

ToolSpec = Mapping[str, Any]
"""A tool given as a JSON object: OpenAI's ``{"type": "function", "function": {...}}``,
Anthropic's ``{"name", "description", "input_schema"}`` or ``{"name", "parameters"}``."""


def _hint_target(fn: Callable[..., Any]) -> Any:
    """Where ``fn``'s annotations and docstring live (through partials and callable objects)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        return fn
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - a callable object's method
    return call if call is not None else fn


def _split_docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The description (first section) and the ``Args:`` entries of a Google-style docstring."""
    if isinstance(fn, functools.partial):
        doc = inspect.getdoc(_hint_target(fn)) or ""
    else:
        doc = inspect.getdoc(fn) or inspect.getdoc(_hint_target(fn)) or ""
    description: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    indent: int | None = None
    for raw in doc.splitlines():
        stripped = raw.strip()
        head = _SECTION.match(stripped)
        if head and (raw[: len(raw) - len(raw.lstrip())] == ""):
            section = head.group(1)
            current, indent = None, None
            continue
        if section is None:
            description.append(stripped)
            continue
        if section not in ("Args", "Arguments", "Parameters") or not stripped:
            continue
        level = len(raw) - len(raw.lstrip())
        match = _ARG_LINE.match(stripped)
        if match and (indent is None or level <= indent):
            indent = level
            current = match.group(1).lstrip("*")
            args[current] = match.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {stripped}".strip()
    text = "\n".join(description).strip()
    first_paragraph = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    return first_paragraph, args


def _has_description(tp: Any) -> bool:
    if typing.get_origin(tp) is typing.Annotated:
        return any(isinstance(m, msgspec.Meta) and m.description for m in typing.get_args(tp)[1:])
    return False


def _default_field(value: Any) -> Any:
    if isinstance(value, (list, dict, set, bytearray)) and value:
        return msgspec.field(default_factory=functools.partial(copy.deepcopy, value))
    return value


def _args_struct(
    fn: Callable[..., Any], name: str, arg_docs: Mapping[str, str]
) -> type[msgspec.Struct]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"tool {name!r}: cannot read the function's signature") from exc
    try:
        hints = typing.get_type_hints(_hint_target(fn), include_extras=True)
    except Exception as exc:
        raise ValidationError(
            f"tool {name!r}: cannot resolve the type hints ({exc}); pass parameters= explicitly"
        ) from exc
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ValidationError(
                f"tool {name!r}: parameter {param.name!r} is {param.kind.description}; "
                "tools take keyword arguments only (or pass parameters= explicitly)"
            )
        tp: Any = hints.get(param.name, Any)
        doc = arg_docs.get(param.name)
        if doc and not _has_description(tp):
            tp = typing.Annotated[tp, msgspec.Meta(description=doc)]
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, tp))
        else:
            fields.append((param.name, tp, _default_field(param.default)))
    try:
        return msgspec.defstruct(f"{name}_arguments", fields, kw_only=True)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"tool {name!r}: unusable parameters ({exc})") from exc


def _schema_of(struct: type[msgspec.Struct], name: str) -> dict[str, Any]:
    try:
        (top,), components = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"tool {name!r}: no JSON schema for its parameter types ({exc}); "
            "pass parameters= explicitly"
        ) from exc
    ref = top["$ref"].rsplit("/", 1)[-1]
    schema = dict(components.pop(ref))
    schema.pop("title", None)
    schema.setdefault("properties", {})
    if components:
        schema["$defs"] = components
    return schema


class Tool:
    """A function the model may call, with its name, description and JSON schema.

    Build one with :meth:`from_function` or the :func:`tool` decorator. A ``Tool`` without a
    function (``function=None``) only describes a tool to the model; calling it answers with
    an error.

    Attributes:
        name: What the model calls it (letters, digits, ``_`` and ``-``, at most 64).
        description: What it does, for the model.
        parameters: The JSON schema (an ``object``) of its arguments.
        function: The plain or async function that runs it.
        timeout: Seconds a call may take before it answers with an error; ``None``: no limit.
    """

    __slots__ = ("_args_type", "description", "function", "name", "parameters", "timeout")

    def __init__(
        self,
        name: str,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
        function: Callable[..., Any] | None = None,
        *,
        timeout: float | None = None,
        _args_type: type[msgspec.Struct] | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValidationError(
                f"tool name must be 1-64 letters, digits, '_' or '-', got {name!r}"
            )
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ValidationError(f"tool {name!r}: parameters must be a JSON schema object")
        if timeout is not None and timeout <= 0:
            raise ValidationError(f"tool {name!r}: timeout must be > 0")
        self.name = name
        self.description = description
        self.parameters: dict[str, Any] = (
            dict(parameters) if parameters is not None else {"type": "object", "properties": {}}
        )
        self.function = function
        self.timeout = timeout
        self._args_type = _args_type

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Tool:
        """A tool that runs ``function``; schema and description derived unless given.

        Raises:
            ValidationError: The name is not valid, or the schema cannot be derived (``*args``,
                ``**kwargs``, positional-only parameters, types msgspec cannot describe).
        """
        if not callable(function):
            raise ValidationError(f"a tool must be callable, got {type(function).__name__}")
        inner = function
        while isinstance(inner, functools.partial):
            inner = inner.func
        tool_name = name or getattr(inner, "__name__", None) or type(inner).__name__
        doc, arg_docs = _split_docstring(function)
        args_type = None
        if parameters is None:
            args_type = _args_struct(function, tool_name, arg_docs)
            parameters = _schema_of(args_type, tool_name)
        return cls(
            tool_name,
            doc if description is None else description,
            parameters,
            function,
            timeout=timeout,
            _args_type=args_type,
        )

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r}, description={self.description!r})"

    # -- wire formats ------------------------------------------------------------------------

    def to_openai(self) -> dict[str, Any]:
        """The tool as an OpenAI chat completions ``tools`` entry."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    def to_anthropic(self) -> dict[str, Any]:
        """The tool as an Anthropic messages ``tools`` entry."""
        spec: dict[str, Any] = {"name": self.name, "input_schema": self.parameters}
        if self.description:
            spec["description"] = self.description
        return spec

    @classmethod
    def from_spec(cls, spec: ToolSpec) -> Tool:
        """A description-only tool from an OpenAI, Anthropic or plain JSON tool object."""
        body: Mapping[str, Any] = spec
        if spec.get("type") == "function" and isinstance(spec.get("function"), Mapping):
            body = spec["function"]
        name = body.get("name")
        params = body.get("parameters", body.get("input_schema"))
        if not isinstance(name, str):
            raise ValidationError(f"tool spec without a name: {dict(spec)!r}")
        return cls(name, str(body.get("description") or ""), params)

    # -- running -----------------------------------------------------------------------------

    async def call(self, arguments: str) -> Any:
        """Run the tool with ``arguments`` (JSON text, as the model sent it).

        Raises:
            ValidationError: The arguments are not JSON or do not match the schema.
            Exception: Whatever the function raises.
        """
        if self.function is None:
            raise ValidationError(f"tool {self.name!r} has no function to run")
        text = arguments.strip() or "{}"
        try:
            if self._args_type is not None:
                decoded = msgspec.json.decode(text, type=self._args_type)
                kwargs = msgspec.structs.asdict(decoded)
            else:
                kwargs = msgspec.json.decode(text)
                if not isinstance(kwargs, dict):
                    raise ValidationError("the arguments must be a JSON object")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValidationError(f"invalid arguments: {exc}") from exc
        except RecursionError:
            raise ValidationError("invalid arguments: nested too deeply") from None
        return await _invoke(self.function, kwargs)


def _is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - async callable objects
    )


async def _invoke(function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    if _is_async(function):
        result = function(**kwargs)
    else:
        result = await anyio.to_thread.run_sync(
            functools.partial(function, **kwargs), abandon_on_cancel=True
        )
    if inspect.isawaitable(result):
        result = await result
    return result


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorator: turn a function into a :class:`Tool` (``@tool`` or ``@tool(name=...)``)."""

    def wrap(fn: Callable[..., Any]) -> Tool:
        return Tool.from_function(
            fn, name=name, description=description, parameters=parameters, timeout=timeout
        )

    return wrap(function) if function is not None else wrap


def as_tools(tools: Iterable[Tool | Callable[..., Any] | ToolSpec]) -> dict[str, Tool]:
    """``tools`` (Tools, functions or JSON tool objects) as a name → :class:`Tool` mapping.

    Raises:
        ValidationError: Two tools share a name, or one cannot be turned into a tool.
    """
    result: dict[str, Tool] = {}
    for item in tools:
        if isinstance(item, Tool):
            converted = item
        elif isinstance(item, Mapping):
            converted = Tool.from_spec(item)
        elif callable(item):
            converted = Tool.from_function(item)
        else:
            raise ValidationError(f"not a tool: {item!r}")
        if converted.name in result:
            raise ValidationError(f"two tools are named {converted.name!r}")
        result[converted.name] = converted
    return result


def _result_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return _encoder.encode(value).decode()
    except (TypeError, ValueError):
        return str(value)


async def _run_one(tools: Mapping[str, Tool], call: ToolCall) -> Message:
    found = tools.get(call.name)
    error: str | None = None
    content = ""
    if found is None:
        error = f"Error: unknown tool {call.name!r}; available: {sorted(tools)}"
    else:
        try:
            if found.timeout is not None:
                with anyio.fail_after(found.timeout):
                    value = await found.call(call.arguments)
            else:
                value = await found.call(call.arguments)
            content = _result_text(value)
        except TimeoutError:
            error = f"Error: tool {call.name!r} timed out after {found.timeout}s"
        except ValidationError as exc:
            error = f"Error: {exc}"
        except Exception as exc:
            error = f"Error: {type(exc).__name__}: {exc}"
            logger.warning("tool %r raised %s", call.name, type(exc).__name__)
            logger.debug("tool %r failed", call.name, exc_info=True)
    if error is not None:
        return Message(
            "tool",
            error,
            name=call.name,
            tool_call_id=call.id,
            metadata={"is_error": True},
        )
    return Message("tool", content, name=call.name, tool_call_id=call.id)


async def run_tool_calls(
    calls: Sequence[ToolCall], tools: Mapping[str, Tool] | Iterable[Tool | Callable[..., Any]]
) -> list[Message]:
    """Run ``calls`` concurrently; one ``tool`` message per call, in the calls' order.

    Never raises for a tool's failure: the message then says what went wrong and has
    ``metadata["is_error"] = True``. Cancellation still propagates.
    """
    table = tools if isinstance(tools, Mapping) else as_tools(tools)
    if len(calls) <= 1:
        return [await _run_one(table, call) for call in calls]
    results: list[Message | None] = [None] * len(calls)

    async def run(index: int, call: ToolCall) -> None:
        results[index] = await _run_one(table, call)

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(run, index, call)
    return [m for m in results if m is not None]


#: What a call without a recorded result is answered with (see :func:`pair_tool_messages`).
MISSING_RESULT = "Error: no result was recorded for this tool call (it was interrupted)."


def pair_tool_messages(messages: Sequence[Message]) -> list[Message]:
    """``messages`` made acceptable to the chat APIs' tool-call pairing rules.

    Both OpenAI and Anthropic reject a history where an assistant's tool call has no ``tool``
    message answering it before the next turn, or where a ``tool`` message answers no call.
    That happens when a tool loop was interrupted after its call was stored, or when a
    window cut the history between a call and its result. This inserts an error result for
    each unanswered call (right after the answers that do exist) and drops results that
    answer nothing. Stored data is not changed; only what is sent.

    Raises:
        ValidationError: A ``tool`` message without ``tool_call_id``.
    """
    result: list[Message] = []
    open_calls: dict[str, ToolCall] = {}
    changed = False

    def close_open() -> None:
        nonlocal changed
        for call in open_calls.values():
            changed = True
            result.append(
                Message(
                    "tool",
                    MISSING_RESULT,
                    name=call.name,
                    tool_call_id=call.id,
                    metadata={"is_error": True},
                )
            )
        open_calls.clear()

    for message in messages:
        if message.role == "tool":
            if not message.tool_call_id:
                raise ValidationError("a tool message needs tool_call_id (the call it answers)")
            if message.tool_call_id in open_calls:
                del open_calls[message.tool_call_id]
                result.append(message)
            else:
                changed = True
                logger.debug("dropping a tool message that answers no call in the history")
            continue
        close_open()
        result.append(message)
        if message.role == "assistant":
            open_calls = {call.id: call for call in message.tool_calls}
    close_open()
    return result if changed else list(messages)

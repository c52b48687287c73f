"""promptstate.tools: schema derivation and the tool runner."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from typing import Annotated, Any, Literal

import anyio
import msgspec
import pytest

from promptstate import Message, ToolCall, ValidationError
from promptstate.tools import Tool, as_tools, pair_tool_messages, run_tool_calls, tool

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct):
    x: float
    y: float


@dataclasses.dataclass
class Options:
    verbose: bool = False


async def locate(
    place: str,
    near: Point | None = None,
    mode: Literal["walk", "drive"] = "walk",
    limit: Annotated[int, msgspec.Meta(ge=1, le=10, description="At most this many.")] = 3,
    tags: list[str] = ["a"],  # noqa: B006 - a mutable default must not be shared
    options: Options | None = None,
) -> dict[str, Any]:
    """Find a place.

    Longer explanation that is not part of the description.

    Args:
        place: What to look for,
            spelled out in full.
        near (Point): Search around this point.
        limit: Ignored here; the Annotated description wins.

    Returns:
        The matches.
    """
    tags.append("mutated")
    return {"place": place, "near": near, "mode": mode, "limit": limit, "tags": tags}


def test_schema_from_type_hints_and_docstring() -> None:
    spec = Tool.from_function(locate)
    assert spec.name == "locate"
    assert spec.description == "Find a place."
    params = spec.parameters
    assert params["type"] == "object"
    assert params["required"] == ["place"]
    props = params["properties"]
    assert props["place"] == {
        "type": "string",
        "description": "What to look for, spelled out in full.",
    }
    assert props["near"]["description"] == "Search around this point."
    assert {"$ref": "#/$defs/Point"} in props["near"]["anyOf"]
    assert props["mode"] == {"enum": ["drive", "walk"], "default": "walk"}
    assert props["limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10,
        "description": "At most this many.",
        "default": 3,
    }
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert set(params["$defs"]) == {"Point", "Options"}
    assert "title" not in params
    assert spec.to_openai()["function"]["parameters"] is params
    assert spec.to_anthropic()["input_schema"] is params


async def test_arguments_are_validated_converted_and_defaults_fresh() -> None:
    spec = Tool.from_function(locate)
    result = await spec.call('{"place": "cafe", "near": {"x": 1, "y": 2.5}}')
    assert result["near"] == Point(1.0, 2.5)
    assert result["tags"] == ["a", "mutated"]
    again = await spec.call('{"place": "bar"}')
    assert again["tags"] == ["a", "mutated"]  # the default list was not shared
    with pytest.raises(ValidationError, match="limit"):
        await spec.call('{"place": "x", "limit": 11}')
    with pytest.raises(ValidationError, match="place"):
        await spec.call("{}")
    with pytest.raises(ValidationError):
        await spec.call("{not json")


def test_explicit_schema_and_decorator() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    @tool(name="search_docs", description="Search.", parameters=schema)
    def search(**kwargs: Any) -> str:
        return str(kwargs)

    assert isinstance(search, Tool)
    assert (search.name, search.description, search.parameters) == (
        "search_docs",
        "Search.",
        schema,
    )

    @tool
    def plain(a: int) -> int:
        return a

    assert isinstance(plain, Tool)
    assert plain.parameters["required"] == ["a"]


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "dots.not.allowed"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValidationError, match="tool name"):
        Tool(name)


def test_underivable_signatures_are_clear_errors() -> None:
    def star(*args: int) -> None: ...

    def kw(**kwargs: int) -> None: ...

    def positional(a: int, /) -> None: ...

    for fn in (star, kw, positional):
        with pytest.raises(ValidationError, match="keyword arguments only"):
            Tool.from_function(fn)
    with pytest.raises(ValidationError, match="callable"):
        Tool.from_function(42)  # type: ignore[arg-type]

    def unknown(a: threading.Lock) -> None: ...

    with pytest.raises(ValidationError, match=r"unknown|schema|unusable"):
        Tool.from_function(unknown)


def test_as_tools_accepts_tools_functions_and_specs() -> None:
    def f(a: int) -> int:
        return a

    table = as_tools(
        [
            f,
            Tool("g"),
            {"type": "function", "function": {"name": "h", "parameters": {"type": "object"}}},
            {"name": "i", "input_schema": {"type": "object"}},
        ]
    )
    assert list(table) == ["f", "g", "h", "i"]
    with pytest.raises(ValidationError, match="two tools"):
        as_tools([f, Tool("f")])
    with pytest.raises(ValidationError, match="not a tool"):
        as_tools([3])  # type: ignore[list-item]


async def test_runner_runs_calls_concurrently_and_in_order() -> None:
    started = anyio.Event()
    other_started = anyio.Event()

    async def first() -> str:
        started.set()
        with anyio.fail_after(5):
            await other_started.wait()  # only finishes if `second` runs at the same time
        return "one"

    async def second() -> str:
        other_started.set()
        with anyio.fail_after(5):
            await started.wait()
        return "two"

    calls = [ToolCall("c1", "first", ""), ToolCall("c2", "second", "{}")]
    results = await run_tool_calls(calls, [first, second])
    assert [(m.role, m.content, m.tool_call_id, m.name) for m in results] == [
        ("tool", "one", "c1", "first"),
        ("tool", "two", "c2", "second"),
    ]
    assert all(not m.metadata for m in results)


async def test_plain_functions_run_in_a_worker_thread() -> None:
    main = threading.get_ident()

    def where() -> bool:
        return threading.get_ident() != main

    (result,) = await run_tool_calls([ToolCall("c", "where", "{}")], [where])
    assert result.content == "true"


async def test_failures_become_error_results_not_crashes(caplog: pytest.LogCaptureFixture) -> None:
    def explode(n: int) -> int:
        raise RuntimeError(f"bad {n}")

    async def slow() -> str:
        await anyio.sleep(10)
        return "never"

    tools = as_tools([explode, Tool.from_function(slow, timeout=0.05), Tool("described_only")])
    calls = [
        ToolCall("1", "explode", '{"n": 3}'),
        ToolCall("2", "explode", '{"n": "three"}'),
        ToolCall("3", "missing", "{}"),
        ToolCall("4", "slow", "{}"),
        ToolCall("5", "described_only", "{}"),
    ]
    with caplog.at_level(logging.DEBUG, logger="promptstate._tools"):
        results = await run_tool_calls(calls, tools)
    assert [m.tool_call_id for m in results] == ["1", "2", "3", "4", "5"]
    assert all(m.metadata == {"is_error": True} for m in results)
    assert results[0].content == "Error: RuntimeError: bad 3"
    assert "invalid arguments" in results[1].content
    assert "unknown tool 'missing'" in results[2].content
    assert "timed out" in results[3].content
    assert "no function" in results[4].content
    assert any(r.levelno == logging.WARNING and "explode" in r.getMessage() for r in caplog.records)


async def test_results_are_encoded_as_json_unless_text() -> None:
    async def structured() -> Point:
        return Point(1, 2)

    def nothing() -> None:
        return None

    def odd() -> object:
        return threading.Lock()

    results = await run_tool_calls(
        [
            ToolCall("a", "structured", "{}"),
            ToolCall("b", "nothing", "{}"),
            ToolCall("c", "odd", "{}"),
        ],
        [structured, nothing, odd],
    )
    assert results[0].content == '{"x":1,"y":2}'
    assert results[1].content == "null"
    assert "lock" in results[2].content.lower()


async def test_cancellation_propagates() -> None:
    async def forever() -> None:
        await anyio.sleep(60)

    with anyio.move_on_after(0.05) as scope:
        await run_tool_calls(
            [ToolCall("a", "forever", "{}"), ToolCall("b", "forever", "{}")], [forever]
        )
    assert scope.cancelled_caught


async def test_no_calls_no_results() -> None:
    assert await run_tool_calls([], []) == []
    assert isinstance(Message("tool", "x", tool_call_id="1"), Message)


def test_pair_tool_messages_answers_interrupted_calls_and_drops_orphans() -> None:
    calls = (ToolCall("a", "f", "{}"), ToolCall("b", "g", "{}"))
    user = Message("user", "hi")
    asked = Message("assistant", "", tool_calls=calls)
    answer_a = Message("tool", "A", tool_call_id="a")
    orphan = Message("tool", "lost", tool_call_id="zzz")
    later = Message("user", "again")
    fixed = pair_tool_messages([user, asked, answer_a, orphan, later, asked])
    assert [(m.role, m.tool_call_id) for m in fixed] == [
        ("user", None),
        ("assistant", None),
        ("tool", "a"),
        ("tool", "b"),
        ("user", None),
        ("assistant", None),
        ("tool", "a"),
        ("tool", "b"),
    ]
    synthetic = fixed[3]
    assert synthetic.metadata == {"is_error": True}
    assert "no result" in synthetic.content
    assert synthetic.name == "g"
    whole = [user, asked, answer_a, Message("tool", "B", tool_call_id="b"), later]
    assert pair_tool_messages(whole) == whole
    with pytest.raises(ValidationError, match="tool_call_id"):
        pair_tool_messages([Message("tool", "x")])


async def test_partials_methods_and_callable_objects() -> None:
    def scale(value: float, factor: int) -> float:
        """Scale a value."""
        return value * factor

    class Counter:
        """Count things."""

        def __call__(self, n: int, label: str = "x") -> str:
            return label * n

        def twice(self, n: int) -> int:
            return 2 * n

    partial = Tool.from_function(functools.partial(scale, factor=3))
    assert (partial.name, partial.description) == ("scale", "Scale a value.")
    assert partial.parameters["properties"]["factor"] == {"type": "integer", "default": 3}
    assert await partial.call('{"value": 2}') == 6.0

    obj = Tool.from_function(Counter())
    assert (obj.name, obj.description) == ("Counter", "Count things.")
    assert obj.parameters["properties"]["n"] == {"type": "integer"}
    assert await obj.call('{"n": 2, "label": "ab"}') == "abab"

    method = Tool.from_function(Counter().twice)
    assert method.name == "twice"
    assert method.parameters["required"] == ["n"]
    assert await method.call('{"n": 4}') == 8

"""Tools a model may call: JSON schemas from Python functions, and running the calls.

Any plain or async function is a tool. Its JSON schema is derived from its signature and type
hints by msgspec (so ``int``, ``str | None``, ``Literal[...]``, ``list[...]``, msgspec Structs,
dataclasses, ``TypedDict`` and ``Annotated[..., msgspec.Meta(description=...)]`` all work), its
description from the docstring's first paragraph and each parameter's description from the
docstring's ``Args:`` section::

    async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, float]:
        \"\"\"The current weather in a city.

        Args:
            city: The city's name.
            unit: Temperature unit.
        \"\"\"

    weather = Tool.from_function(get_weather)
    weather.parameters   # {"type": "object", "properties": {...}, "required": ["city"]}

Pass a schema yourself with ``Tool.from_function(fn, parameters={...})`` or ``@tool(...)``.

:func:`run_tool_calls` runs the calls a model asked for (concurrently when there are several)
and returns one ``tool`` message per call, in order. A tool that raises, gets arguments that do
not match its schema, times out or does not exist answers with an error message for the model
(``metadata["is_error"]`` is true); it never raises. Plain functions run in a worker thread so
they do not block the event loop.

This module only re-exports: the tool definitions and the runner live in
:mod:`promptstate._tools` (below the providers, which send tools), and the :class:`ToolLoop`
stage in :mod:`promptstate.stages.tool_loop`. Nothing in the package imports this module but
``promptstate/__init__.py``.
"""

from __future__ import annotations

from promptstate._tools import (
    MISSING_RESULT,
    Tool,
    ToolSpec,
    as_tools,
    pair_tool_messages,
    run_tool_calls,
    tool,
)
from promptstate.stages.tool_loop import ToolLoop, with_tool_loop

__all__ = [
    "MISSING_RESULT",
    "Tool",
    "ToolLoop",
    "ToolSpec",
    "as_tools",
    "pair_tool_messages",
    "run_tool_calls",
    "tool",
    "with_tool_loop",
]

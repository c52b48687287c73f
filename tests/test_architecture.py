"""The package's import graph shows the architecture.

It has no circles: no module imports (at run time or only for type checking) one that imports
it back, directly or through others. And it has layers, bottom up: types, errors and tokens;
the window policy (``_window``) and tool definitions (``_tools``); stores and providers;
``stages/`` (the stage contract in ``stages.context`` and every stage: load, the truncation
strategies, the tool loop, the provider call, the reply check, save); the pipeline that builds
the chain; the SDK. No module imports one from a layer above it, and the public modules that
only re-export (``truncation``, ``tools``) are imported by nothing inside the package but its
``__init__``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import promptstate

PACKAGE = Path(promptstate.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The promptstate modules ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _upward(
    graph: dict[str, set[str]], lower: tuple[str, ...], upper: tuple[str, ...]
) -> list[str]:
    """Every import from a module in ``lower`` of one in ``upper`` (module or package names)."""
    return sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if _in(name, lower)
        for target in targets
        if _in(target, upper) and not _in(target, lower)
    )


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    assert "promptstate.stages.context" in graph["promptstate.stages.truncate"]
    assert _cycles(graph) == []


# Above the stages: what builds and runs the chain, and the public modules that re-export.
ABOVE_STAGES = (
    "promptstate.pipeline",
    "promptstate.sdk",
    "promptstate.cli",
    "promptstate.integrations",
    "promptstate.backup",
    "promptstate.truncation",
    "promptstate.tools",
)
REEXPORTING = ("promptstate.truncation", "promptstate.tools")


#: The turn layer: what holds a session for a turn, between the stores and the stages.
TURNS = ("promptstate.locks",)


def test_stages_import_nothing_above_them() -> None:
    graph = _graph()
    assert {"promptstate.stages.summarize", "promptstate.stages.tool_loop"} <= set(graph)
    assert _upward(graph, ("promptstate.stages",), ABOVE_STAGES) == []


def test_stores_and_providers_sit_below_the_stages_and_apart() -> None:
    graph = _graph()
    above = (*ABOVE_STAGES, "promptstate.stages", "promptstate.packs")
    assert _upward(graph, ("promptstate.stores",), (*above, "promptstate.providers")) == []
    assert _upward(graph, ("promptstate.providers",), (*above, "promptstate.stores")) == []
    # Stores and providers do I/O; turns (locks: the runner, leases) sit above them.
    assert _upward(graph, ("promptstate.stores", "promptstate.providers"), TURNS) == []
    low = (
        "promptstate._window",
        "promptstate._tools",
        "promptstate.redaction",
        "promptstate.tokens",
        "promptstate.types",
    )
    assert _upward(graph, low, ("promptstate.stores", "promptstate.providers", *above)) == []


def test_reexporting_modules_only_reexport_and_only_the_package_imports_them() -> None:
    graph = _graph()
    for name in REEXPORTING:
        importers = sorted(n for n, targets in graph.items() if name in targets)
        assert importers == ["promptstate"], (name, importers)
        tree = ast.parse(_modules()[name].read_text(encoding="utf-8"))
        body = tree.body[1:]  # after the docstring
        imported = {
            alias.asname or alias.name
            for node in body
            if isinstance(node, ast.ImportFrom) and node.module != "__future__"
            for alias in node.names
        }
        others = [
            node
            for node in body
            if not isinstance(node, ast.ImportFrom)
            and not (
                isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
            )
        ]
        assert others == [], f"{name} defines more than __all__: {ast.dump(others[0])[:200]}"
        module = importlib.import_module(name)
        assert sorted(imported) == sorted(module.__all__), name


def test_the_layer_check_finds_an_upward_import() -> None:
    graph = {
        "p.stages.a": {"p.types", "p.pipeline"},
        "p.stages": {"p.stages.a"},
        "p.pipeline": {"p.stages"},
        "p.stagesx": {"p.pipeline"},  # a name prefix, not a sub-module: not in the layer
    }
    assert _upward(graph, ("p.stages",), ("p.pipeline",)) == ["p.stages.a imports p.pipeline"]
    assert _upward(graph, ("p.pipeline",), ("p.stages",)) == ["p.pipeline imports p.stages"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]

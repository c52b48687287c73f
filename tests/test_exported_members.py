"""The public names: sorted, importable, and exactly what is documented."""

from __future__ import annotations

import promptstate


def test_all_is_sorted() -> None:
    assert promptstate.__all__ == sorted(promptstate.__all__)


def test_every_modules_all_is_sorted() -> None:
    # Plainly sorted(), as ruff's RUF022 (off in pyproject.toml) would not have it.
    import importlib
    import pkgutil

    unsorted = []
    for info in pkgutil.walk_packages(promptstate.__path__, "promptstate."):
        if info.name.endswith("__main__"):
            continue  # runs the command line
        names = getattr(importlib.import_module(info.name), "__all__", None)
        if names is not None and list(names) != sorted(names):
            unsorted.append(info.name)
    assert unsorted == []


def test_all_is_importable() -> None:
    for name in promptstate.__all__:
        assert getattr(promptstate, name) is not None, name


def test_no_duplicates() -> None:
    assert len(set(promptstate.__all__)) == len(promptstate.__all__)


# Where each moved name is defined, and the documented modules that re-export it (issue 14
# moved the code under stages/ and below; these import paths stay the public ones).
MOVED = {
    "promptstate.packs": (
        ("PromptPack", "PromptTemplate", "PromptTool", "PromptVariable", "load_pack"),
        ("promptstate.sdk",),
    ),
    "promptstate._window": (
        ("repair_tool_pairs", "truncate_messages"),
        ("promptstate.truncation",),
    ),
    "promptstate.stages.truncate": (
        ("TruncationStrategy",),
        ("promptstate.truncation", "promptstate.stages"),
    ),
    "promptstate.stages.sliding_window": (
        ("SlidingWindow",),
        ("promptstate.truncation", "promptstate.stages"),
    ),
    "promptstate.stages.token_budget": (
        ("TokenBudget",),
        ("promptstate.truncation", "promptstate.stages"),
    ),
    "promptstate.stages.time_window": (
        ("TimeWindow",),
        ("promptstate.truncation", "promptstate.stages"),
    ),
    "promptstate.stages.summarize": (("SUMMARY_KEY", "Summarize"), ("promptstate.truncation",)),
    "promptstate.stages.tool_loop": (("ToolLoop", "with_tool_loop"), ("promptstate.tools",)),
    "promptstate._tools": (
        (
            "MISSING_RESULT",
            "Tool",
            "ToolSpec",
            "as_tools",
            "pair_tool_messages",
            "run_tool_calls",
            "tool",
        ),
        ("promptstate.tools",),
    ),
    "promptstate.redaction": (("Secret", "redact", "scrub", "url_secrets"), ()),
}


def test_moved_names_keep_their_documented_import_paths() -> None:
    import importlib

    for home, (names, public) in MOVED.items():
        defined = importlib.import_module(home)
        for name in names:
            assert name in defined.__all__, (home, name)
            found = getattr(defined, name)
            for module_name in public:
                module = importlib.import_module(module_name)
                assert name in module.__all__, (module_name, name)
                assert getattr(module, name) is found, (module_name, name)
            if name in promptstate.__all__:
                assert getattr(promptstate, name) is found, name
    stages = importlib.import_module("promptstate.stages")
    assert stages.Summarize is promptstate.Summarize
    assert stages.ToolLoop is importlib.import_module("promptstate.tools").ToolLoop

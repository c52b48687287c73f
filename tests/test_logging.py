"""Logging: one logger per module under ``promptstate.*``, silent by default, and no prompt
or reply text in any record at INFO or above (docs/logging.md)."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Any

import pytest

import promptstate
from promptstate import (
    GuardrailError,
    Guardrails,
    Message,
    MockProvider,
    Pipeline,
    ToolCall,
    Validator,
    ValidatorRegistry,
)

SECRET = "my card number is 4111-1111-1111-1111"


def _modules() -> list[Any]:
    found = []
    for info in pkgutil.walk_packages(promptstate.__path__, "promptstate."):
        if info.name == "promptstate.__main__":  # runs the command line
            continue
        try:
            found.append(importlib.import_module(info.name))
        except ImportError:  # an optional extra that is not installed
            continue
    return found


def test_every_logger_is_named_for_its_module() -> None:
    modules = _modules()
    with_logger = [m for m in modules if isinstance(getattr(m, "logger", None), logging.Logger)]
    assert len(with_logger) >= 15
    for module in with_logger:
        assert module.logger.name == module.__name__
        assert module.logger.name.startswith("promptstate.")


def test_the_library_root_logger_has_only_a_null_handler() -> None:
    handlers = logging.getLogger("promptstate").handlers
    assert [type(h) for h in handlers] == [logging.NullHandler]


@pytest.mark.anyio
async def test_no_prompt_or_reply_text_at_info_or_above(caplog: pytest.LogCaptureFixture) -> None:
    def model(messages: list[Message]) -> Message | str:
        if messages[-1].role == "user":
            return Message("assistant", tool_calls=(ToolCall("c1", "charge", "{}"),))
        return f"I will remember: {SECRET}"

    def charge() -> str:
        raise RuntimeError(SECRET)  # a tool failing with the user's text in its message

    def quoting(reply: Message, params: dict[str, Any]) -> str | None:
        raise ValueError(reply.content)  # a validator failing with the reply in its message

    registry = ValidatorRegistry()
    registry.register("quoting", quoting)
    guard = Guardrails(
        [
            Validator(type="quoting"),
            Validator(type="banned_words", params={"words": ["card"]}),
            Validator(type="max_length", fail_on_violation=True, params={"max_characters": 5}),
        ],
        registry,
    )
    with caplog.at_level(logging.DEBUG, logger="promptstate"):
        async with Pipeline(MockProvider(model), tools=[charge], guardrails=guard) as pipe:
            with pytest.raises(GuardrailError):
                await pipe.execute("s", "user", SECRET)
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert {r.name for r in loud} >= {"promptstate._tools", "promptstate.stages.check_reply"}
    handler = logging.StreamHandler()
    for record in loud:
        assert SECRET not in handler.format(record), record.name
    # The details are there for whoever turns DEBUG on.
    assert any(SECRET in handler.format(r) for r in caplog.records if r.levelno == logging.DEBUG)


@pytest.mark.anyio
async def test_each_save_retry_is_one_warning_line_with_the_traceback_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from promptstate import MemoryStore, StoreUnavailableError

    class Flaky(MemoryStore):
        """A store whose first two turn writes fail as an outage would."""

        failures = 2

        async def append_turn(self, *args: Any, **kwargs: Any) -> int:
            if self.failures:
                self.failures -= 1
                raise StoreUnavailableError("Redis is unavailable while appending: refused")
            return await super().append_turn(*args, **kwargs)

    store = Flaky()
    caplog.set_level(logging.DEBUG, logger="promptstate")
    async with Pipeline(MockProvider(lambda m: "ok"), store=store) as pipe:
        await pipe.execute("s", "user", "hi")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "saving the turn of session 's' failed (Redis is unavailable while appending: "
        f"refused), retrying ({n}/2)"
        for n in (1, 2)
    ]
    assert all(r.exc_info is None for r in warnings)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(debug) == 2
    assert [m.content for m in await store.load("s")] == ["hi", "ok"]

"""Input nested far beyond any real use (100,000 levels) is a promptstate error wherever it
comes in: a prompt pack, tool arguments, an import line, stored data (a provider's reply:
tests/providers/test_malformed_responses.py).
A RecursionError from the decoder used to escape from each of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from promptstate import CorruptStateError, PromptPackError, ValidationError, load_pack, tool
from promptstate.serialization import decode_state, unpack_any, unpack_messages

pytestmark = pytest.mark.anyio

DEPTH = 100_000
DEEP_JSON = b"[" * DEPTH + b"]" * DEPTH


def test_a_deep_prompt_pack_is_a_prompt_pack_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b'{"id": "deep", "prompts": {"a": {"system_template": ' + DEEP_JSON + b"}}}")
    with pytest.raises(PromptPackError, match="nested too deeply"):
        load_pack(path)


async def test_deep_tool_arguments_are_a_validation_error() -> None:
    @tool
    def echo(value: list[Any] | None = None) -> str:
        return "called"

    with pytest.raises(ValidationError, match="nested too deeply"):
        await echo.call(b'{"value": '.decode() + DEEP_JSON.decode() + "}")


def test_deep_stored_or_imported_data_is_corrupt_state() -> None:
    with pytest.raises(CorruptStateError, match="nested too deeply"):
        decode_state(b'{"conversation_id": "k", "metadata": {"a": ' + DEEP_JSON + b"}}", key="k")
    with pytest.raises(CorruptStateError, match="nested too deeply"):
        unpack_any(b"\x91" * DEPTH + b"\x80", key="k")
    with pytest.raises(CorruptStateError, match="nested too deeply"):
        unpack_messages(
            [b"\x82\xa4role\xa4user\xa8metadata\x81\xa1d" + b"\x91" * DEPTH + b"\x80"], key="k"
        )

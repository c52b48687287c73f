"""A store's token counter is checked: a bad one fails clearly, before anything is stored."""

from __future__ import annotations

import pytest

from promptstate import MemoryStore, Message, ValidationError


class _StrCounter:
    def count(self, message: Message) -> int:
        return "7"  # type: ignore[return-value]


class _NegativeCounter:
    def count(self, message: Message) -> int:
        return -3


@pytest.mark.anyio
async def test_a_bad_token_counter_is_a_validation_error() -> None:
    # token_counter=5 failed on first write with AttributeError; a counter returning "7"
    # with TypeError; one returning -3 made token_count negative.
    with pytest.raises(ValidationError, match="count"):
        MemoryStore(token_counter=5)  # type: ignore[arg-type]
    for counter in (_StrCounter(), _NegativeCounter()):
        store = MemoryStore(token_counter=counter)
        with pytest.raises(ValidationError, match=r"count\(\) must return"):
            await store.append("a", [Message("user", "x")])
        assert await store.load("a") == []

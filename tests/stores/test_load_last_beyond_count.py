"""``load(last=n)`` with ``n`` above the number of messages returns them all.

A regression test: slicing with ``len - n`` went negative for ``len < n < 2 * len`` and
returned only the newest ``2 * len - n`` messages, so a pipeline whose load window was larger
than a short session silently lost the start of the conversation.
"""

from __future__ import annotations

import pytest

from promptstate import MemoryStore, Message
from tests.stores.test_custom_store import DictStore


@pytest.mark.anyio
@pytest.mark.parametrize("make", [MemoryStore, DictStore], ids=["MemoryStore", "base default"])
@pytest.mark.parametrize("last", [9, 10, 11, 16, 19, 20, 21, 100])
async def test_load_last_returns_the_newest_min_last_count(make: type, last: int) -> None:
    store = make()
    messages = [Message("user", f"m{i}") for i in range(10)]
    await store.append("s", messages)

    loaded = await store.load("s", last=last)

    assert [m.content for m in loaded] == [m.content for m in messages][-last:]
    assert len(loaded) == min(last, 10)

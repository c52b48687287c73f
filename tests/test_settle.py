"""promptstate.settle: a write that has started finishes before a cancellation leaves it."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from promptstate import settle
from promptstate.settle import settled

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # settled() is asyncio's answer to task.cancel(); trio uses a shield


async def test_a_cancelled_caller_waits_for_the_write_without_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """anyio delivers a scope's cancellation again on every turn of the event loop; the
    waiting must not wake up for each (it was a busy loop that starved a write's worker
    thread of the GIL: a cancelled SQLite fork took seconds instead of milliseconds)."""
    waits = 0
    wait_for = asyncio.wait_for

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal waits
        waits += 1
        return wait_for(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(settle.asyncio, "wait_for", counting)
    done: list[str] = []

    async def write() -> str:
        await anyio.sleep(0.2)  # ~hundreds of event loop turns on an idle loop
        done.append("written")
        return "ok"

    with anyio.CancelScope() as scope:
        scope.cancel()
        await settled(write())
    assert scope.cancelled_caught  # the caller's cancellation went on, after the write
    assert done == ["written"]
    assert waits <= 2, f"woke up {waits} times while the write ran"


async def test_a_plain_task_cancel_is_waited_out_too() -> None:
    done: list[str] = []

    async def write() -> None:
        await asyncio.sleep(0.05)
        done.append("written")

    task = asyncio.ensure_future(settled(write()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["written"]  # it returned only once the write had finished

"""Conversation.send against Pipeline.execute, and backup throughput.

In the same run, on the same store and the same kind of session:

* ``sdk``: ``await conv.send(text)`` on a conversation started from a prompt pack (system
  prompt, parameters and a tool sent every turn);
* ``pipeline``: ``await pipe.execute(session, "user", text, system=..., options=...)`` with the
  same system prompt and options: the work the SDK delegates to.

Target: ``sdk / pipeline`` at most 1.05 (the SDK adds no I/O to a turn).

Then ``export_states`` and ``import_states`` of N sessions (states per second).

Run: ``python -m benchmarks.bench_sdk`` (``--quick`` for a short run; ``--store URL`` for
another store, e.g. ``sqlite:///bench.db``).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio

from benchmarks._timing import fmt_us, machine
from promptstate import (
    ConversationConfig,
    ConversationManager,
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    PromptPack,
    State,
    Store,
    export_states,
    import_states,
    open_store,
)

PACK = {
    "id": "bench",
    "name": "Bench",
    "version": "1.0.0",
    "template_engine": {"version": "v1", "syntax": "{{variable}}"},
    "prompts": {
        "chat": {
            "id": "chat",
            "name": "Chat",
            "version": "1.0.0",
            "system_template": "You help {{user_name}}. Be concise.",
            "variables": [{"name": "user_name", "type": "string", "required": True}],
            "parameters": {"temperature": 0.2},
        }
    },
    "tools": {
        "lookup": {
            "name": "lookup",
            "description": "Look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
    },
}


async def _median_per_turn(fn: Callable[[], Awaitable[object]], batches: int) -> float:
    per_turn: list[float] = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(10):
            await fn()
        per_turn.append((time.perf_counter() - start) / 10)
    return statistics.median(per_turn)


async def bench_turns(store: Store, rounds: int) -> tuple[float, float, float]:
    provider = MockProvider(["Noted."], cycle=True)
    manager = ConversationManager(provider, store, max_tokens=2000)
    pack = manager.add_pack(PromptPack.from_dict(PACK))
    tag = uuid.uuid4().hex[:8]
    conv = await manager.new_conversation(
        pack, ConversationConfig(conversation_id=f"bench:{tag}:sdk", variables={"user_name": "A"})
    )
    pipe = Pipeline(provider, store=store, max_tokens=2000)
    session = f"bench:{tag}:pipe"
    system, options = conv.system_prompt, conv.options

    async def sdk() -> None:
        await conv.send("What did we decide about the launch date?")

    async def raw() -> None:
        await pipe.execute(
            session,
            "user",
            "What did we decide about the launch date?",
            system=system,
            options=options,
        )

    sdk_times, raw_times = [], []
    for i in range(rounds):  # alternate (and swap who goes first), so drift hits both alike
        if i % 2:
            raw_times.append(await _median_per_turn(raw, 3))
            sdk_times.append(await _median_per_turn(sdk, 3))
        else:
            sdk_times.append(await _median_per_turn(sdk, 3))
            raw_times.append(await _median_per_turn(raw, 3))
    await store.delete_by_prefix(f"bench:{tag}:")
    await manager.aclose()
    await pipe.aclose()
    ratios = [a / b for a, b in zip(sdk_times, raw_times, strict=True)]
    return statistics.median(sdk_times), statistics.median(raw_times), statistics.median(ratios)


async def bench_backup(store: Store, sessions: int) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:8]
    source = MemoryStore()
    messages = [Message("user", "hello there"), Message("assistant", "general Kenobi")] * 5
    for i in range(sessions):
        await source.set(f"b{tag}:{i}", State(conversation_id=f"b{tag}:{i}", messages=messages))
    lines = [line async for line in export_states(source)]
    start = time.perf_counter()
    result = await import_states(store, lines)
    import_s = time.perf_counter() - start
    assert result.imported == sessions
    start = time.perf_counter()
    count = 0
    async for _ in export_states(store, f"b{tag}:"):
        count += 1
    export_s = time.perf_counter() - start
    assert count == sessions
    await store.delete_by_prefix(f"b{tag}:")
    return sessions / export_s, sessions / import_s


async def main(url: str, quick: bool) -> None:
    store = MemoryStore() if url == "memory://" else open_store(url)
    async with store:
        sdk, raw, ratio = await bench_turns(store, 5 if quick else 30)
        exported, imported = await bench_backup(store, 500 if quick else 5000)
    print(f"promptstate SDK benchmark: {machine()}; store {url}")
    print()
    print("| turn | us per turn (median) |")
    print("| --- | ---: |")
    print(f"| Conversation.send | {fmt_us(sdk)} |")
    print(f"| Pipeline.execute | {fmt_us(raw)} |")
    print(f"| ratio sdk / pipeline (median of rounds) | {ratio:.3f} (target <= 1.05) |")
    print()
    print(f"export_states: {exported:,.0f} states/s; import_states: {imported:,.0f} states/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    anyio.run(main, args.store, args.quick)

"""encode_state / decode_state against stdlib json and pydantic v2, in one run.

Run: ``python -m benchmarks.bench_serialization``

Every contender does the same work: turn a state of N messages (with tool calls and metadata on
some) into JSON bytes and back into objects. "stdlib json" stops at plain dicts (no typed
objects, no validation), which is the least work possible with the standard library; pydantic
builds validated models of the same shape. Ratios are contender time / promptstate time, so
above 1 means promptstate is faster.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from benchmarks._timing import fmt_us, machine, time_sync
from promptstate import Message, State, ToolCall, decode_state, encode_state


def make_state(n: int) -> State:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    messages = []
    for i in range(n):
        if i % 10 == 5:
            messages.append(
                Message(
                    "assistant",
                    "",
                    timestamp=t0 + timedelta(seconds=i),
                    tool_calls=(ToolCall(f"c{i}", "lookup", '{"q": "weather in Paris"}'),),
                )
            )
        elif i % 10 == 6:
            messages.append(
                Message(
                    "tool",
                    '{"temp": 21, "sky": "clear"}',
                    tool_call_id=f"c{i - 1}",
                    timestamp=t0 + timedelta(seconds=i),
                )
            )
        else:
            role = "user" if i % 2 == 0 else "assistant"
            messages.append(
                Message(
                    role,
                    f"message {i}: " + "lorem ipsum dolor sit amet " * 6,
                    timestamp=t0 + timedelta(seconds=i),
                    tokens=40,
                    metadata={"turn": i // 2} if i % 4 == 0 else {},
                )
            )
    return State(
        conversation_id="bench",
        user_id="u1",
        messages=messages,
        token_count=40 * n,
        total_cost=0.01,
        metadata={"prompt": "assistant"},
        version=n,
    )


def as_dict(state: State) -> dict[str, Any]:
    """What a stdlib-json implementation would store: plain dicts, ISO timestamps."""
    return {
        "schema_version": state.schema_version,
        "conversation_id": state.conversation_id,
        "user_id": state.user_id,
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "name": m.name,
                "tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls
                ],
                "tool_call_id": m.tool_call_id,
                "timestamp": m.timestamp.isoformat(),
                "metadata": m.metadata,
                "tokens": m.tokens,
            }
            for m in state.messages
        ],
        "token_count": state.token_count,
        "total_cost": state.total_cost,
        "metadata": state.metadata,
        "created_at": state.created_at.isoformat(),
        "updated_at": state.updated_at.isoformat(),
        "version": state.version,
    }


def pydantic_contender() -> tuple[Any, Any] | None:
    try:
        import pydantic
    except ImportError:
        return None

    class PToolCall(pydantic.BaseModel):
        id: str
        name: str
        arguments: str

    class PMessage(pydantic.BaseModel):
        role: str
        content: str = ""
        name: str | None = None
        tool_calls: tuple[PToolCall, ...] = ()
        tool_call_id: str | None = None
        timestamp: datetime
        metadata: dict[str, Any] = {}
        tokens: int | None = None

    class PState(pydantic.BaseModel):
        schema_version: int
        conversation_id: str
        user_id: str | None = None
        messages: list[PMessage] = []
        token_count: int = 0
        total_cost: float = 0.0
        metadata: dict[str, Any] = {}
        created_at: datetime
        updated_at: datetime
        version: int = 0

    return PState, pydantic.VERSION


def run(sizes: tuple[int, ...] = (100, 1000), budget: float = 0.5) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pyd = pydantic_contender()
    for n in sizes:
        state = make_state(n)
        data = encode_state(state)
        plain = as_dict(state)
        plain_bytes = json.dumps(plain).encode()
        ours = {
            "encode": time_sync(lambda s=state: encode_state(s), budget=budget).median,
            "decode": time_sync(lambda d=data: decode_state(d), budget=budget).median,
        }
        contenders = {
            "stdlib json (dicts)": {
                "encode": time_sync(lambda p=plain: json.dumps(p).encode(), budget=budget).median,
                "decode": time_sync(lambda b=plain_bytes: json.loads(b), budget=budget).median,
            }
        }
        if pyd is not None:
            model = pyd[0].model_validate_json(data)
            contenders[f"pydantic {pyd[1]}"] = {
                "encode": time_sync(model.model_dump_json, budget=budget).median,
                "decode": time_sync(
                    lambda d=data: pyd[0].model_validate_json(d), budget=budget
                ).median,
            }
        for op in ("encode", "decode"):
            rows.append(
                {
                    "messages": n,
                    "op": op,
                    "who": "promptstate (msgspec)",
                    "us": ours[op] * 1e6,
                    "ratio": 1.0,
                }
            )
            for who, times in contenders.items():
                rows.append(
                    {
                        "messages": n,
                        "op": op,
                        "who": who,
                        "us": times[op] * 1e6,
                        "ratio": times[op] / ours[op],
                    }
                )
    return rows


def main() -> None:
    import msgspec

    rows = run()
    print(f"machine: {machine()}; msgspec {msgspec.__version__}")
    print("| messages | op | implementation | µs per state | x promptstate's time |")
    print("|---:|---|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['messages']:,} | {r['op']} | {r['who']} | {fmt_us(r['us'] / 1e6)} | "
            f"{r['ratio']:.1f}x |"
        )


if __name__ == "__main__":
    main()

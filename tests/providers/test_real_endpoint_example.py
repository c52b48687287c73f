"""examples/real_endpoint.py: exits cleanly without a key, and runs against a local server."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.providers.loopback import LoopbackServer, json_reply, openai_sse, sse_reply
from tests.providers.test_openai_provider import chunk, completion, usage_chunk

EXAMPLE = Path(__file__).parents[2] / "examples" / "real_endpoint.py"


def test_without_any_key_it_says_so_and_exits_0() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env["PYTHONPATH"] = str(EXAMPLE.parents[1])
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "No endpoint configured" in done.stdout


@pytest.mark.anyio
async def test_against_a_local_openai_compatible_server(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = json.dumps({"city": "Oslo"})
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "utc_time", "arguments": arguments},
    }
    server.queue(
        json_reply(200, completion("Hello Alice.")),
        sse_reply(openai_sse([chunk({"content": "Alice"}, finish="stop"), usage_chunk(20, 1)])),
        json_reply(200, completion(None, tool_calls=[call], finish="tool_calls")),
        json_reply(200, completion("It is noon in Oslo.")),
    )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("PROMPTSTATE_MODEL", "gpt-4o-mini")
    main = runpy.run_path(str(EXAMPLE))["main"]
    assert await main() == 0
    out = capsys.readouterr().out
    assert "assistant: Hello Alice." in out
    assert "assistant (after tools): It is noon in Oslo." in out
    assert "stored: 8 messages" in out
    assert server.requests[3].json()["messages"][-1]["role"] == "tool"

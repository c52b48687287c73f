"""A newcomer's first hour with the command, through the real entry point (``python -m
promptstate`` in a subprocess): bench arguments, Ctrl-C, read-only commands, chat errors,
import messages and exit codes."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from promptstate import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}
    for name in ("PROMPTSTATE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        if name not in extra:
            env.pop(name, None)
    return env


def _promptstate(
    *args: str, cwd: Path, stdin: str = "", timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptstate", *args],
        cwd=cwd,
        env=_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- 2. bench passes its arguments on ---------------------------------------------------------


@pytest.mark.parametrize("separator", [[], ["--"]])
def test_bench_passes_arguments_through(separator: list[str]) -> None:
    # "promptstate bench --tiny" and "... -- --tiny" were both usage errors.
    done = _promptstate(
        "bench", *separator, "--tiny", "--no-progress", "--only", "serialization", cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "serialization" in done.stdout


def test_bench_usage_errors_are_the_benchmarks_own_and_exit_2() -> None:
    done = _promptstate("bench", "--no-such-flag", cwd=ROOT)
    assert done.returncode == 2
    assert "--no-such-flag" in done.stderr


# -- 3. Ctrl-C during the demo's load test ----------------------------------------------------


@pytest.mark.timeout(120)
def test_ctrl_c_stops_the_load_test_cleans_up_and_exits_130(tmp_path: Path) -> None:
    # It was ignored until every turn had run (30,000 turns to 100%, then "interrupted").
    demo = subprocess.Popen(
        [sys.executable, "-m", "promptstate", "demo", "--sessions", "3000", "--turns", "200"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.startswith("== 2."):
                break
        else:
            pytest.fail("the demo never reached its load test")
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert "(100%)" not in err  # 600,000 turns did not all run first
    assert "turns/s" not in out  # no results table for a run that was stopped

    async def left_behind() -> int:
        async with SQLiteStore(tmp_path / "promptstate.db") as store:
            return len([s async for s in store.list_by_prefix("demo:load:")])

    assert asyncio.run(left_behind()) == 0  # the load-test sessions were cleaned up


# -- 4. read-only commands create nothing ----------------------------------------------------


@pytest.mark.parametrize("command", [["ls"], ["show", "x"], ["export"]])
def test_read_only_commands_never_create_a_sqlite_database(
    command: list[str], tmp_path: Path
) -> None:
    url = "sqlite:///nonexistent_dir/x.db"
    done = _promptstate(*command, "--store", url, cwd=tmp_path)
    assert done.returncode == 1
    assert "does not exist" in done.stderr
    assert done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no folder, no file
    default = _promptstate(*command, cwd=tmp_path)  # the default store: ./promptstate.db
    assert default.returncode == 1
    assert not (tmp_path / "promptstate.db").exists()


@pytest.mark.parametrize("command", [["ls"], ["show", "x"], ["export"]])
def test_read_only_commands_never_create_postgres_tables(
    command: list[str], tmp_path: Path, postgres_dsn: str
) -> None:
    import asyncpg

    table = f"ro_{uuid.uuid4().hex[:10]}"
    done = _promptstate(*command, "--store", f"{postgres_dsn}?table_name={table}", cwd=tmp_path)
    assert done.returncode == 1
    assert "does not exist" in done.stderr

    async def tables() -> list[str]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            rows = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{table}%"
            )
        finally:
            await conn.close()
        return [r[0] for r in rows]

    assert asyncio.run(tables()) == []


def test_read_only_commands_still_read_what_exists(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    assert _promptstate("chat", "--store", url, cwd=tmp_path, stdin="hello\n").returncode == 0
    listed = _promptstate("ls", "--store", url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "chat:default" in listed.stdout


# -- 6. chat ----------------------------------------------------------------------------------


class _Flaky(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that refuses the first ``failures`` requests (400)."""

    failures: ClassVar[int] = 0
    seen: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).seen.append(body)
        if type(self).failures > 0:
            type(self).failures -= 1
            data = json.dumps({"error": {"message": "model overloaded", "type": "bad"}}).encode()
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        chunk = {"choices": [{"index": 0, "delta": {"content": "hi there"}, "finish_reason": None}]}
        end = {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
        self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(end)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def flaky_server() -> Iterator[str]:
    _Flaky.failures = 0
    _Flaky.seen = []
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/v1"
        finally:
            server.shutdown()
            thread.join(timeout=10)


def test_chat_names_the_real_server_and_survives_a_provider_error(
    flaky_server: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    _Flaky.failures = 1
    # OPENAI_BASE_URL alone means that server (as in examples/_provider.py), not the mock.
    done = _promptstate(
        "chat", "--store", url, cwd=tmp_path, stdin="first\nsecond\n", OPENAI_BASE_URL=flaky_server
    )
    assert done.returncode == 0, done.stderr
    assert f"with gpt-4o-mini at {flaky_server}" in done.stdout
    assert "api.openai.com" not in done.stdout
    assert "the turn failed, nothing was stored" in done.stdout
    assert "model overloaded" in done.stdout
    assert "bot> hi there" in done.stdout  # the chat went on after the error
    shown = _promptstate("show", "chat:default", "--store", url, cwd=tmp_path)
    assert "messages      2" in shown.stdout  # only the turn that worked
    assert [m["content"] for m in _Flaky.seen[-1]["messages"]] == ["second"]


def test_a_chat_whose_first_turns_all_failed_leaves_no_conversation(
    flaky_server: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    _Flaky.failures = 5
    done = _promptstate(
        "chat", "--store", url, "--base-url", flaky_server, cwd=tmp_path, stdin="one\ntwo\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("the turn failed") == 2
    listed = _promptstate("ls", "--store", url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "0 conversations" in listed.stderr


# -- 9. import names the line and the field --------------------------------------------------


def test_import_names_the_line_the_field_and_what_was_written(tmp_path: Path) -> None:
    good = json.dumps(
        {
            "schema_version": 1,
            "conversation_id": "ok",
            "messages": [],
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
        }
    )
    wrong_type = good.replace('"ok"', "5")
    cases = [
        ('{"conversation_id": 5}', 'line 2: state has no "schema_version" field'),
        (wrong_type, "line 2: state data is not a valid state: Expected `str`, got `int`"),
    ]
    for bad, message in cases:
        (tmp_path / "in.jsonl").write_text(f"{good}\n{bad}\n{good.replace('ok', 'later')}\n")
        done = _promptstate(
            "import",
            "in.jsonl",
            "--store",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--overwrite",
            cwd=tmp_path,
        )
        assert done.returncode == 1
        assert message in done.stderr
        assert "conversation_id" in done.stderr or "schema_version" in done.stderr
        assert "KeyError" not in done.stderr
        assert "the lines before it wrote 1 and skipped 0" in done.stderr


# -- 10. every usage error exits 2 ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["demo", "--sessions", "many"],
        ["demo", "--bogus"],
        ["chat", "--max-tokens", "-1"],
        ["chat", "extra"],
        ["ls", "--bogus"],
        ["ls", "a", "b"],
        ["show"],
        ["show", "--last", "x", "id"],
        ["export", "--bogus"],
        ["import"],
        ["import", "a", "b"],
        ["rm"],
        ["rm", "a", "--prefix", "b"],
        ["rm", "--prefix", ""],
        ["bench", "--no-such-flag"],
    ],
)
def test_every_usage_error_exits_2(argv: list[str], tmp_path: Path) -> None:
    done = _promptstate(
        *argv, "--store", "memory://", cwd=ROOT if argv[:1] == ["bench"] else tmp_path
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "usage:" in done.stderr
    assert list(tmp_path.iterdir()) == []

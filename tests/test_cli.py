"""The promptstate command: the demo in real processes, the other commands in-process."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from promptstate.cli import DEFAULT_STORE_URL, main

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("promptstate.stores.sqlite")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMPTSTATE_URL", None)
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "promptstate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_remembers_across_two_runs(tmp_path: Path) -> None:
    first = _run("demo", "--sessions", "20", "--turns", "3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "store: sqlite:///promptstate.db" in first.stdout
    assert "bot> Nice to meet you, Alice! This is our turn 1." in first.stdout
    assert "bot> You are Alice: you told me at turn 1. This is our turn 2." in first.stdout
    assert (tmp_path / "promptstate.db").exists()  # the default store: a file right here
    for label in ("turns/s", "latency p50", "latency p99", "tokens in / out", "stored bytes"):
        assert label in first.stdout
    assert "20 x 3 = 60 turns" in first.stdout
    assert "60/60 (100%)" in first.stderr  # the progress bar

    second = _run("demo", "--sessions", "0", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "found 4 messages of 'demo:alice' stored by an earlier run" in second.stdout
    assert "bot> Welcome back, Alice — this is our turn 3." in second.stdout
    assert "This is our turn 4." in second.stdout
    assert "turns/s" not in second.stdout  # --sessions 0 skips the load test


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    done = _run("ls", "--store", "nope://x", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("promptstate: error: unknown store URL scheme 'nope://'")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("PROMPTSTATE_URL", url)
    return url


def _chat(monkeypatch: pytest.MonkeyPatch, text: str, *args: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    return main(["chat", *args])


def test_default_store_is_sqlite_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROMPTSTATE_URL", raising=False)
    assert DEFAULT_STORE_URL == "sqlite:///promptstate.db"
    # Looking creates nothing: ls says the database is not there yet.
    assert main(["ls"]) == 1
    assert not (tmp_path / "promptstate.db").exists()
    assert "sqlite:///promptstate.db does not exist" in capsys.readouterr().err
    # A command that writes creates it, right here.
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert main(["chat"]) == 0
    assert (tmp_path / "promptstate.db").exists()
    assert main(["ls"]) == 0
    assert "1 conversation" in capsys.readouterr().err


def test_chat_ls_show_export_import_rm(
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _chat(monkeypatch, "Hi, I'm Bob\n\nWhat's my name?\n/history\n/quit\n") == 0
    out = capsys.readouterr().out
    assert "chat 'chat:default' (new conversation) with the mock model" in out
    assert "bot> Nice to meet you, Bob! This is our turn 1." in out
    assert "bot> You are Bob: you told me at turn 1. This is our turn 2." in out
    assert "   user: Hi, I'm Bob" in out  # /history

    # Ctrl-D ends it too, and the next chat continues the same conversation.
    assert _chat(monkeypatch, "I'm back\n") == 0
    out = capsys.readouterr().out
    assert "(continuing, 4 messages stored)" in out
    assert "Welcome back, Bob — this is our turn 3." in out
    assert _chat(monkeypatch, "hello\n", "--session", "other:1", "--system", "Be brief.") == 0
    capsys.readouterr()

    assert main(["ls"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["ID", "USER", "MESSAGES", "TOKENS", "COST", "UPDATED"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["chat:default", "other:1"]
    assert "2 conversations" in captured.err
    assert main(["ls", "other:"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["other:1"]

    assert main(["show", "chat:default", "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "conversation  chat:default" in out
    assert "messages      6" in out
    assert "... 4 older messages not shown" in out
    assert "assistant: Welcome back, Bob" in out
    assert main(["show", "other:1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["conversation_id"] == "other:1"
    assert doc["metadata"]["promptstate"]["system"] == "Be brief."

    backup = tmp_path / "backup.jsonl"
    assert main(["export", "-o", str(backup)]) == 0
    assert "exported 2 conversations" in capsys.readouterr().err
    assert len(backup.read_bytes().splitlines()) == 2

    assert main(["rm", "chat:default"]) == 0
    assert main(["rm", "--prefix", "other:"]) == 0
    assert "deleted 1 conversation" in capsys.readouterr().out
    assert main(["ls"]) == 0
    assert "0 conversations" in capsys.readouterr().err

    assert main(["import", str(backup)]) == 0
    assert "imported 2, skipped 0" in capsys.readouterr().out
    assert main(["import", str(backup)]) == 0
    assert "imported 0, skipped 2" in capsys.readouterr().out
    assert main(["import", str(backup), "--overwrite"]) == 0
    assert "imported 2, skipped 0" in capsys.readouterr().out
    assert main(["show", "chat:default"]) == 0
    assert "messages      6" in capsys.readouterr().out

    # Export to standard output, into another store.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["export", "--prefix", "other:"]) == 0
    dumped = capsys.readouterr()
    assert "exported 1 conversation" in dumped.err
    (tmp_path / "one.jsonl").write_text(dumped.out)
    assert main(["import", str(tmp_path / "one.jsonl"), "--store", other]) == 0
    capsys.readouterr()
    assert main(["ls", "--store", other]) == 0
    assert "1 conversation" in capsys.readouterr().err


def test_show_summarises_parts_and_export_import_keep_them(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anyio

    from promptstate import (
        AudioPart,
        FilePart,
        ImagePart,
        Message,
        ReasoningPart,
        SQLiteStore,
        TextPart,
    )

    every = bytes(range(256))
    messages = [
        Message(
            "user",
            "what is this?",
            parts=(
                ImagePart(data=every * 4, media_type="image/png"),
                ImagePart(url="https://example.com/cat.jpg"),
                AudioPart(data=every, media_type="audio/wav", transcript="hello there"),
                FilePart(data=b"%PDF" + every, media_type="application/pdf", name="r.pdf"),
                TextPart("and a note"),
            ),
        ),
        Message(
            "assistant",
            "A cat.",
            parts=(ReasoningPart(text="It has whiskers.", signature="c2ln", provider="anthropic"),),
        ),
    ]

    async def fill() -> None:
        async with SQLiteStore(tmp_path / "cli.db") as store:
            await store.append("rich", messages)

    anyio.run(fill)
    assert main(["show", "rich"]) == 0
    out = capsys.readouterr().out
    assert "user: what is this?" in out
    assert "    + image image/png 1024 bytes\n" in out
    assert "    + image - url https://example.com/cat.jpg\n" in out
    assert "    + audio audio/wav 256 bytes: hello there\n" in out
    assert "    + file application/pdf 260 bytes (r.pdf)\n" in out
    assert "    + text 10 chars: and a note\n" in out
    assert "    + reasoning 16 chars, signed, from anthropic\n" in out
    assert "\\x" not in out  # no bytes printed

    backup = tmp_path / "rich.jsonl"
    assert main(["export", "-o", str(backup)]) == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["import", str(backup), "--store", other]) == 0
    capsys.readouterr()

    async def read() -> list[Message]:
        async with SQLiteStore(tmp_path / "other.db") as store:
            return await store.load("rich")

    got = anyio.run(read)
    assert [m.parts for m in got] == [m.parts for m in messages]
    assert [m.content for m in got] == [m.content for m in messages]


def test_import_bad_lines(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    good = '{"schema_version":1,"conversation_id":"g","messages":[],"created_at":"2024-01-01T00:00:00Z","updated_at":"2024-01-01T00:00:00Z"}'  # noqa: E501
    bad.write_text(f"{good}\nnot json\n")
    assert main(["import", str(bad)]) == 1
    assert capsys.readouterr().err.startswith("promptstate: error: line 2: ")
    assert main(["import", str(bad), "--skip-errors", "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert "imported 1, skipped 0" in captured.out
    assert "failed 1" in captured.out
    assert captured.err.startswith("line 2: state data is not valid JSON")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "nope"], "no conversation state under key 'nope'"),
        (["rm", "nope"], "no conversation with id 'nope'"),
        (["import", "/nonexistent/file.jsonl"], "cannot open /nonexistent/file.jsonl"),
        (["ls", "--store", "memory"], "a store URL looks like 'scheme://...'"),
        (["bench"], "the benchmarks live in a source checkout"),
    ],
)
def test_errors_exit_1_with_one_line(
    store_url: str,
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if argv[0] in ("show", "rm"):  # a store that exists, without that conversation
        assert _chat(monkeypatch, "hi\n", "--session", "other") == 0
        capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("promptstate: error: ")
    assert message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("module", "url"),
    [
        ("redis", "redis://:hunter2@127.0.0.1:1/0"),
        ("postgres", "postgresql://user:hunter2@127.0.0.1:1/db"),
    ],
)
def test_unreachable_server_is_one_line(
    store_url: str, module: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip(f"promptstate.stores.{module}")
    assert main(["ls", "--store", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("promptstate: error: ")
    assert err.count("\n") == 1
    assert "hunter2" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--sessions", "-3"],
        [],
        ["rm"],
        ["rm", "--prefix", ""],
        ["rm", "a", "--prefix", "b"],
    ],
)
def test_usage_errors_exit_2(
    store_url: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


class _OpenAICompatible(http.server.BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible chat completions server (streaming and not)."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).requests.append(body)
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        text = f"server saw {len(body['messages'])} messages, {len(users)} from you"
        if not body.get("stream"):
            payload = {
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        end = {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        }
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())


def test_chat_with_an_openai_compatible_server(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import promptstate.providers

    if getattr(promptstate.providers, "OpenAIProvider", None) is None:
        pytest.skip("OpenAIProvider is not in this build")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OpenAICompatible)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    _OpenAICompatible.requests = []
    try:
        args = ["--base-url", base, "--model", "local-model", "--session", "oa"]
        assert _chat(monkeypatch, "Hello\nAgain\n", *args) == 0
        out = capsys.readouterr().out
        assert "with local-model at http://127.0.0.1" in out
        assert "bot> server saw 1 messages, 1 from you" in out
        assert "bot> server saw 3 messages, 2 from you" in out
        assert _chat(monkeypatch, "Third\n", *args) == 0  # a new run sends the stored history
        assert "bot> server saw 5 messages, 3 from you" in capsys.readouterr().out
    finally:
        server.shutdown()
        server.server_close()
    assert [r["model"] for r in _OpenAICompatible.requests] == ["local-model"] * 3
    last = _OpenAICompatible.requests[-1]["messages"]
    assert [m["content"] for m in last] == [
        "Hello",
        "server saw 1 messages, 1 from you",
        "Again",
        "server saw 3 messages, 2 from you",
        "Third",
    ]


def _seed(url: str, count: int) -> None:
    """``count`` conversations c00.. (alternating users u0/u1), written one after the other."""
    import anyio

    from promptstate import Message, State
    from promptstate.stores.sqlite import SQLiteStore

    async def write() -> None:
        async with SQLiteStore(url.removeprefix("sqlite:///")) as store:
            for i in range(count):
                key = f"c{i:02d}"
                await store.set(key, State(conversation_id=key, user_id=f"u{i % 2}"))
                await store.append(key, [Message("user", "x")] * (i % 3 + 1))

    anyio.run(write)


def test_ls_pages_newest_first(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(store_url, 7)
    assert main(["ls", "--limit", "3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["ID", "USER", "MESSAGES", "TOKENS", "COST", "UPDATED"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["c06", "u0", "1"],
        ["c05", "u1", "3"],
        ["c04", "u0", "2"],
    ]
    cursor = captured.err.split("--cursor ")[1].split()[0]
    assert "3 conversations (newest first); next page: --cursor" in captured.err
    assert main(["ls", "--limit", "3", "--cursor", cursor]) == 0
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[1:]] == ["c03", "c02", "c01"]
    assert main(["ls", "--all", "--limit", "2"]) == 0
    captured = capsys.readouterr()
    ids = [line.split()[0] for line in captured.out.splitlines() if not line.startswith("ID")]
    assert ids == [f"c{i:02d}" for i in range(6, -1, -1)]
    assert captured.out.count("ID ") == 1, "one header for every page"
    assert captured.err.strip() == "7 conversations"
    assert main(["ls", "--user", "u1", "--all"]) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert ids == ["c05", "c03", "c01"]
    assert main(["ls", "c0", "--user", "u0", "--limit", "1"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["c06"]
    # Bad paging arguments: usage errors (2) or one line (1), never a traceback.
    for argv in (
        ["ls", "--limit", "0"],
        ["ls", "--limit", "5000"],
        ["ls", "--all", "--cursor", cursor],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    capsys.readouterr()
    assert main(["ls", "--cursor", "garbage"]) == 1
    assert "cursor" in capsys.readouterr().err
    assert main(["ls", "--cursor", cursor, "--user", "u1"]) == 1  # made for another query
    capsys.readouterr()


def test_meta_shows_sets_and_removes(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(store_url, 1)
    assert main(["meta", "c00"]) == 0
    assert json.loads(capsys.readouterr().out) == {}
    assert main(["meta", "c00", "title=Trip to Rome", "n=3", "pinned=true", 'tags=["a"]']) == 0
    assert json.loads(capsys.readouterr().out) == {
        "title": "Trip to Rome",
        "n": 3,
        "pinned": True,
        "tags": ["a"],
    }
    assert main(["meta", "c00", "-k", "n", "--remove", "tags", "zip=01234"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "title": "Trip to Rome",
        "pinned": True,
        "zip": "01234",
    }
    assert main(["ls"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["c00", "u0", "1"]
    # An unknown id is an error and creates nothing; bad assignments are usage errors.
    assert main(["meta", "nope", "a=1"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["ls"]) == 0
    assert "1 conversation" in capsys.readouterr().err
    for argv in (
        ["meta", "c00", "novalue"],
        ["meta", "c00", "=x"],
        ["meta", "c00", "promptstate=x"],
        ["meta", "c00", "a=1", "-k", "a"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    capsys.readouterr()

"""The ``promptstate`` command: a demo, a chat, and tools to inspect, back up and restore stores.

::

    promptstate demo                       # a conversation that remembers, then a load test
    promptstate chat [--session ID]        # talk to a model (or the mock) with stored history
    promptstate ls [PREFIX] [--user U]     # list conversations, newest first, a page at a time
    promptstate show ID                    # print one conversation
    promptstate meta ID [key=value ...] [-k KEY]   # show, set or remove metadata
    promptstate export [--prefix P] [-o FILE]
    promptstate import FILE [--overwrite] [--skip-errors]
    promptstate rm ID... | --prefix P
    promptstate bench                      # run the benchmarks of a source checkout

Every command takes ``--store URL`` (default: the ``PROMPTSTATE_URL`` environment variable,
else ``sqlite:///promptstate.db``, a file in the working directory). Errors are one line on
stderr and exit status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO

import anyio
import anyio.lowlevel

from promptstate.exceptions import (
    GuardrailError,
    NotFoundError,
    PromptStateError,
    ProviderError,
)
from promptstate.stores.base import Store
from promptstate.types import (
    AudioPart,
    FilePart,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    State,
    TextPart,
)

__all__ = ["DEFAULT_STORE_URL", "main"]

#: The store used when neither ``--store`` nor ``PROMPTSTATE_URL`` is given.
DEFAULT_STORE_URL = "sqlite:///promptstate.db"

_DEMO_SESSION = "demo:alice"
#: The metadata key under which conversations keep their settings (promptstate.sdk).
_SETTINGS_KEY = "promptstate"


class CommandError(Exception):
    """A failure to report as one line (exit status 1)."""


class UsageError(CommandError):
    """Arguments that do not go together: the subcommand's usage and the message, status 2."""


def _default_store() -> str:
    return os.environ.get("PROMPTSTATE_URL") or DEFAULT_STORE_URL


def _redacted(url: str) -> str:
    from promptstate.redaction import redact

    return str(redact(url))


@contextlib.asynccontextmanager
async def _opened(url: str, *, read_only: bool = False) -> AsyncIterator[Store]:
    """The store at ``url``, open. ``read_only``: refuse a database that is not there yet,
    rather than create one by looking (``ls``, ``show`` and ``export`` only read)."""
    from promptstate.stores.url import open_store

    store = open_store(url)
    if read_only:
        try:
            there = await store.exists()
        finally:
            await store.aclose()
        if not there:
            raise CommandError(
                f"the database {_redacted(url)} does not exist (no file or no promptstate "
                "tables there); nothing was created"
            )
        store = open_store(url)
    async with store:
        yield store


# -- ls, show, rm, export, import -------------------------------------------------------------


def _age(when: datetime) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


async def cmd_ls(args: argparse.Namespace, out: TextIO) -> int:
    if args.all and args.cursor is not None:
        raise UsageError("give --cursor or --all, not both")
    count = 0
    cursor = args.cursor
    async with _opened(args.store, read_only=True) as store:
        while True:
            page = await store.list_sessions(
                prefix=args.prefix, user_id=args.user, limit=args.limit, cursor=cursor
            )
            rows: list[tuple[str, ...]] = [
                (
                    info.conversation_id,
                    info.user_id or "-",
                    str(info.message_count),
                    str(info.token_count),
                    f"{info.total_cost:.4f}",
                    _age(info.updated_at),
                )
                for info in page.items
            ]
            if rows or count == 0:
                _table(out, rows, header=count == 0)
            count += len(rows)
            cursor = page.next_cursor
            if cursor is None or not args.all:
                break
    noun = f"{count} conversation{'s' if count != 1 else ''}"
    if cursor is None:
        print(noun, file=sys.stderr)
    else:
        print(f"{noun} (newest first); next page: --cursor {cursor}  (or --all)", file=sys.stderr)
    return 0


def _table(out: TextIO, rows: list[tuple[str, ...]], *, header: bool) -> None:
    head = ("ID", "USER", "MESSAGES", "TOKENS", "COST", "UPDATED")
    widths = [max([len(head[i]), *(len(r[i]) for r in rows)]) for i in range(len(head))]
    widths[0] = min(widths[0], 60)
    lines = [head, *rows] if header else rows
    for row in lines:
        out.write(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


async def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    from promptstate.serialization import encode_state

    async with _opened(args.store, read_only=True) as store:
        state = await store.get(args.id)
    if args.json:
        out.write(encode_state(state).decode() + "\n")
        return 0
    _print_state(out, state, last=args.last)
    return 0


def _print_state(out: TextIO, state: State, *, last: int | None) -> None:
    settings = state.metadata.get("promptstate")
    user_meta = {k: v for k, v in state.metadata.items() if k != "promptstate"}
    out.write(f"conversation  {state.conversation_id}\n")
    out.write(f"user          {state.user_id or '-'}\n")
    out.write(f"messages      {len(state.messages)}  ({state.token_count} tokens)\n")
    out.write(f"cost          ${state.total_cost:.6f}\n")
    out.write(f"created       {_age(state.created_at)}\n")
    out.write(f"updated       {_age(state.updated_at)}  (version {state.version})\n")
    if isinstance(settings, dict):
        if settings.get("pack"):
            out.write(f"prompt        {settings.get('pack')}/{settings.get('prompt')}\n")
        if settings.get("system"):
            out.write(f"system        {_one_line(str(settings['system']), 100)}\n")
    if user_meta:
        out.write(f"metadata      {json.dumps(user_meta, ensure_ascii=False, default=str)}\n")
    messages = state.messages if last is None else state.messages[-last:] if last else []
    if len(messages) < len(state.messages):
        out.write(f"... {len(state.messages) - len(messages)} older messages not shown\n")
    out.write("\n")
    for m in messages:
        who = m.role if m.name is None else f"{m.role} ({m.name})"
        out.write(f"[{_age(m.timestamp)}] {who}: {m.content}\n")
        for part in m.parts:
            out.write(f"    + {part_summary(part)}\n")
        for call in m.tool_calls:
            out.write(f"    -> {call.name}({call.arguments})\n")


def _size(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def part_summary(part: Part) -> str:
    """One line about a message part: its kind, media type and size (never its bytes)."""
    if isinstance(part, TextPart):
        return f"text {len(part.text)} chars: {_one_line(part.text, 60)}"
    if isinstance(part, ReasoningPart):
        bits = [f"reasoning {len(part.text)} chars"]
        if part.data is not None:
            bits.append(f"opaque {len(part.data)} chars")
        if part.signature is not None:
            bits.append("signed")
        if part.provider:
            bits.append(f"from {part.provider}")
        return ", ".join(bits)
    if isinstance(part, AudioPart):
        line = f"audio {part.media_type} {_size(len(part.data))}"
        if part.transcript:
            line += f": {_one_line(part.transcript, 60)}"
        return line
    kind = "image" if isinstance(part, ImagePart) else "file"
    media = part.media_type or "-"
    if part.data is not None:
        where = _size(len(part.data))
    else:
        where = f"url {_one_line(part.url or '', 80)}"
    line = f"{kind} {media} {where}"
    if isinstance(part, FilePart) and part.name:
        line += f" ({part.name})"
    return line


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _meta_value(text: str) -> Any:
    """``key=value`` values: JSON when they parse as JSON (3, true, null, "x", [1]), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


async def cmd_meta(args: argparse.Namespace, out: TextIO) -> int:
    updates: dict[str, Any] = {}
    for item in args.assignments:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"expected key=value, got {item!r}")
        updates[name] = _meta_value(value)
    remove = list(dict.fromkeys(args.remove))
    reserved = [k for k in [*updates, *remove] if k == _SETTINGS_KEY]
    if reserved:
        raise UsageError(
            f"{_SETTINGS_KEY!r} holds the conversation's settings; it is not changed here"
        )
    both = [k for k in remove if k in updates]
    if both:
        raise UsageError(f"both set and removed: {', '.join(both)}")
    async with _opened(args.store, read_only=True) as store:
        metadata = await store.get_metadata(args.id)  # NotFoundError: nothing is created
        if updates or remove:
            metadata = await store.merge_metadata(args.id, updates, remove=remove)
    shown = {k: v for k, v in metadata.items() if k != _SETTINGS_KEY}
    out.write(json.dumps(shown, indent=2, ensure_ascii=False, default=str) + "\n")
    return 0


async def cmd_rm(args: argparse.Namespace, out: TextIO) -> int:
    if args.prefix is None and not args.ids:
        raise UsageError("rm needs conversation ids or --prefix PREFIX")
    if args.prefix is not None and args.ids:
        raise UsageError("give conversation ids or --prefix, not both")
    if args.prefix == "":
        raise UsageError("refusing to delete everything: --prefix must not be empty")
    async with _opened(args.store) as store:
        if args.prefix is not None:
            deleted = await store.delete_by_prefix(args.prefix)
            out.write(f"deleted {deleted} conversation{'s' if deleted != 1 else ''}\n")
            return 0
        missing = []
        for key in args.ids:
            if await store.delete(key):
                out.write(f"deleted {key}\n")
            else:
                missing.append(key)
    if missing:
        raise CommandError(f"no conversation with id {', '.join(map(repr, missing))}")
    return 0


async def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from promptstate.backup import export_states

    count = 0
    target: IO[bytes]
    with contextlib.ExitStack() as stack:
        if args.output in (None, "-"):
            target = sys.stdout.buffer
        else:
            target = stack.enter_context(_open_file(args.output, "wb"))
        async with _opened(args.store, read_only=True) as store:
            async for line in export_states(store, args.prefix):
                target.write(line)
                count += 1
        target.flush()
    where = "" if args.output in (None, "-") else f" to {args.output}"
    print(f"exported {count} conversation{'s' if count != 1 else ''}{where}", file=sys.stderr)
    return 0


def _open_file(path: str, mode: str) -> IO[bytes]:
    try:
        return open(path, mode)
    except OSError as exc:
        raise CommandError(f"cannot open {path}: {exc.strerror}") from exc


async def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    from promptstate.backup import import_states

    with contextlib.ExitStack() as stack:
        source: IO[bytes] = (
            sys.stdin.buffer
            if args.file == "-"
            else stack.enter_context(_open_file(args.file, "rb"))
        )
        async with _opened(args.store) as store:
            result = await import_states(
                store,
                source,
                overwrite=args.overwrite,
                on_error="skip" if args.skip_errors else "raise",
            )
    out.write(
        f"imported {result.imported}, skipped {result.skipped} (already there"
        f"{'' if args.overwrite else '; --overwrite replaces them'}), failed {result.failed}\n"
    )
    for issue in result.errors:
        print(f"line {issue.line}: {issue.message}", file=sys.stderr)
    return 0


# -- bench ------------------------------------------------------------------------------------


def cmd_bench_sync(args: argparse.Namespace) -> int:
    here = Path.cwd()
    package = here / "benchmarks"
    if not (package / "__init__.py").is_file():
        raise CommandError(
            "the benchmarks live in a source checkout: run `promptstate bench` in the "
            "promptstate repository (git clone, then `pip install -e .`), or "
            "`python -m benchmarks` there"
        )
    if (package / "__main__.py").is_file():
        command = [sys.executable, "-m", "benchmarks", *args.args]
    else:
        found = sorted(p.stem for p in package.glob("bench_*.py"))
        if not found:
            raise CommandError(f"no bench_*.py in {package}")
        print("running " + ", ".join(found), file=sys.stderr)
        for name in found:
            code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *args.args])
            if code:
                return code
        return 0
    return subprocess.call(command)


# -- demo ------------------------------------------------------------------------------------

_NAME = re.compile(r"\b(?i:I'm|I am|my name is|call me)\s+([A-Z][\w-]*)")


def demo_reply(messages: list[Message]) -> str:
    """The demo's mock model: it answers only from what the stored history shows it."""
    users = [m for m in messages if m.role == "user"]
    turn = len(users)
    name = None
    told_at = None
    for i, m in enumerate(users, 1):
        found = _NAME.search(m.content)
        if found:
            name, told_at = found.group(1), i
    last = users[-1].content if users else ""
    if "back" in last.lower():
        before = f' Last time you said: "{users[-2].content}"' if turn > 1 else ""
        who = name or "stranger"
        return f"Welcome back, {who} — this is our turn {turn}.{before}"
    if "name" in last.lower() and "?" in last:
        if name is None:
            return f"You haven't told me your name yet. This is our turn {turn}."
        return f"You are {name}: you told me at turn {told_at}. This is our turn {turn}."
    if name is not None and told_at == turn:
        return f"Nice to meet you, {name}! This is our turn {turn}."
    return f"Noted ({len(last)} characters). This is our turn {turn}."


def load_reply(messages: list[Message]) -> str:
    """The load test's mock model: a short answer that depends on the history's length."""
    return f"ok, {len(messages)} messages so far"


class Progress:
    """A progress bar on stderr, in plain text."""

    def __init__(self, total: int, label: str, stream: TextIO) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream
        self.done = 0
        self.tty = stream.isatty()
        self._shown = -1.0
        self._step = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            now = time.monotonic()
            if now - self._shown >= 0.1 or self.done >= self.total:
                self._shown = now
                self._draw()
        else:
            step = self.done * 4 // self.total  # every 25 % when not a terminal
            if step > self._step or self.done >= self.total:
                self._step = step
                self._draw()
                self.stream.write("\n")

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        percent = 100 * self.done // self.total
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} ({percent}%)")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from promptstate.providers.mock import MockProvider
    from promptstate.sdk import ConversationConfig, ConversationManager

    url = args.store
    async with _opened(url) as store:
        manager = ConversationManager(MockProvider(demo_reply), store)
        async with manager:
            out.write(f"== 1. A conversation that remembers   (store: {_redacted(url)})\n\n")
            try:
                conv = await manager.get_conversation(_DEMO_SESSION)
            except NotFoundError:
                conv = await manager.new_conversation(
                    None,
                    ConversationConfig(
                        conversation_id=_DEMO_SESSION,
                        user_id="alice",
                        system_prompt="You are the promptstate demo assistant.",
                    ),
                )
                lines = ["Hi, I'm Alice.", "What's my name?"]
            else:
                state = await conv.state()
                out.write(
                    f"   (found {len(state.messages)} messages of {_DEMO_SESSION!r} stored by "
                    f"an earlier run, {state.token_count} tokens)\n\n"
                )
                lines = ["I'm back!", "What's my name?"]
            for line in lines:
                out.write(f"   you> {line}\n")
                response = await conv.send(line)
                out.write(f"   bot> {response.content}\n")
            state = await conv.state()
            out.write(
                f"\n   stored: {len(state.messages)} messages, {state.token_count} tokens, "
                f"version {state.version}\n"
            )
            if url.startswith("memory:"):
                out.write(
                    "   (memory:// forgets everything when the process ends: run the demo on\n"
                    "   the default SQLite file, or on redis:// or postgresql://, to see it "
                    "remember.)\n\n"
                )
            else:
                out.write(
                    "   Run `promptstate demo` again: the mock model only sees what the store "
                    "gives it,\n   and the conversation continues where it left off.\n\n"
                )
            out.flush()
            if args.sessions > 0 and args.turns > 0:
                await _demo_load(args, store, out)
    return 0


async def _demo_load(args: argparse.Namespace, store: Store, out: TextIO) -> None:
    from promptstate.providers.mock import MockProvider
    from promptstate.sdk import ConversationConfig, ConversationManager
    from promptstate.serialization import encode_state

    sessions, turns = args.sessions, args.turns
    concurrency = args.concurrency or sessions
    run = uuid.uuid4().hex[:8]
    prefix = f"demo:load:{run}:"
    out.write(
        f"== 2. {sessions} concurrent sessions x {turns} turns "
        f"(at most {concurrency} at once, mock model)\n\n"
    )
    out.flush()
    latencies: list[float] = []
    tokens_in = tokens_out = 0
    progress = Progress(sessions * turns, "   turns", sys.stderr)
    limiter = anyio.Semaphore(concurrency)
    manager = ConversationManager(MockProvider(load_reply), store, max_tokens=args.max_tokens)

    async def session(i: int) -> None:
        nonlocal tokens_in, tokens_out
        async with limiter:
            conv = await manager.new_conversation(
                None, ConversationConfig(conversation_id=f"{prefix}{i:05d}", user_id=f"user{i}")
            )
            for t in range(turns):
                # A turn on memory:// with the mock never suspends: yield, so that Ctrl-C
                # (and every other session) gets its turn.
                await anyio.lowlevel.checkpoint()
                started = time.perf_counter()
                response = await conv.send(f"message {t} of session {i}: what do you remember?")
                latencies.append(time.perf_counter() - started)
                tokens_in += response.usage.input_tokens
                tokens_out += response.usage.output_tokens
                progress.advance()

    started = time.perf_counter()
    try:
        async with manager, anyio.create_task_group() as tg:
            for i in range(sessions):
                tg.start_soon(session, i)
        wall = time.perf_counter() - started
        progress.finish()
        stored_bytes = stored_messages = stored_sessions = 0
        async for state in store.list_by_prefix(prefix):
            stored_sessions += 1
            stored_messages += len(state.messages)
            stored_bytes += len(encode_state(state))
    finally:
        if not args.keep:
            with anyio.CancelScope(shield=True):
                await store.delete_by_prefix(prefix)
    latencies.sort()
    total = len(latencies)
    rows = [
        ("sessions x turns", f"{sessions} x {turns} = {total} turns"),
        ("wall time", f"{wall:.2f} s"),
        ("turns/s", f"{total / wall:,.0f}" if wall > 0 else "-"),
        ("latency p50", f"{_percentile(latencies, 0.50) * 1000:.1f} ms"),
        ("latency p99", f"{_percentile(latencies, 0.99) * 1000:.1f} ms"),
        ("tokens in / out", f"{tokens_in:,} / {tokens_out:,}"),
        ("stored", f"{stored_sessions} sessions, {stored_messages:,} messages"),
        ("stored bytes", f"{stored_bytes:,} (as JSON)"),
    ]
    width = max(len(k) for k, _ in rows)
    out.write("\n")
    for key, value in rows:
        out.write(f"   {key.ljust(width)}   {value}\n")
    if args.keep:
        out.write(f"\n   kept under prefix {prefix!r} (promptstate ls {prefix})\n")
    else:
        out.write("\n   (the load-test sessions were deleted; --keep keeps them)\n")


# -- chat ------------------------------------------------------------------------------------


def _chat_provider(args: argparse.Namespace) -> tuple[Any, str]:
    """The model: OpenAI-compatible when ``--base-url``, ``OPENAI_BASE_URL`` or
    ``OPENAI_API_KEY`` says where or how to reach one (as ``examples/_provider.py`` decides),
    else the mock. The description names the URL the provider really calls."""
    if args.base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"):
        from promptstate.providers.openai import OpenAIProvider

        model = args.model or os.environ.get("OPENAI_MODEL") or "gpt-4o-mini"
        provider = OpenAIProvider(model, base_url=args.base_url)
        return provider, f"{model} at {_redacted(provider.base_url)}"
    from promptstate.providers.mock import MockProvider

    return (
        MockProvider(demo_reply),
        "the mock model (set OPENAI_BASE_URL, OPENAI_API_KEY or --base-url for a real one)",
    )


async def cmd_chat(args: argparse.Namespace, out: TextIO) -> int:
    from promptstate.sdk import ConversationConfig, ConversationManager

    provider, described = _chat_provider(args)
    try:
        async with _opened(args.store) as store:
            manager = ConversationManager(provider, store, max_tokens=args.max_tokens)
            async with manager:
                created = False
                try:
                    conv = await manager.get_conversation(args.session)
                    state = await conv.state()
                    note = f"continuing, {len(state.messages)} messages stored"
                except NotFoundError:
                    conv = await manager.new_conversation(
                        None,
                        ConversationConfig(
                            conversation_id=args.session, system_prompt=args.system or None
                        ),
                    )
                    created = True
                    note = "new conversation"
                try:
                    await _chat_loop(conv, described, note, out)
                finally:
                    if created:
                        # A conversation whose every turn failed leaves nothing behind.
                        with anyio.CancelScope(shield=True):
                            if not await conv.history(last=1):
                                await conv.delete()
    finally:
        await provider.aclose()
    return 0


async def _chat_loop(conv: Any, described: str, note: str, out: TextIO) -> None:
    out.write(
        f"chat {conv.id!r} ({note}) with {described}. /history shows it, /quit or Ctrl-D ends.\n"
    )
    out.flush()
    while True:
        out.write("you> ")
        out.flush()
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            out.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/history":
            for m in await conv.history():
                out.write(f"   {m.role}: {m.content}\n")
            continue
        out.write("bot> ")
        try:
            async for chunk in conv.stream(text):
                if chunk.text and not chunk.done:
                    out.write(chunk.text)
                    out.flush()
        except (ProviderError, GuardrailError) as exc:
            # The turn stored nothing: say what failed and let the user try again.
            out.write(f"\n   (the turn failed, nothing was stored: {exc}; try again)\n")
            out.flush()
            continue
        out.write("\n")


# -- argument parsing and error handling ------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _page_size(text: str) -> int:
    from promptstate.stores.base import MAX_PAGE_SIZE

    value = _positive(text)
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PAGE_SIZE}: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``promptstate`` argument parser."""
    from promptstate import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="URL",
        default=_default_store(),
        help="store URL: sqlite:///file.db, redis://host:6379/0, postgresql://..., memory:// "
        "(default: $PROMPTSTATE_URL, else %(default)s)"
        if not os.environ.get("PROMPTSTATE_URL")
        else "store URL (default: $PROMPTSTATE_URL)",
    )
    parser = argparse.ArgumentParser(
        prog="promptstate",
        description="Conversation state for LLM applications: demo, chat, inspect, back up.",
    )
    parser.add_argument("--version", action="version", version=f"promptstate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="a conversation that remembers across runs, then many concurrent sessions",
    )
    p.add_argument("--sessions", type=_positive, default=200, help="sessions (default 200)")
    p.add_argument("--turns", type=_positive, default=5, help="turns per session (default 5)")
    p.add_argument(
        "--concurrency", type=_positive, default=0, help="sessions at once (default: all)"
    )
    p.add_argument(
        "--max-tokens", type=_positive, default=None, help="prompt budget per turn (tokens)"
    )
    p.add_argument("--keep", action="store_true", help="keep the load-test sessions")

    p = sub.add_parser("chat", parents=[common], help="chat with a model, history stored")
    p.add_argument("--session", default="chat:default", help="conversation id")
    p.add_argument("--model", default=None, help="model name (OpenAI-compatible servers)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server URL")
    p.add_argument("--system", default=None, help="system prompt of a new conversation")
    p.add_argument("--max-tokens", type=_positive, default=None, help="prompt budget (tokens)")

    p = sub.add_parser("ls", parents=[common], help="list conversations, newest first")
    p.add_argument("prefix", nargs="?", default="", help="only ids starting with this")
    p.add_argument("--user", default=None, help="only this user's")
    p.add_argument(
        "--limit", type=_page_size, default=50, help="conversations per page (default 50)"
    )
    p.add_argument("--cursor", default=None, help="the next page, as the last page said")
    p.add_argument("--all", action="store_true", help="every page, one after the other")

    p = sub.add_parser(
        "meta",
        parents=[common],
        help="show, set or remove a conversation's metadata",
        description="Values are JSON when they parse as JSON (3, true, null, [1, 2], "
        '"quoted"), else text: title="Trip to Rome" sets a string. Prints the metadata.',
    )
    p.add_argument("id")
    p.add_argument("assignments", nargs="*", metavar="key=value")
    p.add_argument("-k", "--remove", action="append", default=[], metavar="KEY", help="remove KEY")

    p = sub.add_parser("show", parents=[common], help="print one conversation")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="the state as JSON (the wire format)")
    p.add_argument("--last", type=_positive, default=None, help="only the newest N messages")

    p = sub.add_parser("export", parents=[common], help="write conversations as JSON Lines")
    p.add_argument("--prefix", default="", help="only ids starting with this")
    p.add_argument("-o", "--output", default=None, help="file (default: standard output)")

    p = sub.add_parser("import", parents=[common], help="read conversations from JSON Lines")
    p.add_argument("file", help="a file written by export ('-' for standard input)")
    p.add_argument("--overwrite", action="store_true", help="replace conversations that exist")
    p.add_argument("--skip-errors", action="store_true", help="skip bad lines instead of stopping")

    p = sub.add_parser("rm", parents=[common], help="delete conversations")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--prefix", default=None, help="delete every id starting with this")

    p = sub.add_parser(
        "bench",
        help="run the benchmarks of a source checkout",
        usage="promptstate bench [ARGS...]   (e.g. --quick, --tiny, --only turns; see -- --help)",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to python -m benchmarks")
    for name, command in sub.choices.items():
        command.set_defaults(usage_error=command.error, command=name)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], Any]] = {
    "demo": cmd_demo,
    "chat": cmd_chat,
    "ls": cmd_ls,
    "show": cmd_show,
    "meta": cmd_meta,
    "export": cmd_export,
    "import": cmd_import,
    "rm": cmd_rm,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        # Everything after "bench" is the benchmarks' own: "--tiny" and "-- --tiny" alike.
        passed = [*extra, *args.args]
        args.args = passed[1:] if passed[:1] == ["--"] else passed
    elif args.command == "meta" and extra and not any(e.startswith("-") for e in extra):
        # key=value pairs after a -k option: argparse leaves them over.
        args.assignments = [*args.assignments, *extra]
    elif extra:
        args.usage_error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "bench":
            return cmd_bench_sync(args)
        command = _COMMANDS[args.command]
        result: int = anyio.run(_interruptible, command, args, sys.stdout)
        return result
    except UsageError as exc:
        args.usage_error(str(exc))  # prints the subcommand's usage; exits 2
        raise  # pragma: no cover - usage_error never returns
    except KeyboardInterrupt:
        print("promptstate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit-time flush
        return 0
    except Exception as exc:
        reported = _reportable(exc)
        if reported is None:
            raise
        print(f"promptstate: error: {reported}", file=sys.stderr)
        return 1


async def _interruptible(
    command: Callable[[argparse.Namespace, TextIO], Any], args: argparse.Namespace, out: TextIO
) -> int:
    """Run ``command``; the first Ctrl-C cancels it (its cleanup runs), then exit 130.

    asyncio's own SIGINT handler cancels only the main task and raises KeyboardInterrupt
    once it ends; the demo's load test never noticed (its turns did not suspend outside
    shielded steps) and ran all its turns first. Here the signal cancels the whole command.
    """
    try:
        return await _watched(command, args, out)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        # The task group wraps what the command raised: report that, not the group.
        inner = getattr(exc, "exceptions", None)
        if isinstance(inner, tuple) and len(inner) == 1:
            raise inner[0] from None
        raise


async def _watched(
    command: Callable[[argparse.Namespace, TextIO], Any], args: argparse.Namespace, out: TextIO
) -> int:
    interrupted = False
    result = 0
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupted = True
                    print("\npromptstate: interrupted, cleaning up", file=sys.stderr, flush=True)
                    group.cancel_scope.cancel()
                    return

        if threading.current_thread() is threading.main_thread():
            group.start_soon(watch)
        result = await command(args, out)
        group.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    return result


def _reportable(exc: BaseException) -> BaseException | None:
    """The error to report in one line, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, (PromptStateError, CommandError, ImportError, OSError)):
        return exc
    inner = getattr(exc, "exceptions", None)  # an exception group from a task group
    if isinstance(inner, tuple):
        for item in inner:
            found = _reportable(item)
            if found is not None:
                return found
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

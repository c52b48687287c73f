"""The work every contender does, and the small interface the runner drives them through.

A *turn* is what a chat server does per request: read what the model will see (the newest
``WINDOW`` messages where the library can read a window, else the whole history), then append
a user and an assistant message. What was read stays alive until the append returns, as in a
turn that sends it to a model: every contender keeps it in a local variable. (A turn that
dropped it at once would let CPython reuse the freed objects and run its cycle collector far
less often than any real turn can; ``docs/benchmarks.md`` gives the numbers.)

Every contender (a promptstate store, the pipeline, a raw client doing the minimal commands,
a peer library) is a :class:`Contender`: the runner
populates sessions through :meth:`Contender.populate`, times :meth:`Contender.turn`, and calls
:meth:`Contender.aclose` at the end, on success or failure.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from promptstate import ExecutionContext, Message
from promptstate.stages import LoadState

#: How many of the newest messages a turn reads (what the model sees).
WINDOW = 50

#: About 200 characters: a short chat message.
TEXT = "The quick brown fox jumps over the lazy dog while the model thinks it over. " * 3

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"

_T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def postgres_dsn() -> str:
    return os.environ.get("POSTGRES_DSN") or DEFAULT_POSTGRES_DSN


def user_text(i: int) -> str:
    return f"question {i}: {TEXT}"


def assistant_text(i: int) -> str:
    return f"answer {i}: {TEXT}"


def history_messages(n: int) -> list[Message]:
    """``n`` alternating user/assistant messages, as a conversation would have."""
    return [
        Message(
            "user" if i % 2 == 0 else "assistant",
            user_text(i) if i % 2 == 0 else assistant_text(i),
            timestamp=_T0 + timedelta(seconds=i),
        )
        for i in range(n)
    ]


def turn_messages(i: int) -> list[Message]:
    return [Message("user", user_text(i)), Message("assistant", assistant_text(i))]


@dataclass
class Env:
    """Where one run works: servers (``None`` when absent, with the reason) and unique names.

    Every contender gets its own Redis prefix (``psbench:<token>:<name>:``), its own
    PostgreSQL schema (``psbench_<token>_<name>``) or its own SQLite file, so nothing collides
    with other users of the shared servers and the run can remove exactly what it wrote.
    """

    tmpdir: str
    redis_url: str | None = None
    postgres_dsn: str | None = None
    redis_missing: str = ""
    postgres_missing: str = ""
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    _serial: int = 0

    def unique(self, what: str) -> str:
        self._serial += 1
        return f"{what}{self._serial}"

    def redis_prefix(self, what: str) -> str:
        return f"psbench:{self.token}:{self.unique(what)}:"

    def pg_schema(self, what: str) -> str:
        return f"psbench_{self.token}_{self.unique(what)}"

    def need_redis(self) -> str:
        if self.redis_url is None:
            raise Skip(self.redis_missing or "no Redis server")
        return self.redis_url

    def need_postgres(self) -> str:
        if self.postgres_dsn is None:
            raise Skip(self.postgres_missing or "no PostgreSQL server")
        return self.postgres_dsn


class Skip(Exception):
    """A contender cannot run here (server absent, package missing); the message says why."""


def session_ids(tag: str, n: int) -> list[str]:
    return [f"{tag}-s{j}" for j in range(n)]


class Contender:
    """One implementation under test. Subclasses set the class attributes and the methods.

    Attributes:
        name: The label in tables and plots (``"promptstate RedisStore"``).
        kind: ``"promptstate"``, ``"pipeline"``, ``"raw"`` or ``"peer"``.
        backend: ``"memory"``, ``"redis"``, ``"postgres"`` or ``"sqlite"``: contenders on the
            same backend are compared with each other.
        reads: What a turn reads: ``"window"`` (the newest ``WINDOW``) or ``"full"``.
    """

    name: str = "?"
    kind: str = "promptstate"
    backend: str = "memory"
    reads: str = "window"
    note: str = ""

    async def open(self) -> None:
        """Connect, create tables. Raise :class:`Skip` when this contender cannot run here."""

    async def populate(self, session_id: str, history: int) -> None:
        """Give ``session_id`` ``history`` messages (not timed)."""
        raise NotImplementedError

    async def turn(self, session_id: str, i: int) -> None:
        """One turn on ``session_id`` (timed)."""
        raise NotImplementedError

    async def settle(self) -> None:
        """After filling sessions: bring the server to a steady state (PostgreSQL: ANALYZE)."""
        schema = getattr(self, "schema", "")
        if self.backend == "postgres" and schema:
            from benchmarks import _servers

            await _servers.analyze_schema(self.need_dsn(), schema)

    def need_dsn(self) -> str:
        env = getattr(self, "env", None)
        if env is None or env.postgres_dsn is None:
            raise Skip("no PostgreSQL server")
        return str(env.postgres_dsn)

    async def reset(self) -> None:
        """Delete the sessions written so far (between history lengths, to bound memory)."""

    async def footprint(self) -> int | None:
        """Bytes the server holds for what this contender stored, or ``None`` if unknown."""
        return None

    async def aclose(self) -> None:
        """Close connections (the run's cleanup removes the data)."""


class WindowSpy(LoadState):
    """The default load stage, remembering how many messages it read last (class-wide)."""

    window: int | None = None

    async def load(self, ctx: ExecutionContext) -> list[Message]:
        history = await super().load(ctx)
        type(self).window = len(history)
        return history

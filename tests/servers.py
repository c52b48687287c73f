"""Real servers for the tests: the configured ones, or throwaway ones started here.

``REDIS_URL`` / ``POSTGRES_DSN`` name the servers to use (defaults: the machine's Redis on
127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432, database ``test``). When nothing answers there,
a throwaway server is started from the installed ``redis-server`` or ``initdb``/``pg_ctl`` on a
free loopback port. When that is impossible too, the test is skipped with the reason, except
under ``CI=true``, where a missing server fails the run.

:class:`RedisProcess` and :class:`PostgresProcess` are also what fault tests use to stop and
restart a server of their own; the shared servers are never stopped or reconfigured.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

# Re-exported for the tests that drop their own tables; the one copy lives in the name table.
from promptstate.testing._backends import drop_postgres_tables as drop_postgres_tables

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def missing(reason: str) -> NoReturn:
    """Skip, or fail under CI=true, because a server the test needs is not there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing server is a failure)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout} s")


# -- Redis ------------------------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class RedisProcess:
    """A throwaway ``redis-server`` on a loopback port, which a test may stop and restart."""

    def __init__(self, port: int | None = None, *extra_args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed, so no throwaway Redis can be started")
        self.binary = binary
        self.port = port or free_port()
        self.extra_args = extra_args
        self.dir = tempfile.mkdtemp(prefix="promptstate-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: redis_answers(self.url), f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    try:
        import redis  # noqa: F401
    except ImportError:
        missing("redis-py is not installed: pip install 'promptstate[redis]'")
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if redis_answers(url):
        yield url
        return
    with RedisProcess() as server:
        yield server.url


# -- PostgreSQL -------------------------------------------------------------------------------


def postgres_answers(dsn: str) -> bool:
    try:
        import asyncpg
    except ImportError:
        return False

    async def check() -> bool:
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    def run() -> bool:
        try:
            return asyncio.run(check())
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    # In a thread of its own, so that it works when an event loop is running here too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PostgresProcess:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a loopback port."""

    def __init__(self, port: int | None = None) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            missing("initdb/pg_ctl are not installed, so no throwaway PostgreSQL can be started")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="promptstate-pg-"))
        self.data = self.dir / "data"
        # initdb refuses to run as root: run the server as the postgres user then.
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *self.as_user,
                self.initdb,
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [
                *self.as_user,
                self.pg_ctl,
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.dir / "log"),
                "-w",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        _wait(lambda: postgres_answers(self.dsn), f"PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> PostgresProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing("asyncpg is not installed: pip install 'promptstate[postgres]'")
    dsn = os.environ.get("POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    if postgres_answers(dsn):
        yield dsn
        return
    with PostgresProcess() as server:
        yield server.dsn

"""The command line reaches every store a program uses: store options ride in the URL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from promptstate import Message, PostgresStore, State, Store
from promptstate.stores.redis import RedisStore
from tests.servers import drop_postgres_tables

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.anyio


def _promptstate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMPTSTATE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "promptstate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
async def written(
    request: pytest.FixtureRequest, redis_url: str, postgres_dsn: str
) -> AsyncIterator[tuple[str, str]]:
    """A conversation written by a program through a store with non-default options, and the
    URL that names that store."""
    tag = uuid.uuid4().hex[:10]
    table = f"cliurl_{tag}"
    store: Store
    if request.param == "redis":
        prefix = f"cliurl{tag}:"
        store = RedisStore.from_url(redis_url, prefix=prefix)
        url = f"{redis_url}?prefix={prefix}"
    else:
        store = PostgresStore.from_dsn(postgres_dsn, table_name=table)
        url = f"{postgres_dsn}?table_name={table}"
    async with store:
        await store.set(
            "chat-1",
            State(
                conversation_id="chat-1",
                messages=[Message(role="user", content="hello from the app")],
            ),
        )
        try:
            yield url, tag
        finally:
            await store.delete_by_prefix("")
    if request.param == "postgres":
        await drop_postgres_tables(postgres_dsn, table)


@pytest.mark.parametrize("written", ["redis", "postgres"], indirect=True)
async def test_ls_and_show_see_a_store_with_its_options_in_the_url(
    written: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = written
    listed = _promptstate("ls", "--store", url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "chat-1" in listed.stdout
    shown = _promptstate("show", "chat-1", "--store", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "hello from the app" in shown.stdout


def test_a_bad_option_in_the_url_is_a_one_line_usage_of_the_store(tmp_path: Path) -> None:
    done = _promptstate("ls", "--store", "memory://?ttl=never", cwd=tmp_path)
    assert done.returncode != 0
    assert "ttl='never'" in done.stderr
    assert "Traceback" not in done.stderr

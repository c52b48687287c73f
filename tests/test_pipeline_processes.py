"""Turns on one session from two processes sharing a store never interleave.

Each worker process runs turns on the same session through its own Pipeline and store
object. The model's answer records how many messages it was sent, so the test can tell that
every turn saw every turn stored before it (which only holds when turns are serialized across
processes, by the store's lease).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import anyio
import pytest

from promptstate import open_store
from tests.pipeline_support import server_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TURNS = 15

WORKER = textwrap.dedent(
    """
    import random, sys
    import anyio
    from promptstate import MockProvider, Pipeline, open_store

    async def main(url, session, worker, turns):
        async def answer(messages):
            await anyio.sleep(random.random() * 0.005)
            return f"a:{messages[-1].content}:{len(messages)}"

        async with open_store(url) as store:
            async with Pipeline(MockProvider(answer), store=store, lock_timeout=60) as pipe:
                for i in range(turns):
                    await pipe.execute(session, "user", f"w{worker}-{i}")

    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    """
)


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind: str = request.param
    url = server_for(kind, request)
    return url if url is not None else f"sqlite:///{tmp_path / 'shared.db'}"


async def test_two_processes_never_interleave_turns(shared_url: str) -> None:
    url = shared_url
    session = f"ps-xproc-{uuid.uuid4().hex}"
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def worker(n: int) -> None:
        command = [sys.executable, "-c", WORKER, url, session, str(n), str(TURNS)]
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        results.append(await anyio.run_process(command, cwd=ROOT, env=env, check=False))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for n in range(2):
                tg.start_soon(worker, n)
    for result in results:
        assert result.returncode == 0, result.stderr.decode()
    async with open_store(url) as store:
        try:
            messages = await store.load(session)
        finally:
            await store.delete(session)
    assert len(messages) == 4 * TURNS
    for k in range(0, len(messages), 2):
        user, answer = messages[k], messages[k + 1]
        assert user.role == "user"
        assert answer.role == "assistant"
        # The answer names its question and how many messages the model was sent: all k
        # stored before this turn plus the new one. Interleaved turns would have seen fewer.
        assert answer.content == f"a:{user.content}:{k + 1}", (k, answer.content)
    seen = {m.content for m in messages[::2]}
    assert seen == {f"w{n}-{i}" for n in range(2) for i in range(TURNS)}

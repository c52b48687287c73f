"""The README's commands, run the way a newcomer pastes them, in a fresh copy of the project.

The copy gets its own ``.venv`` exactly as the quickstart makes it; pip reads the package
index (or its cache), as it does for a newcomer. The only change to what is pasted: a Redis
URL gets this run's own key prefix (``?prefix=``), so the shared server is left as it was,
and the benchmark command runs with ``--tiny`` instead of ``--quick`` (its time is measured
and published in the README instead: minutes are too long for every test run).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

pytestmark = pytest.mark.slow


def _bash_blocks(heading: str) -> list[str]:
    """The command lines of the ```bash blocks under ``## heading`` (comments stripped)."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command:
                lines.append(command)
    return lines


def _paste(command: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.pop("PROMPTSTATE_URL", None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p
    )
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What a fresh clone holds: the tracked files (and new ones not yet committed)."""
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    target = tmp_path_factory.mktemp("fresh") / "promptstate"
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    yield target
    shutil.rmtree(target, ignore_errors=True)


@pytest.mark.timeout(600)
def test_quickstart_as_pasted_remembers_and_reaches_redis(checkout: Path, redis_url: str) -> None:
    quickstart = _bash_blocks("Quickstart")
    assert quickstart[1] == "bash scripts/test"  # the suite itself: what runs this test
    demo = quickstart[0]
    assert demo.startswith("python3 -m venv .venv && ")

    first = _paste(demo, checkout, timeout=400)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "Nice to meet you, Alice! This is our turn 1." in first.stdout
    assert "turns/s" in first.stdout
    second = _paste(demo, checkout, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Welcome back, Alice — this is our turn 3." in second.stdout

    # "promptstate demo --store redis://..." right below the quickstart works with what the
    # quickstart installed (it did not: the core has no Redis client).
    shown = ".venv/bin/promptstate demo --store redis://localhost:6379/0"
    assert f"`{shown}`" in README
    prefix = f"readme-{uuid.uuid4().hex[:10]}:"
    url = f"{redis_url}?prefix={prefix}"
    try:
        on_redis = _paste(
            shown.replace("redis://localhost:6379/0", f"'{url}'") + " --sessions 5 --turns 2",
            checkout,
            timeout=300,
        )
        assert on_redis.returncode == 0, on_redis.stderr[-2000:]
        assert "Nice to meet you, Alice!" in on_redis.stdout
    finally:
        asyncio.run(_forget(redis_url, prefix))


async def _forget(redis_url: str, prefix: str) -> None:
    from promptstate.stores.redis import RedisStore

    async with RedisStore.from_url(redis_url, prefix=prefix) as store:
        await store.delete_by_prefix("")


@pytest.mark.timeout(600)
def test_benchmark_commands_as_pasted(checkout: Path) -> None:
    commands = _bash_blocks("Benchmarks")
    assert len(commands) == 3
    *installs, run = commands
    if not (checkout / ".venv").exists():
        made = _paste("python3 -m venv .venv", checkout, timeout=120)
        assert made.returncode == 0, made.stderr
    for command in installs:
        done = _paste(command, checkout, timeout=400)
        assert done.returncode == 0, command + "\n" + done.stderr[-2000:]
    assert run.endswith(" --quick")
    tiny = _paste(run.replace(" --quick", " --tiny --no-progress"), checkout, timeout=300)
    assert tiny.returncode == 0, tiny.stderr[-2000:]
    assert "turns/s" in tiny.stdout

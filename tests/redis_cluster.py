"""A throwaway three-node Redis Cluster for the tests, started from ``redis-server``.

Three primaries (no replicas) on free loopback ports, each with ``--cluster-enabled yes``,
joined with ``redis-cli --cluster create``. Started once per test session by the
``redis_cluster_url`` fixture and torn down at its end. Without ``redis-server`` or
``redis-cli`` the tests that need it are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.servers import missing

__all__ = ["RedisClusterProcess", "redis_cluster_url"]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_ports(count: int) -> list[int]:
    """``count`` ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port > 55535 or port in ports:
            continue
        if _port_free(port + 10000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("found no free ports for a Redis Cluster")


def _cli(*args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(
        ["redis-cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.stdout + done.stderr


class RedisClusterProcess:
    """Three ``redis-server --cluster-enabled yes`` processes joined into one cluster."""

    def __init__(self, nodes: int = 3) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            missing("redis-server/redis-cli are not installed, so no Redis Cluster can be started")
        self.binary = binary
        self.ports = _cluster_ports(nodes)
        self.dir = tempfile.mkdtemp(prefix="promptstate-redis-cluster-")
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        for port in self.ports:
            self.procs.append(
                subprocess.Popen(
                    [
                        str(self.binary),
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"{self.dir}/nodes-{port}.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        self.dir,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self._wait(lambda: all(self._ping(p) for p in self.ports), "cluster nodes")
        out = _cli(
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            timeout=30,
        )
        if "[OK] All 16384 slots covered" not in out:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out}")
        self._wait(
            lambda: all(
                "cluster_state:ok" in _cli("-p", str(p), "cluster", "info") for p in self.ports
            ),
            "cluster_state:ok",
        )

    @staticmethod
    def _ping(port: int) -> bool:
        return "PONG" in _cli("-p", str(port), "ping", timeout=2)

    @staticmethod
    def _wait(check: object, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not come up within {timeout} s")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_shared: RedisClusterProcess | None = None
_users = 0


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """The ``redis+cluster://`` URL of a three-node cluster started once for the test session.

    Test modules import this fixture; pytest then holds one session-scoped fixture per
    importing module, so the cluster itself is shared through a module-level reference count
    and stopped when the last of them is torn down.
    """
    global _shared, _users
    try:
        import redis  # noqa: F401
    except ImportError:
        missing("redis-py is not installed: pip install 'promptstate[redis]'")
    if _shared is None:
        _shared = RedisClusterProcess().__enter__()
    cluster = _shared
    _users += 1
    try:
        yield cluster.url
    finally:
        _users -= 1
        if _users == 0:
            cluster.stop()
            _shared = None

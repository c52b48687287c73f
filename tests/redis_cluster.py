"""Throwaway Redis Clusters for the tests, started from ``redis-server``.

Three primaries on free loopback ports, each with ``--cluster-enabled yes``, joined with
``redis-cli --cluster create``; with ``replicas=1``, one replica per primary too (six
processes), for the failover and ``wait_replicas`` tests. The three-primary cluster is started
once per test session by the ``redis_cluster_url`` fixture and torn down at its end. Without
``redis-server`` or ``redis-cli`` the tests that need one are skipped, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

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
    """``redis-server --cluster-enabled yes`` processes joined into one cluster: three
    primaries, and ``replicas`` replicas of each.

    ``node_timeout`` is ``cluster-node-timeout`` in milliseconds: how long a node may be
    unreachable before the others count it as failed (and its replica takes over).
    """

    def __init__(self, nodes: int = 3, *, replicas: int = 0, node_timeout: int = 1000) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            missing("redis-server/redis-cli are not installed, so no Redis Cluster can be started")
        self.binary = binary
        self.primaries = nodes
        self.replicas = replicas
        self.node_timeout = node_timeout
        self.ports = _cluster_ports(nodes * (1 + replicas))
        self.dir = tempfile.mkdtemp(prefix="promptstate-redis-cluster-")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.first_primaries: list[int] = []

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming a node that is running."""
        live = self.alive() if self.procs else self.ports
        return f"redis+cluster://127.0.0.1:{live[0]}"

    def cli(self, port: int, *args: str) -> str:
        """``redis-cli -p port args...``: its output."""
        return _cli("-p", str(port), *args)

    def start(self) -> None:
        for port in self.ports:
            self._spawn(port)
        self._wait(
            lambda: self._respawn_lost_ports() and all(self._ping(p) for p in self.ports),
            "cluster nodes",
        )
        out = _cli(
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas",
            str(self.replicas),
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
        if self.replicas:
            # Every replica is known as one and has finished its first sync.
            def synced() -> bool:
                replicas = self.replica_ports()
                return len(replicas) == self.primaries * self.replicas and all(
                    self._replica_online(p) for p in replicas
                )

            self._wait(synced, "replicas in sync")
        self.first_primaries = [p for p, role, _ in self.nodes() if role == "master"]

    def _spawn(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
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
                str(self.node_timeout),
                "--save",
                "",
                "--appendonly",
                "no",
                # A replica's first sync starts at once, not after the default 5 s wait for
                # other replicas to share it.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def nodes(self) -> list[tuple[int, str, bool]]:
        """``(port, role, healthy)`` of every node, as the first live node sees it; ``role`` is
        ``"master"`` or ``"slave"``, and a node that is down keeps its last role."""
        out = _cli("-p", str(self.alive()[0]), "cluster", "nodes")
        found: list[tuple[int, str, bool]] = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            flags = parts[2].split(",")
            role = "master" if "master" in flags else "slave"
            healthy = parts[7] == "connected" and not {"fail", "fail?"} & set(flags)
            found.append((port, role, healthy))
        return found

    def replica_ports(self) -> list[int]:
        return [p for p, role, _ in self.nodes() if role == "slave"]

    def primary_of(self, key: bytes) -> int:
        """The port of the primary that serves ``key``, as the cluster sees it now."""
        via = str(self.alive()[0])
        slot = int(_cli("-p", via, "cluster", "keyslot", key.decode()).strip())
        for line in _cli("-p", via, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) < 9 or "master" not in parts[2].split(","):
                continue
            for part in parts[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise RuntimeError(f"no primary serves slot {slot}")

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def kill(self, port: int) -> None:
        """SIGKILL one node: no goodbye to its peers or its clients, as in a crash."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again, with its cluster state file: it rejoins the cluster
        (a primary whose replica took over comes back as that replica's replica)."""
        self._spawn(port)
        self._wait(lambda: self._ping(port), f"redis-server on port {port}")

    def wait_for_replica(self, port: int, timeout: float = 30.0) -> None:
        """Wait until the node on ``port`` is a replica that has synced with its primary."""
        self._wait(lambda: self._replica_online(port), f"replica on port {port} in sync", timeout)

    @staticmethod
    def _replica_online(port: int) -> bool:
        """The replica on ``port`` has synced, and its primary counts it as online (only then
        does the primary's ``WAIT`` ask it for acknowledgements)."""
        info = _cli("-p", str(port), "info", "replication")
        if "master_link_status:up" not in info:
            return False
        primary = info.split("master_port:", 1)[1].split()[0]
        return f"port={port},state=online" in _cli("-p", primary, "info", "replication")

    def wait_for_failover(self, dead: int, timeout: float = 30.0) -> int:
        """Wait until the cluster has counted the killed primary on port ``dead`` as failed,
        one of its replicas has taken its slots, and every live node says ``ok`` again;
        return the promoted replica's port."""

        def done() -> bool:
            nodes = self.nodes()
            if any(p == dead and healthy for p, _, healthy in nodes):
                return False  # not counted as failed yet: the cluster still says ok
            masters = [p for p, role, healthy in nodes if role == "master" and healthy]
            return len(masters) == self.primaries and all(
                "cluster_state:ok" in _cli("-p", str(p), "cluster", "info") for p in self.alive()
            )

        self._wait(done, f"failover of the primary on port {dead}", timeout)
        masters = {p for p, role, healthy in self.nodes() if role == "master" and healthy}
        (promoted,) = masters - set(self.first_primaries)
        return promoted

    def _respawn_lost_ports(self) -> bool:
        """Before the cluster is created: a node that exited lost its port (or its bus port)
        to another process between the check and the bind (the ports come from the
        ephemeral range, which every client socket on the machine draws from too): start it
        again on other free ports. Always True, to chain in a wait."""
        for i, port in enumerate(self.ports):
            proc = self.procs[port]
            if proc.poll() is None:
                continue
            del self.procs[port]
            fresh = next(p for p in _cluster_ports(len(self.ports) + 1) if p not in self.ports)
            self.ports[i] = fresh
            self._spawn(fresh)
        return True

    @staticmethod
    def _ping(port: int) -> bool:
        try:
            return "PONG" in _cli("-p", str(port), "ping", timeout=2)
        except subprocess.TimeoutExpired:  # something else holds the port and does not answer
            return False

    @staticmethod
    def _wait(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not come up within {timeout} s")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}
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

    tests/conftest.py imports this fixture, so every test can ask for it. A module that
    imports it too gets a session-scoped fixture of its own; the cluster itself is shared
    through a module-level reference count and stopped when the last of them is torn down.
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

"""RedisStore over TLS with a password, against a throwaway ``redis-server --tls-port``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("redis")

from promptstate import Message, StoreAuthError, StoreUnavailableError, open_store
from promptstate.stores.redis import RedisStore
from tests.servers import free_port, missing

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.usefixtures("sweep_orphaned_sockets"),
]

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[int, Path]]:
    """A TLS-only redis-server with a password: its port and its CA certificate."""
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if server is None or openssl is None:
        missing("redis-server and openssl are needed for the TLS test")
    workdir = Path(tempfile.mkdtemp(prefix="promptstate-redis-tls-"))
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            str(openssl),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            str(server),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (workdir / "log").read_text() if (workdir / "log").exists() else ""
                missing(f"redis-server without TLS support? it exited: {log[-300:]}")
            probe = subprocess.run(
                [
                    "redis-cli",
                    "--tls",
                    "--cacert",
                    str(cert),
                    "-p",
                    str(port),
                    "-a",
                    PASSWORD,
                    "--no-auth-warning",
                    "ping",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if "PONG" in probe.stdout:
                break
            time.sleep(0.05)
        yield port, cert
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_rediss_url_with_password(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    async with RedisStore.from_url(url, prefix="tls:", ttl=60) as store:
        assert await store.append("t", [Message("user", "over TLS")]) == 1
        assert [m.content for m in await store.load("t")] == ["over TLS"]
        assert await store.delete("t")
    async with open_store(url, prefix="tls:") as opened:
        assert await opened.load("t") == []


async def test_another_database_over_tls(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/1?ssl_ca_certs={ca}"
    async with RedisStore.from_url(url, prefix="tls-db1:") as db1:
        await db1.append("x", [Message("user", "db 1")])
        assert await db1.delete_by_prefix("") == 1


async def test_wrong_password_is_store_auth_error_and_not_echoed(
    tls_server: tuple[int, Path],
) -> None:
    # It was a StoreUnavailableError, so retry loops retried a password that cannot work.
    port, ca = tls_server
    store = RedisStore.from_url(f"rediss://:not-it-42@127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    with pytest.raises(StoreAuthError) as info:
        await store.load("x")
    assert "not-it-42" not in str(info.value)
    assert info.value.__cause__ is not None
    await store.aclose()


async def test_plain_connection_to_a_tls_port_fails_cleanly(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    store = RedisStore.from_url(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", socket_timeout=1)
    with pytest.raises(StoreUnavailableError):
        await store.load("x")
    await store.aclose()

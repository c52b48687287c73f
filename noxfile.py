"""nox sessions: tests, lint, typecheck, docs, bench, redis_py. `nox -l` lists them."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]


def _install(session: nox.Session, *args: str) -> None:
    """``pip install`` into the session's virtualenv, with a pip that knows ``--group``
    (25.1 or newer; a new virtualenv may come with an older one)."""
    session.install("--upgrade", "pip>=25.1")
    session.install(*args)


@nox.session
def tests(session: nox.Session) -> None:
    _install(session, "-e", ".[all]", "--group", "test")
    session.run("pytest", *session.posargs)


#: The Redis tests, for ``redis_py``: the store, its own connections, faults, Cluster, replicas,
#: TLS, and every store test of the conformance suite and the pipeline that runs on Redis.
REDIS_TESTS = [
    "tests/stores/test_redis.py",
    "tests/stores/test_redis_connections.py",
    "tests/stores/test_redis_faults.py",
    "tests/stores/test_redis_cluster.py",
    "tests/stores/test_redis_cluster_safety.py",
    "tests/stores/test_redis_replicas.py",
    "tests/stores/test_redis_tls.py",
    "tests/stores/test_conformance.py",
    "tests/stores/test_cached.py",
    "tests/test_locks.py",
    "tests/test_pipeline_safety.py",
    "tests/test_pipeline_lease_fastpath.py",
]


@nox.session
@nox.parametrize("redis_py", ["5.0.1", "6.4.0", "7.4.1", "8.1.0"])
def redis_py(session: nox.Session, redis_py: str) -> None:
    """The Redis tests on an older redis-py than CI's (the extra allows >= 5.0.1):
    ``nox -s redis_py``, or one version: ``nox -s "redis_py(redis_py='5.0.1')"``."""
    _install(session, "-e", ".[redis,postgres]", "--group", "test", f"redis[hiredis]=={redis_py}")
    session.run("pytest", "-k", "redis", *REDIS_TESTS, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _install(session, "--group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "-e", ".[all]", "--group", "lint", "--group", "test")
    session.run("mypy", "--strict", "promptstate")


@nox.session
def docs(session: nox.Session) -> None:
    _install(session, "-e", ".[all]", "--group", "docs")
    session.run("mkdocs", "build", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """All benchmarks with their peers: ``nox -s bench -- --quick`` (any runner options)."""
    _install(session, "-e", ".[all]", "--group", "bench", "--group", "plots")
    session.run("python", "-m", "benchmarks", *session.posargs)

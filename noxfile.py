"""nox sessions: tests, lint, typecheck, docs, bench. `nox -l` lists them."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[all]", "--group", "test")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("--group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[all]", "--group", "lint", "--group", "test")
    session.run("mypy", "--strict", "promptstate")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[all]", "--group", "docs")
    session.run("mkdocs", "build", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """All benchmarks with their peers: ``nox -s bench -- --quick`` (any runner options)."""
    session.install("-e", ".[all]", "--group", "bench", "--group", "plots")
    session.run("python", "-m", "benchmarks", *session.posargs)

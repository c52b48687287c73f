"""Fixtures for the framework adapter tests: one store per backend.

The ``store`` fixture is the shared one (tests/conftest.py); this narrows its backends.
"""

from __future__ import annotations

import pytest

from tests.backends import params


@pytest.fixture(params=params("memory", "sqlite", "redis", "postgres"))
def backend(request: pytest.FixtureRequest) -> str:
    """The adapters run on these backends (an empty store of each, removed afterwards)."""
    return str(request.param)

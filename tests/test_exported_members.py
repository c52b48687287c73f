"""The public names: sorted, importable, and exactly what is documented."""

from __future__ import annotations

import promptstate


def test_all_is_sorted() -> None:
    assert promptstate.__all__ == sorted(promptstate.__all__)


def test_all_is_importable() -> None:
    for name in promptstate.__all__:
        assert getattr(promptstate, name) is not None, name


def test_no_duplicates() -> None:
    assert len(set(promptstate.__all__)) == len(promptstate.__all__)

from __future__ import annotations

import pytest

from promptstate import MemoryStore, ValidationError, open_store


def test_memory_url() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    assert open_store("memory://", ttl=5).ttl == 5.0
    assert repr(open_store("memory://?max_sessions=3")) == "MemoryStore(ttl=None, max_sessions=3)"


@pytest.mark.parametrize("url", ["", "memory", "nothing-here", "/tmp/x.db", 42, None])
def test_not_a_url(url: object) -> None:
    with pytest.raises(ValidationError, match="scheme://"):
        open_store(url)  # type: ignore[arg-type]


def test_unknown_scheme_lists_known_ones_and_hides_password() -> None:
    with pytest.raises(ValidationError) as info:
        open_store("mongodb://admin:s3cret@db.example:27017/x")
    message = str(info.value)
    assert "mongodb://" in message
    assert "memory://" in message
    assert "s3cret" not in message


def test_bad_query_option() -> None:
    with pytest.raises(ValidationError, match="max_sessions"):
        open_store("memory://?max_sessions=lots")

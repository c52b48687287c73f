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


@pytest.mark.parametrize(
    ("opener", "target"),
    [
        ("open_store", "sqlite://u:hunter2@host/x.db"),  # a host: refused, the URL echoed
        ("open_store", "sqlite:///x.db?password=hunter2"),
        ("open_store", "redis:/:hunter2@127.0.0.1/0"),  # one slash: not parsed as a URL
        ("redis", "redis:/:hunter2@127.0.0.1/0"),
        ("redis", "redis://127.0.0.1:notaport/0?password=hunter2"),
        ("postgres", "host=db user=app password=hunter2"),  # libpq's keyword form
        ("postgres", "postgresql:/app:hunter2@db/chat"),
        ("open_store", "memory://?max_sessions=x&password=hunter2"),
    ],
)
def test_a_password_in_a_malformed_url_never_reaches_the_message(opener: str, target: str) -> None:
    # These echoed the URL with its password: the redaction only knew a well-formed
    # "scheme://user:password@host".
    if opener == "redis":
        from promptstate.stores.redis import RedisStore

        open_it: object = RedisStore.from_url
    elif opener == "postgres":
        from promptstate import PostgresStore

        open_it = PostgresStore.from_dsn
    else:
        open_it = open_store
    with pytest.raises(ValidationError) as info:
        open_it(target)  # type: ignore[operator]
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


def test_unknown_scheme_does_not_list_the_rejected_sqlalchemy_forms() -> None:
    with pytest.raises(ValidationError) as info:
        open_store("nosuch://x")
    assert "postgresql://" in str(info.value)
    assert "+asyncpg" not in str(info.value)

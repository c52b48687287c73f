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


# -- store options in the URL (one table for every backend) ----------------------------------


def _constructor_parameters(scheme: str) -> set[str]:
    import inspect

    from promptstate import PostgresStore, SQLiteStore
    from promptstate.stores.redis import RedisStore

    target = {
        "memory": MemoryStore,
        "sqlite": SQLiteStore,
        "redis": RedisStore.from_url,
        "postgresql": PostgresStore.from_dsn,
    }[scheme]
    return set(inspect.signature(target).parameters)


@pytest.mark.parametrize("scheme", ["memory", "sqlite", "redis", "postgresql"])
def test_every_url_option_is_a_constructor_argument(scheme: str) -> None:
    from promptstate.stores.url import COMMON_OPTIONS, SCHEMES

    options = {*COMMON_OPTIONS, *SCHEMES[scheme].options}
    assert options <= _constructor_parameters(scheme)


def test_options_reach_every_backend() -> None:
    from promptstate import PostgresStore, SQLiteStore

    memory = open_store("memory://?ttl=5&max_sessions=3&touch_on_read=true")
    assert repr(memory) == "MemoryStore(ttl=5.0, max_sessions=3)"
    assert memory._touch_on_read is True
    sqlite = open_store("sqlite:///some/dir/x.db?ttl=2.5&busy_timeout=1&synchronous=full")
    assert isinstance(sqlite, SQLiteStore)
    assert sqlite.ttl == 2.5
    assert sqlite._busy_timeout == 1.0
    postgres = open_store(
        "postgresql://u:pw@127.0.0.1:1/db?table_name=app.chats&ttl=60&sslmode=disable"
    )
    assert isinstance(postgres, PostgresStore)
    assert (postgres.table_name, postgres.ttl) == ("app.chats", 60.0)
    # Not a store option: left in the DSN for asyncpg.
    assert "sslmode=disable" in repr(postgres)
    assert "dsn='postgresql://u:***@127.0.0.1:1/db?sslmode=disable'" in repr(postgres)


def test_a_keyword_wins_over_the_url() -> None:
    assert open_store("memory://?ttl=5", ttl=7).ttl == 7.0
    store = open_store("memory://?max_sessions=3", max_sessions=4)
    assert repr(store) == "MemoryStore(ttl=None, max_sessions=4)"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("memory://?ttl=0", "ttl='0'.*positive"),
        ("memory://?ttl=soon", "ttl='soon'"),
        ("memory://?ttl=inf", "positive"),
        ("memory://?touch_on_read=maybe", "true or false"),
        ("memory://?max_sessions=0", "at least 1"),
        ("memory://?ttl=5&ttl=6", "given twice"),
        ("memory://?prefix=x", "unknown option 'prefix'.*max_sessions"),
        ("memory://somehost", "no host"),
        ("memory://?ttl=5#frag", "fragment"),
        ("sqlite:///x.db?table_name=t", "unknown option 'table_name'"),
        ("sqlite:///x.db?max_readers=-1", "at least 1"),
        ("redis://127.0.0.1:1/0?pool_timeout=-1", "positive"),
        ("redis://127.0.0.1:1/0?cluster=2", "true or false"),
        ("postgresql://127.0.0.1:1/db?max_size=none", "max_size"),
        ("postgresql://127.0.0.1:1/db?pgbouncer=perhaps", "true or false"),
    ],
)
def test_bad_url_options_are_validation_errors_at_construction(url: str, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        open_store(url)


def test_sqlalchemy_form_says_what_to_write() -> None:
    with pytest.raises(ValidationError, match="write 'postgresql://u:\\*\\*\\*@h/db' instead"):
        open_store("postgresql+asyncpg://u:secret@h/db")


def test_store_options_given_to_from_dsn_say_where_they_go() -> None:
    from promptstate import PostgresStore

    # asyncpg sent "table_name" to the server as a setting: the first call failed.
    with pytest.raises(ValidationError, match=r"store option.*pass table_name=") as info:
        PostgresStore.from_dsn("postgresql://u:hunter2@127.0.0.1:1/db?table_name=t")
    assert "hunter2" not in str(info.value)


# -- the scheme table is the one source ---------------------------------------------------------


def _redis_schemes() -> set[str]:
    from promptstate.stores.url import SCHEMES

    return {name for name, row in SCHEMES.items() if row.options is SCHEMES["redis"].options}


def test_redis_from_url_takes_exactly_the_redis_rows_of_the_scheme_table() -> None:
    # RedisStore.from_url keeps its own list (stores/redis.py cannot import url.py, which
    # imports it); this keeps the two from drifting apart.
    from promptstate.stores import redis
    from promptstate.stores.url import SCHEMES

    assert set(redis._SCHEMES) == _redis_schemes()
    assert {"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"} <= set(SCHEMES)


def test_an_unknown_scheme_lists_every_known_one_with_what_it_opens() -> None:
    from promptstate import open_store
    from promptstate.stores.url import SCHEMES

    with pytest.raises(ValidationError, match="unknown store URL scheme 'nope://'") as info:
        open_store("nope://x")
    told = str(info.value)
    for name, row in SCHEMES.items():
        assert f"{name}://" in told
        assert f"({row.summary})" in told


def test_the_docs_options_table_is_the_scheme_table() -> None:
    import re
    from pathlib import Path

    from promptstate.stores.url import COMMON_OPTIONS, SCHEMES

    page = (Path(__file__).resolve().parents[2] / "docs" / "stores.md").read_text("utf-8")
    section = page.split("## `open_store(url)` and the options a URL carries", 1)[1]
    rows = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("| `")]
    documented: dict[str, set[str]] = {}
    for row in rows:
        names, schemes = row.split("|")[1:3]
        if schemes.strip() == "all":
            taken = set(SCHEMES)
        elif schemes.strip() == "the Redis schemes":
            taken = _redis_schemes()
        else:
            taken = set(re.findall(r"`([^`]+)`", schemes))
        for name in re.findall(r"`([^`]+)`", names):
            assert name not in documented, f"{name} is documented twice"
            documented[name] = taken
    actual = {name: set(SCHEMES) for name in COMMON_OPTIONS}
    for scheme, row in SCHEMES.items():
        for name in row.options:
            actual.setdefault(name, set()).add(scheme)
    assert documented == actual

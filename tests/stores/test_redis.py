"""RedisStore on a single Redis: the conformance suite plus layout, TTL, index and errors."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from functools import partial

import anyio
import anyio.lowlevel
import pytest

pytest.importorskip("redis")

from redis.asyncio import Redis
from redis.crc import key_slot

from promptstate import (
    ClosedError,
    CorruptStateError,
    Message,
    NotFoundError,
    State,
    StoreUnavailableError,
    ValidationError,
    open_store,
)
from promptstate.stores import _redis_scripts as scripts
from promptstate.stores.redis import RedisStore, _redis_py_version
from promptstate.testing import StoreFactory
from promptstate.testing._backends import StoreMaker

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def _prefix() -> str:
    return f"pstest:{uuid.uuid4().hex}:"


async def _wipe(url: str, prefix: str) -> None:
    client = Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def make(stores: StoreMaker, redis_url: str) -> StoreFactory:
    """Stores on the shared Redis, each under its own prefix (or ``prefix=``), wiped afterwards."""
    return partial(stores.open, "redis")


async def _session_keys(raw: Redis, prefix: str) -> list[bytes]:
    """The session keys (not the index) under ``prefix``."""
    keys = [k async for k in raw.scan_iter(match=prefix + "*", count=1000)]
    return [k for k in keys if not k.startswith(prefix.encode() + b"{%idx")]


# -- layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["plain", "a{b}c", "{x}", "}{", "%7B", "100%", "ü{ß}"])
async def test_session_keys_share_one_slot(make: StoreFactory, raw: Redis, session_id: str) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    await store.append(session_id, [Message("user", "hi")])
    keys = await _session_keys(raw, store.prefix)
    assert len(keys) == 2
    assert len({key_slot(k) for k in keys}) == 1
    assert (await store.get(session_id)).conversation_id == session_id


async def test_braces_do_not_make_two_sessions_collide(make: StoreFactory) -> None:
    store = await make()
    ids = ["{a}", "%7Ba%7D", "a", "{a", "a}", "%7Ba}"]
    for i, sid in enumerate(ids):
        await store.append(sid, [Message("user", str(i))])
    for i, sid in enumerate(ids):
        assert [m.content for m in await store.load(sid)] == [str(i)]
    assert sorted([k async for k in store.list_keys("")]) == sorted(ids)


async def test_two_prefixes_never_see_each_other(make: StoreFactory) -> None:
    base = _prefix()
    one = await make(prefix=base)
    two = await make(prefix=base + "b:")  # one's prefix is a prefix of two's
    await one.append("b:x", [Message("user", "one")])
    await two.append("x", [Message("user", "two")])
    assert [k async for k in one.list_keys("")] == ["b:x"]
    assert [k async for k in two.list_keys("")] == ["x"]
    assert [m.content for m in await one.load("b:x")] == ["one"]
    assert await one.load("x") == []
    assert await two.delete_by_prefix("") == 1
    assert [k async for k in one.list_keys("")] == ["b:x"]


# -- TTL --------------------------------------------------------------------------------------


async def test_no_session_key_is_ever_left_without_a_ttl(make: StoreFactory, raw: Redis) -> None:
    store = await make(ttl=timedelta(minutes=5))
    prefix = store.prefix  # type: ignore[attr-defined]

    async def check() -> None:
        keys = await _session_keys(raw, prefix)
        assert keys
        for key in keys:
            ttl = await raw.pttl(key)
            assert 0 < ttl <= 300_000, (key, ttl)

    await store.append("s", [Message("user", "a")])
    await check()
    await store.save("s", [Message("user", "b"), Message("assistant", "c")])
    await check()
    await store.set("t", State(conversation_id="t", messages=[Message("user", "x")]))
    await check()
    await store.fork("s", "f")
    await check()
    await store.save("s", [])  # the list key is gone; the header still has a TTL
    await check()
    await store.append("s", [Message("user", "again")])
    await check()
    await store.set("t", State(conversation_id="t"), expected_version=1)
    await check()
    await store.append_turn("turn", [Message("user", "q")], cost=0.5, turn_id="id-1")
    await check()
    assert await store.acquire_lease("turn", "me", 10.0)  # type: ignore[attr-defined]
    await check()


async def test_ttl_is_milliseconds_and_slides_on_reads_when_asked(
    make: StoreFactory, raw: Redis
) -> None:
    store = await make(ttl=1.5, touch_on_read=True)
    await store.append("s", [Message("user", "a")])
    keys = await _session_keys(raw, store.prefix)  # type: ignore[attr-defined]
    for key in keys:
        await raw.pexpire(key, 200)
    await store.load("s", last=1)
    for key in keys:
        assert await raw.pttl(key) > 1000


async def test_expired_sessions_leave_the_index(make: StoreFactory, raw: Redis) -> None:
    store = await make(ttl=0.2)
    assert isinstance(store, RedisStore)
    for i in range(30):
        await store.append(f"old{i}", [Message("user", "x")])
    idx, exp = store._index_keys(0)
    assert await raw.zcard(idx) == 30
    await anyio.sleep(0.5)
    await store.append("new", [Message("user", "x")])  # a write prunes what has expired
    assert await raw.zrange(idx, 0, -1) == [b"new"]
    assert await raw.zrange(exp, 0, -1) == [b"new"]


async def test_listing_prunes_entries_of_deleted_sessions(make: StoreFactory, raw: Redis) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    await store.append("a", [Message("user", "x")])
    await store.append("b", [Message("user", "x")])
    await raw.unlink(*store._keys("a"))  # gone behind the store's back
    assert [k async for k in store.list_keys("")] == ["b"]
    assert await raw.zrange(store._index_keys(0)[0], 0, -1) == [b"b"]


# -- listing and deleting in batches ----------------------------------------------------------


async def test_listing_and_deleting_more_than_one_batch(make: StoreFactory, raw: Redis) -> None:
    store = await make()
    async with anyio.create_task_group() as tg:
        for i in range(450):
            tg.start_soon(store.append, f"k*{i:03d}", [Message("user", "x")])
    await store.append("other", [Message("user", "x")])
    keys = [k async for k in store.list_keys("k*")]
    assert sorted(keys) == [f"k*{i:03d}" for i in range(450)]
    assert await store.delete_by_prefix("k*") == 450
    assert [k async for k in store.list_keys("")] == ["other"]
    assert len(await _session_keys(raw, store.prefix)) == 2  # type: ignore[attr-defined]


async def test_get_many_is_one_round_trip(make: StoreFactory) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    for i in range(5):
        await store.append(f"g{i}", [Message("user", str(i))])
    calls = 0
    original = store._client.pipeline

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    store._client.pipeline = counting  # type: ignore[method-assign,assignment]
    found = await store.get_many([f"g{i}" for i in range(5)] + ["none"])
    assert calls == 1
    assert [s.messages[0].content if s else None for s in found] == ["0", "1", "2", "3", "4", None]


# -- errors -----------------------------------------------------------------------------------


async def test_corrupt_bytes_raise_corrupt_state_error_naming_the_key(
    make: StoreFactory, raw: Redis
) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    await store.append("bad", [Message("user", "fine")])
    h, m = store._keys("bad")
    await raw.rpush(m, b"\xc1not msgpack")
    with pytest.raises(CorruptStateError, match="'bad'"):
        await store.load("bad")
    with pytest.raises(CorruptStateError, match="'bad'"):
        await store.get("bad")
    await raw.hset(h, "v", "not a number")
    await raw.delete(m)
    with pytest.raises(CorruptStateError, match="'bad'"):
        await store.get("bad")


async def test_a_foreign_value_under_a_session_key_is_corrupt_state(
    make: StoreFactory, raw: Redis
) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    h, m = store._keys("alien")
    await raw.set(m, b"a string, not a list")
    with pytest.raises(CorruptStateError, match="'alien'"):
        await store.append("alien", [Message("user", "x")])
    assert await raw.get(m) == b"a string, not a list"  # nothing else was written
    assert not await raw.exists(h)


async def test_refused_connection_is_store_unavailable() -> None:
    from tests.servers import free_port

    store = RedisStore(address=f"127.0.0.1:{free_port()}", socket_connect_timeout=1)
    with anyio.fail_after(10):
        with pytest.raises(StoreUnavailableError) as info:
            await store.append("x", [Message("user", "x")])
        assert info.value.__cause__ is not None
        with pytest.raises(StoreUnavailableError):
            async with store:
                pass
    await store.aclose()


# -- construction -----------------------------------------------------------------------------


async def test_borrowed_client_is_not_closed(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    prefix = _prefix()
    async with RedisStore(client, prefix=prefix) as store:
        await store.append("x", [Message("user", "x")])
        assert store.client is client
    assert await client.exists(*RedisStore(client, prefix=prefix)._keys("x")) == 2
    await _wipe(redis_url, prefix)
    await client.aclose()


async def test_url_forms_and_keywords(redis_url: str) -> None:
    prefix = _prefix()
    store = open_store(redis_url, prefix=prefix, ttl=60)
    assert isinstance(store, RedisStore)
    assert store.ttl == 60
    async with store:
        await store.append("u", [Message("user", "x")])
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    async with RedisStore(address=host_port, prefix=prefix, max_connections=4) as kw:
        assert [m.content for m in await kw.load("u")] == ["x"]
        await kw.delete("u")


def test_bad_construction_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match=r"\*\*\*") as info:
        RedisStore.from_url("http://user:hunter2@host/0")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValidationError):
        RedisStore(Redis(decode_responses=True))
    with pytest.raises(ValidationError):
        RedisStore(Redis(), address="x:1")
    with pytest.raises(ValidationError):
        RedisStore(address="host:notaport")
    with pytest.raises(ValidationError):
        RedisStore(max_connections=0)
    with pytest.raises(ValidationError):
        RedisStore("redis://localhost")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:1/0?no_such_option=1",
        "redis+cluster://:hunter2@127.0.0.1:1?no_such_option=1",
        "redis://:hunter2@127.0.0.1:1/0?prefix=app:&no_such_option=1",
    ],
)
def test_unknown_url_query_options_are_refused_when_opening(url: str) -> None:
    # redis-py passes unknown query parameters on to its connection class: the store used to
    # open fine and then raise a bare TypeError from redis-py on every call.
    with pytest.raises(ValidationError, match="no_such_option") as info:
        open_store(url)
    assert "hunter2" not in str(info.value)


def test_store_options_in_the_url_reach_the_store() -> None:
    # "?prefix=app:" was refused ("unexpected keyword argument 'prefix'"), so the CLI could
    # not see a store with another prefix.
    store = open_store("redis://:pw@127.0.0.1:1/0?prefix=app:&ttl=60&max_connections=3")
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.ttl) == ("app:", 60.0)
    cluster = open_store("redis://127.0.0.1:1?cluster=yes&prefix=c:")
    assert isinstance(cluster, RedisStore)
    assert "cluster" in repr(cluster)
    socket = open_store("unix:///tmp/no-such-redis.sock?db=2&prefix=u:")
    assert isinstance(socket, RedisStore)
    assert socket.prefix == "u:"
    # A keyword wins over the URL.
    assert open_store("redis://127.0.0.1:1/0?prefix=a:", prefix="b:").prefix == "b:"  # type: ignore[attr-defined]


def test_store_options_given_to_from_url_say_where_they_go() -> None:
    with pytest.raises(ValidationError, match="store option: pass prefix=") as info:
        RedisStore.from_url("redis://:hunter2@127.0.0.1:1/0?prefix=app:")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("path", ["/x", "/0x", "/-1", "/1/2", "/%31a"])
def test_a_database_that_is_not_a_number_is_a_bad_url(path: str) -> None:
    # redis-py ignored it: "redis://host/x" silently used database 0 (or failed as an outage).
    for opener in (open_store, RedisStore.from_url):
        with pytest.raises(ValidationError, match="database in a Redis URL is a number"):
            opener(f"redis://:hunter2@127.0.0.1:1{path}")


def test_known_url_query_options_still_work() -> None:
    for url in (
        "rediss://:pw@127.0.0.1:1/0?ssl_cert_reqs=none",
        "unix:///tmp/no-such-redis.sock?db=2",
        "redis://127.0.0.1:1/3?health_check_interval=5&client_name=app",
    ):
        assert isinstance(RedisStore.from_url(url), RedisStore)


def test_repr_hides_the_password() -> None:
    store = RedisStore.from_url("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(store)


async def test_missing_session_after_delete(make: StoreFactory) -> None:
    store = await make()
    await store.append("d", [Message("user", "x")])
    assert await store.delete("d")
    assert not await store.delete("d")
    with pytest.raises(NotFoundError):
        await store.get("d")


def test_import_promptstate_without_redis_installed() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import promptstate\n"
        "try:\n"
        "    promptstate.RedisStore\n"
        "except ImportError as exc:\n"
        "    assert \"pip install 'promptstate[redis]'\" in str(exc), exc\n"
        "    print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd="."
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_tls_and_password_urls_build_the_right_client() -> None:
    store = RedisStore.from_url("rediss://:pa55@127.0.0.1:6380/2?ssl_cert_reqs=none")
    client = store.client
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["password"] == "pa55"
    assert pool.connection_kwargs["db"] == 2
    assert "pa55" not in repr(store)
    kw = RedisStore(address="127.0.0.1:6390", password="pw", db=3, ssl=True)
    kw_pool = kw.client.connection_pool  # type: ignore[union-attr]
    assert kw_pool.connection_class.__name__ == "SSLConnection"
    assert (kw_pool.connection_kwargs["password"], kw_pool.connection_kwargs["db"]) == ("pw", 3)


async def test_pool_exhaustion_is_store_unavailable(redis_url: str) -> None:
    # The client's pool serves the store's pipelined calls (get_many here); the store's own
    # connections, which serve its single commands, are tested in test_redis_connections.py.
    prefix = _prefix()
    store = RedisStore.from_url(redis_url, prefix=prefix, max_connections=1, pool_timeout=0.05)
    client = store.client
    assert isinstance(client, Redis)
    pool = client.connection_pool
    # redis-py < 5.3 requires a command name here; 5.3 and later deprecate passing one.
    held = await (
        pool.get_connection()  # type: ignore[no-untyped-call]
        if _redis_py_version() >= (5, 3)
        else pool.get_connection("PING")  # type: ignore[no-untyped-call]
    )
    try:
        with pytest.raises(StoreUnavailableError) as info:
            await store.get_many(["x"])
        assert info.value.__cause__ is not None
    finally:
        await client.connection_pool.release(held)
    assert await store.get_many(["x"]) == [None]
    await store.aclose()


async def test_batches_larger_than_one_lua_unpack(make: StoreFactory) -> None:
    store = await make()
    many = [Message("user", str(i)) for i in range(9_000)]
    assert await store.append("big", many) == 9_000
    await store.save("big", many[:8_500])
    assert len(await store.load("big")) == 8_500
    assert [m.content for m in await store.load("big", last=2)] == ["8498", "8499"]
    stored = await store.set("big2", State(conversation_id="big2", messages=many))
    assert len((await store.get("big2")).messages) == 9_000 == len(stored.messages)


async def test_append_turn_matches_only_its_own_turn_id(make: StoreFactory) -> None:
    store = await make()
    tricky = [Message("user", "my turn_id is turn-9", metadata={"note": "turn_id turn-9"})]
    assert await store.append_turn("s", tricky, turn_id="turn-8") == 1
    assert await store.append_turn("s", tricky, turn_id="turn-9") == 2  # not a retry
    assert await store.append_turn("s", tricky, turn_id="turn-9") == 2  # a retry
    state = await store.get("s")
    assert [m.metadata.get("turn_id") for m in state.messages] == ["turn-8", "turn-9"]
    assert state.version == 2


async def test_lease_lives_apart_from_the_state(make: StoreFactory, raw: Redis) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    assert await store.acquire_lease("s", "owner-1", 5.0)
    assert [k async for k in store.list_keys("")] == []
    assert await store.load("s") == []
    assert 0 < await raw.pttl(store._lease_key("s")) <= 5000
    assert await store.release_lease("s", "owner-1")


async def test_aclose_lets_calls_under_way_finish_and_leaves_no_connection(redis_url: str) -> None:
    prefix = f"ps-close-{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_url, prefix=prefix)
    results: list[int] = []

    async def add(i: int) -> None:
        results.append(await store.append(f"s{i}", [Message("user", str(i))]))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(add, i)
            await anyio.lowlevel.checkpoint()
            await store.aclose()
        assert results == [1, 1, 1]  # the calls under way finished, on a still-open client
        pool = store.client.connection_pool
        assert not any(c.is_connected for c in pool._available_connections)
        assert not pool._in_use_connections
        own = store._commands
        assert own is not None
        assert own.made == 3
        assert not any(c.is_connected for c in own._made)
        with pytest.raises(ClosedError):
            await store.append("s0", [Message("user", "late")])
    finally:
        async with RedisStore.from_url(redis_url, prefix=prefix) as check:
            await check.delete_by_prefix("")
            assert [k async for k in check.client.scan_iter(match=f"{prefix}*")] == []


# -- the session index ------------------------------------------------------------------------


async def _index_size(raw: Redis, store: RedisStore) -> int:
    """Entries in every index structure of the store (all shards, every user's sets)."""
    total = 0
    for shard in range(store._shards):
        base = store._index_base(shard)
        for suffix in (b"z", b"e", b"u", b"c"):
            total += await raw.zcard(base + suffix)
        total += await raw.hlen(base + b"w")
        async for key in raw.scan_iter(match=base + b"[UC]:*", count=1000):
            total += await raw.zcard(key)
    return total


async def test_the_session_index_does_not_grow_with_expired_sessions(
    make: StoreFactory, raw: Redis
) -> None:
    store = await make(ttl=1.0)
    assert isinstance(store, RedisStore)
    started = time.monotonic()
    for i in range(450):
        await store.set(f"old{i}", State(conversation_id=f"old{i}", user_id=f"u{i % 9}"))
        if i % 3 == 0:
            await store.merge_metadata(f"old{i}", {"title": str(i)})
    if time.monotonic() - started < 0.8:  # else some expired (and left) while writing
        # z, e, u, c, w, U:<user> and C:<user> for each session
        assert await _index_size(raw, store) == 450 * 7
    await anyio.sleep(1.5)
    for i in range(5):  # each write prunes a batch of what has expired, more while it is full
        await store.append("new", [Message("user", str(i))])
    assert [i.conversation_id for i in (await store.list_sessions()).items] == ["new"]
    assert (await store.list_sessions(user_id="u1")).items == []
    # z, e, u and c hold "new" (it has no user): nothing else is left.
    assert await _index_size(raw, store) == 4


async def test_the_session_index_follows_users_and_deletes(make: StoreFactory, raw: Redis) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    await store.set("a", State(conversation_id="a", user_id="alice"))
    await store.set("b", State(conversation_id="b", user_id="alice"))
    await store.set("a", State(conversation_id="a", user_id="bob"))  # a changes hands
    assert [i.conversation_id for i in (await store.list_sessions(user_id="alice")).items] == ["b"]
    assert [i.conversation_id for i in (await store.list_sessions(user_id="bob")).items] == ["a"]
    await store.set("a", State(conversation_id="a"))  # and loses its user
    assert (await store.list_sessions(user_id="bob")).items == []
    await store.fork("b", "c", at=0)
    assert sorted(
        i.conversation_id for i in (await store.list_sessions(user_id="alice")).items
    ) == ["b", "c"]
    await store.delete("b")
    assert await store.delete_by_prefix("") == 2
    assert await _index_size(raw, store) == 0


async def test_merge_metadata_copies_values_it_cannot_decode(make: StoreFactory) -> None:
    """The merge script walks the stored MessagePack without decoding values, so msgspec's
    timestamps (an extension type Redis's cmsgpack can't read) and bytes stay exactly."""
    store = await make()
    when = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    old = {"raw": b"\x00\xff" * 200, "when": when, "nested": {"t": [when, b"x"]}, "n": 1}
    await store.set("m", State(conversation_id="m", metadata=old))
    merged = await store.merge_metadata("m", {"n": 2, "at": when}, remove=["raw"])
    assert merged == {"when": when, "nested": {"t": [when, b"x"]}, "n": 2, "at": when}
    assert await store.get_metadata("m") == merged


async def _one_acquire_attempt(
    make: StoreFactory,
) -> tuple[RedisStore, Message, tuple[bytes, bytes, bytes, bytes]]:
    """A store whose session "s" holds one message, that message, and the keys one acquire
    attempt's scripts get: the lease, the two state keys and the attempt's fence."""
    store = await make()
    assert isinstance(store, RedisStore)
    first = Message("user", "a")
    await store.append("s", [first])
    h, m = store._keys("s")
    return store, first, (store._lease_key("s"), h, m, store._fence_key("s"))


async def test_an_acquire_that_reaches_redis_after_it_was_abandoned_takes_nothing(
    make: StoreFactory, raw: Redis
) -> None:
    # A cancelled acquire's script may still be on its way when the store settles the
    # attempt (redis-py drops the connection, not the bytes it sent). Played in that order:
    # the settling script first, then the late acquire scripts of the same attempt.
    store, first, (lease, h, m, fence) = await _one_acquire_attempt(make)
    await store._abandon("s", "owner-1", fence, 5.0)
    assert 0 < await raw.pttl(fence) <= 5000
    late = await store._eval(
        scripts.LEASE_ACQUIRE_LOAD, (lease, h, m, fence), ("owner-1", 5000, 1, 0)
    )
    assert late is None
    assert not await store._eval(scripts.LEASE_ACQUIRE, (lease, fence), ("owner-1", 5000))
    assert await raw.get(lease) is None
    # Nothing else is fenced off: another owner, and the same owner's next attempt, take it.
    assert await store.acquire_lease("s", "owner-2", 5.0)
    assert await store.release_lease("s", "owner-2")
    found = await store.acquire_and_load("s", "owner-1", 5.0, last=1)
    assert [m.content for m in found or []] == [first.content]
    assert await store.release_lease("s", "owner-1")


async def test_an_acquire_sent_again_after_its_reply_was_lost_takes_the_lease(
    make: StoreFactory, raw: Redis
) -> None:
    # redis-py sends a call again when the connection dropped before the reply (its default
    # Retry). The first run took the lease: the second must succeed, not wait for the lease
    # it holds to expire. Played in that order, with both scripts of the same attempt.
    store, _, (lease, h, m, fence) = await _one_acquire_attempt(make)
    assert await store._eval(scripts.LEASE_ACQUIRE, (lease, fence), ("owner-1", 5000)) == 1
    await raw.pexpire(lease, 1000)
    assert await store._eval(scripts.LEASE_ACQUIRE, (lease, fence), ("owner-1", 5000)) == 1
    assert 1000 < await raw.pttl(lease) <= 5000, "the second run did not set the TTL anew"
    again = await store._eval(
        scripts.LEASE_ACQUIRE_LOAD, (lease, h, m, fence), ("owner-1", 5000, 1, 0)
    )
    assert again == await raw.lrange(m, -1, -1)
    assert await raw.get(lease) == b"owner-1"
    # Another owner still finds it busy, and an abandoned attempt still takes nothing.
    assert not await store.acquire_lease("s", "owner-2", 5.0)
    assert await store.acquire_and_load("s", "owner-2", 5.0, last=1) is None
    await store._abandon("s", "owner-1", fence, 5.0)
    assert not await store._eval(scripts.LEASE_ACQUIRE, (lease, fence), ("owner-1", 5000))
    assert await raw.get(lease) is None


async def test_settling_an_acquire_that_took_the_lease_gives_it_back(
    make: StoreFactory, raw: Redis
) -> None:
    store = await make()
    assert isinstance(store, RedisStore)
    assert await store.acquire_lease("s", "owner-1", 5.0)
    await store._abandon("s", "owner-1", store._fence_key("s"), 5.0)
    assert await raw.get(store._lease_key("s")) is None
    # Another owner's lease is never given back by it.
    assert await store.acquire_lease("s", "owner-2", 5.0)
    await store._abandon("s", "owner-1", store._fence_key("s"), 5.0)
    assert await raw.get(store._lease_key("s")) == b"owner-2"

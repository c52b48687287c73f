"""EncryptedStore: the whole conformance suite on every backend, plus what sealing promises:
nothing readable in the inner store, tampering and wrong keys refused, rotation, concurrent
writers, and turns through Pipeline and ConversationManager."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import msgspec
import pytest

pytest.importorskip("cryptography")

from promptstate import (
    ConversationManager,
    DecryptionError,
    EncryptedStore,
    FilePart,
    ImagePart,
    MemoryStore,
    Message,
    MockProvider,
    Pipeline,
    ReasoningPart,
    State,
    TextPart,
    ToolCall,
    ValidationError,
)
from promptstate.stores.base import Store
from promptstate.stores.sqlite import SQLiteStore
from promptstate.testing import StoreFactory
from tests.backends import params

pytestmark = pytest.mark.anyio

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
SECRET = "the launch code is 0000"


@pytest.fixture(params=params("memory", "sqlite", "redis", "postgres"))
def backend(request: pytest.FixtureRequest) -> str:
    """The inner stores' backend (tests/backends.py), for every test of this module."""
    return str(request.param)


@pytest.fixture
def inner_factory(store_factory: StoreFactory) -> StoreFactory:
    """Inner stores of one backend, each on its own file, prefix or table, cleaned up."""
    return store_factory


def _sealed(inner_messages: list[Message]) -> None:
    for m in inner_messages:
        assert m.content.startswith("psenc1:")
        assert SECRET not in m.content
        assert m.tool_calls == ()
        assert m.name is None


async def test_nothing_readable_in_the_inner_store(inner_factory: StoreFactory) -> None:
    inner = await inner_factory()
    store = EncryptedStore(inner, keys={"k1": K1}, active="k1")
    call = ToolCall("c1", "search", '{"q": "' + SECRET + '"}')
    await store.set(
        "s",
        State(conversation_id="s", user_id="alice", metadata={"topic": SECRET, "n": 3}),
    )
    await store.append(
        "s",
        [
            Message("user", SECRET, name="alice", metadata={"note": SECRET}),
            Message("assistant", tool_calls=(call,)),
            Message("tool", SECRET, tool_call_id="c1"),
        ],
    )
    raw = await inner.get("s")
    _sealed(raw.messages)
    assert raw.user_id == "alice"  # readable: listing by user works
    assert [m.role for m in raw.messages] == ["user", "assistant", "tool"]
    assert raw.messages[2].tool_call_id == "c1"
    assert all(isinstance(v, str) and v.startswith("psenc1:k1:") for v in raw.metadata.values())
    assert SECRET not in msgspec.json.encode(raw).decode()
    opened = await store.get("s")
    assert opened.metadata == {"topic": SECRET, "n": 3}
    assert [m.content for m in opened.messages] == [SECRET, "", SECRET]
    assert opened.messages[0].name == "alice"
    assert opened.messages[0].metadata == {"note": SECRET}
    assert opened.messages[1].tool_calls == (call,)
    # Token counts are the plaintext's, not the ciphertext's.
    plain = MemoryStore()
    await plain.append("s", [Message("user", SECRET, name="alice", metadata={"note": SECRET})])
    assert raw.messages[0].tokens == (await plain.load("s"))[0].tokens
    await store.aclose()
    await inner.aclose()


async def test_parts_are_sealed_too(inner_factory: StoreFactory) -> None:
    inner = await inner_factory()
    store = EncryptedStore(inner, keys={"k1": K1}, active="k1")
    image = b"\x89PNG\r\n\x1a\n" + SECRET.encode() * 50
    message = Message(
        "user",
        "look",
        parts=(
            TextPart(SECRET),
            ImagePart(data=image, media_type="image/png"),
            FilePart(url="https://example.com/" + SECRET.replace(" ", "-")),
            ReasoningPart(text=SECRET, signature="sig-" + SECRET),
        ),
    )
    await store.append("s", [message])
    raw = await inner.get("s")
    _sealed(raw.messages)
    assert raw.messages[0].parts == ()
    dumped = msgspec.msgpack.encode(raw)
    assert SECRET.encode() not in dumped
    got = await store.load("s")
    assert got[0].parts == message.parts
    assert got[0].text == "look\n" + SECRET
    await store.aclose()
    await inner.aclose()


async def _flip(inner: Store, key: str, index: int) -> None:
    """Flip one byte of a sealed message's ciphertext, under the store."""
    messages = await inner.load(key)
    content = messages[index].content
    head, _, body = content.rpartition(":")
    raw = bytearray(__import__("base64").b64decode(body))
    raw[len(raw) // 2] ^= 0x01
    body = __import__("base64").b64encode(bytes(raw)).decode()
    messages[index] = msgspec.structs.replace(messages[index], content=f"{head}:{body}")
    await inner.save(key, messages)


async def test_tampering_under_the_store_is_refused(inner_factory: StoreFactory) -> None:
    inner = await inner_factory()
    store = EncryptedStore(inner, keys={"k1": K1}, active="k1")
    await store.append("s", [Message("user", "one"), Message("assistant", "two")])
    await _flip(inner, "s", 1)
    with pytest.raises(DecryptionError, match="failed authentication"):
        await store.load("s")
    with pytest.raises(DecryptionError):
        await store.get("s")
    assert [m.content for m in await store.load("s", last=0)] == []
    # A sealed message moved to another role fails too (the role is authenticated).
    await store.append("t", [Message("user", "hi")])
    moved = [msgspec.structs.replace(m, role="assistant") for m in await inner.load("t")]
    await inner.save("t", moved)
    with pytest.raises(DecryptionError):
        await store.load("t")
    # Plaintext written under the store is not returned as if it were sealed.
    await inner.append("u", [Message("user", "injected")])
    with pytest.raises(DecryptionError, match="not sealed"):
        await store.load("u")
    await store.aclose()
    await inner.aclose()


async def test_wrong_or_unknown_key(inner_factory: StoreFactory) -> None:
    inner = await inner_factory()
    await EncryptedStore(inner, keys={"k1": K1}, active="k1").append("s", [Message("user", "x")])
    wrong = EncryptedStore(inner, keys={"k1": K2}, active="k1")
    with pytest.raises(DecryptionError, match="failed authentication"):
        await wrong.load("s")
    unknown = EncryptedStore(inner, keys={"k2": K2}, active="k2")
    with pytest.raises(DecryptionError, match="key 'k1', which is not in keys"):
        await unknown.get("s")
    assert isinstance(DecryptionError("x"), __import__("promptstate").CorruptStateError)
    await inner.aclose()


async def test_rotation(inner_factory: StoreFactory) -> None:
    inner = await inner_factory()
    old = EncryptedStore(inner, keys={"k1": K1}, active="k1")
    for i in range(3):
        await old.set(f"r{i}", State(conversation_id=f"r{i}", metadata={"i": i}))
        await old.append(f"r{i}", [Message("user", f"q{i}"), Message("assistant", f"a{i}")])
    await old.set("other", State(conversation_id="other"))
    both = EncryptedStore(inner, keys={"k1": K1, "k2": K2}, active="k2")
    await both.append("r0", [Message("user", "new")])  # new writes use k2 at once
    assert [m.content for m in await both.load("r0")] == ["q0", "a0", "new"]
    assert await both.rotate("r") == 3
    assert await both.rotate("r") == 0  # nothing left to re-seal
    only_new = EncryptedStore(inner, keys={"k2": K2}, active="k2")
    for i in range(3):
        state = await only_new.get(f"r{i}")
        assert state.metadata == {"i": i}
        assert [m.content for m in state.messages][:2] == [f"q{i}", f"a{i}"]
        raw = await inner.get(f"r{i}")
        assert all(m.content.startswith("psenc1:k2:") for m in raw.messages)
    await inner.aclose()


async def test_concurrent_writers_with_different_active_keys(inner_factory: StoreFactory) -> None:
    inner = await inner_factory()
    a = EncryptedStore(inner, keys={"k1": K1, "k2": K2}, active="k1")
    b = EncryptedStore(inner, keys={"k1": K1, "k2": K2}, active="k2")

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(a.append, "c", [Message("user", f"a{i}")])
            tg.start_soon(b.append, "c", [Message("user", f"b{i}")])
    got = sorted(m.content for m in await a.load("c"))
    assert got == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])
    assert (await b.get("c")).version >= 1
    await inner.aclose()


async def test_turns_through_pipeline_and_manager(inner_factory: StoreFactory) -> None:
    inner = await inner_factory()
    store = EncryptedStore(inner, keys={"k1": K1}, active="k1")

    def echo(messages: list[Message]) -> str:
        return f"you said {messages[-1].content}"

    async with Pipeline(MockProvider(echo), store=store) as pipe:
        await pipe.execute("p", "user", SECRET)
        async for _ in pipe.stream("p", "user", "again"):
            pass
    assert [m.content for m in await store.load("p")] == [
        SECRET,
        f"you said {SECRET}",
        "again",
        "you said again",
    ]
    _sealed((await inner.get("p")).messages)
    async with ConversationManager(MockProvider(echo), store) as manager:
        conv = await manager.new_conversation(
            None,
            __import__("promptstate").ConversationConfig(conversation_id="m", system_prompt=SECRET),
        )
        assert (await conv.send("hi")).content == "you said hi"
        again = await manager.get_conversation("m")
        assert again.system_prompt == SECRET  # the settings were sealed and opened
    raw = await inner.get("m")
    assert SECRET not in msgspec.json.encode(raw).decode()
    await store.aclose()
    await inner.aclose()


def test_bad_keys_are_refused() -> None:
    inner = MemoryStore()
    with pytest.raises(ValidationError, match="32 bytes"):
        EncryptedStore(inner, keys={"k1": b"short"}, active="k1")
    with pytest.raises(ValidationError, match="not one of the keys"):
        EncryptedStore(inner, keys={"k1": K1}, active="k2")
    with pytest.raises(ValidationError, match="key id"):
        EncryptedStore(inner, keys={"a:b": K1}, active="a:b")
    with pytest.raises(ValidationError):
        EncryptedStore(inner, keys={}, active="k1")
    with pytest.raises(ValidationError):
        EncryptedStore("not a store", keys={"k1": K1}, active="k1")  # type: ignore[arg-type]
    store = EncryptedStore(inner, keys={"k1": K1, "k2": os.urandom(32)}, active="k1")
    assert K1.hex() not in repr(store)
    assert "k2" in repr(store)


def test_the_docs_example_runs() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "encryption.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "through the store: ['My PIN is 1234', 'Noted, Alice.']"
    assert lines[1].startswith("in the database:   psenc1:k1:")
    assert "1234" not in lines[1]
    assert lines[2] == "sessions re-sealed: 1"
    assert lines[3] == "after rotation:    ['My PIN is 1234', 'Noted, Alice.']"


async def test_wrappers_declare_the_inner_stores_leases(tmp_path: Path) -> None:
    # Python 3.12's isinstance() with a runtime_checkable protocol does not ask __getattr__:
    # the lease methods must be on the wrapper's type, or the pipeline thinks it has none.
    import inspect

    from promptstate import CachedStore, LeasingStore
    from promptstate.locks import supports_lease

    async with SQLiteStore(tmp_path / "l.db") as sqlite:
        wrappers: list[Store] = [
            CachedStore(sqlite),
            EncryptedStore(sqlite, keys={"k1": K1}, active="k1"),
            EncryptedStore(CachedStore(sqlite), keys={"k1": K1}, active="k1"),
        ]
        for store in wrappers:
            for name in ("acquire_lease", "renew_lease", "release_lease"):
                inspect.getattr_static(store, name)  # AttributeError if only via __getattr__
            assert supports_lease(store)
            assert type(store).__name__ in ("CachedStore", "EncryptedStore")
        assert isinstance(wrappers[1], LeasingStore)
        inspect.getattr_static(wrappers[1], "acquire_and_load")
        # A lease taken through the wrapper is the inner store's.
        assert await wrappers[1].acquire_lease("s", "me", 5.0)  # type: ignore[attr-defined]
        assert not await sqlite.acquire_lease("s", "other", 5.0)
        assert await wrappers[0].release_lease("s", "me")  # type: ignore[attr-defined]
        async with Pipeline(MockProvider(["ok"]), store=wrappers[1]) as pipe:
            assert pipe._leasing
    for store in (
        CachedStore(MemoryStore()),
        EncryptedStore(MemoryStore(), keys={"k1": K1}, active="k1"),
    ):
        assert not supports_lease(store)
        with pytest.raises(AttributeError):
            inspect.getattr_static(store, "acquire_lease")


async def test_metadata_merges_and_listings_are_sealed_and_opened(
    inner_factory: StoreFactory,
) -> None:
    inner = await inner_factory()
    store = EncryptedStore(inner, keys={"k1": K1}, active="k1")
    await store.append("s", [Message("user", SECRET)])
    merged = await store.merge_metadata("s", {"title": SECRET, "n": 3})
    assert merged == {"title": SECRET, "n": 3}
    raw = await inner.get_metadata("s")
    assert set(raw) == {"title", "n"}
    assert all(isinstance(v, str) and v.startswith("psenc1:k1:") for v in raw.values())
    assert SECRET not in msgspec.json.encode(raw).decode()
    assert await store.get_metadata("s") == {"title": SECRET, "n": 3}
    # Merged under one key, read after rotation to another: both open.
    rotated = EncryptedStore(inner, keys={"k1": K1, "k2": K2}, active="k2")
    assert await rotated.merge_metadata("s", {"more": [SECRET]}, remove=["n"]) == {
        "title": SECRET,
        "more": [SECRET],
    }
    page = await rotated.list_sessions()
    assert [(i.conversation_id, i.metadata, i.message_count) for i in page.items] == [
        ("s", {"title": SECRET, "more": [SECRET]}, 1)
    ]
    raw_page = await inner.list_sessions()
    assert SECRET not in msgspec.json.encode(raw_page).decode()
    # A key it does not hold: refused, never half-opened.
    with pytest.raises(DecryptionError):
        await store.get_metadata("s")
    with pytest.raises(DecryptionError):
        await store.list_sessions()
    branch = await rotated.fork("s", "b", at=0)
    assert (branch.messages, branch.metadata["title"]) == ([], SECRET)
    assert await rotated.truncate("s", 0) == 0
    assert await rotated.count("s") == 0


async def test_setup_and_purge_expired_pass_through_to_a_store_that_has_them(
    tmp_path: Path,
) -> None:
    inner = SQLiteStore(tmp_path / "p.db", ttl=0.2)
    async with inner:
        store = EncryptedStore(inner, keys={"k1": K1}, active="k1")
        await store.setup()  # the inner store's: idempotent
        await store.append("old", [Message("user", "x")])
        await anyio.sleep(0.4)
        assert await store.purge_expired() == 1
        assert await inner.purge_expired() == 0, "the wrapper did not purge the inner store"
    plain = EncryptedStore(MemoryStore(), keys={"k1": K1}, active="k1")
    assert not hasattr(plain, "setup")
    assert not hasattr(plain, "purge_expired")

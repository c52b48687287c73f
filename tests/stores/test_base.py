"""The store contract's shape: public methods check, protected methods do the I/O.

Every public method of ``Store``/``LeasingStore`` that takes arguments is defined there, once:
a bundled backend implements only the protected ``_name`` methods, so no backend can skip the
checks (a bad key, a closed store) by overriding a public method."""

from __future__ import annotations

import inspect

import pytest

from promptstate.stores.base import LeasingStore, Store
from promptstate.stores.cached import CachedStore, _LeasingCachedStore
from promptstate.stores.memory import MemoryStore
from promptstate.types import State

#: The public methods whose checks live in the base class, each with its protected partner.
CHECKED = [
    "get",
    "set",
    "delete",
    "list_keys",
    "load",
    "save",
    "append",
    "append_turn",
    "fork",
    "count",
    "get_metadata",
    "merge_metadata",
    "truncate",
    "pop_messages",
    "list_by_prefix",
    "list_all",
    "delete_by_prefix",
    "get_many",
]


#: The same for ``LeasingStore``.
LEASES = ["acquire_lease", "renew_lease", "release_lease", "acquire_and_load"]


def _bundled() -> list[type[Store]]:
    classes: list[type[Store]] = [MemoryStore, CachedStore, _LeasingCachedStore]
    for module, names in (
        ("promptstate.stores.sqlite", ["SQLiteStore"]),
        ("promptstate.stores.postgres", ["PostgresStore"]),
        ("promptstate.stores.redis", ["RedisStore"]),
        ("promptstate.stores.encrypted", ["EncryptedStore", "_LeasingEncryptedStore"]),
    ):
        try:
            loaded = __import__(module, fromlist=names)
        except ImportError:  # pragma: no cover - every extra is installed in CI
            continue
        classes += [getattr(loaded, name) for name in names]
    return classes


@pytest.mark.parametrize("cls", _bundled(), ids=lambda cls: cls.__qualname__)
def test_bundled_stores_implement_protected_methods_only(cls: type[Store]) -> None:
    for klass in cls.__mro__:
        if klass in (Store, LeasingStore) or not issubclass(klass, Store):
            continue
        overridden = sorted({*CHECKED, *LEASES} & set(vars(klass)))
        assert not overridden, f"{klass.__qualname__} overrides public {overridden}"


def test_every_checked_method_has_a_protected_partner() -> None:
    for name in CHECKED:
        if name == "list_all":  # list_by_prefix("") underneath
            continue
        assert callable(getattr(Store, f"_{name}")), name
        public = inspect.signature(getattr(Store, name)).parameters
        protected = inspect.signature(getattr(Store, f"_{name}")).parameters
        assert list(public) == list(protected), name
    for name in LEASES:
        public = inspect.signature(getattr(LeasingStore, name)).parameters
        protected = inspect.signature(getattr(LeasingStore, f"_{name}")).parameters
        assert list(public) == list(protected), name
    assert LeasingStore.__abstractmethods__ == {
        "_acquire_lease",
        "_renew_lease",
        "_release_lease",
    }


def test_a_store_must_implement_each_of_the_four_in_one_form() -> None:
    # The four required methods may be implemented protected (_get, the 0.2 form) or public
    # (get, the 0.1 form the API reference documents); a store with neither form of one of
    # them is refused like an abstract class, naming what it lacks.
    with pytest.raises(TypeError, match="'_get', '_set', '_delete', '_list_keys'"):
        Store()

    class HalfStore(Store):
        async def _get(self, key: str) -> State:
            raise NotImplementedError

        async def set(
            self, key: str, state: State, *, expected_version: int | None = None
        ) -> State:
            raise NotImplementedError

    with pytest.raises(TypeError, match=r"HalfStore .*'_delete', '_list_keys'"):
        HalfStore()

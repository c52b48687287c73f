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
        "_get",
        "_set",
        "_delete",
        "_list_keys",
        "_acquire_lease",
        "_renew_lease",
        "_release_lease",
    }


def test_the_abstract_methods_are_the_four_protected_ones() -> None:
    assert Store.__abstractmethods__ == {"_get", "_set", "_delete", "_list_keys"}

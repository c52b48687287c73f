from __future__ import annotations

import pickle

import pytest

import promptstate
from promptstate import exceptions as exc


def test_everything_is_a_promptstate_error() -> None:
    for name in exc.__all__:
        assert issubclass(getattr(exc, name), exc.PromptStateError)


def test_builtin_bases() -> None:
    assert issubclass(exc.NotFoundError, LookupError)
    assert issubclass(exc.InvalidKeyError, ValueError)
    assert issubclass(exc.ValidationError, ValueError)
    assert issubclass(exc.PromptPackError, exc.ValidationError)


def test_provider_error_fields_and_pickling() -> None:
    err = exc.ProviderError("rate limited", status_code=429, retryable=True)
    assert (err.message, err.status_code, err.retryable) == ("rate limited", 429, True)
    assert str(err) == "rate limited"
    again = pickle.loads(pickle.dumps(err))
    assert (again.message, again.status_code, again.retryable) == ("rate limited", 429, True)
    plain = exc.ProviderError("boom")
    assert (plain.status_code, plain.retryable) == (None, False)


@pytest.mark.parametrize("name", exc.__all__)
def test_reexported_from_package(name: str) -> None:
    assert getattr(promptstate, name) is getattr(exc, name)


def test_additions_for_0_2() -> None:
    assert issubclass(exc.DecryptionError, exc.CorruptStateError)
    assert issubclass(exc.LeaseLostError, exc.SessionBusyError)
    assert not issubclass(exc.StoreAuthError, exc.StoreUnavailableError)
    assert issubclass(exc.GuardrailError, exc.PromptStateError)
    from promptstate.locks import LeaseLostError

    assert LeaseLostError is exc.LeaseLostError

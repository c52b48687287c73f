"""The promptstate error tree.

Every error promptstate raises is a :class:`PromptStateError`. Errors are split by cause, so a
handler can catch exactly what it can act on::

    PromptStateError
     ├── NotFoundError          (also LookupError)  no state under that key
     ├── ConflictError                              version mismatch, or fork target exists
     ├── SessionBusyError                           a session lock not had in time
     │    └── LeaseLostError                        a turn's lease expired or was taken over
     ├── StoreUnavailableError                      refused, pool timeout, server gone
     ├── StoreAuthError                             the server refused the credentials
     ├── CorruptStateError                          bytes that do not decode to a state
     │    └── DecryptionError                       sealed data under an unknown key, or tampered
     ├── InvalidKeyError        (also ValueError)   a key that no store accepts
     ├── ValidationError        (also ValueError)   a bad argument, option, URL or field
     │    └── PromptPackError                       a prompt pack that cannot be used
     ├── ClosedError                                used after aclose()
     ├── GuardrailError                             a reply violated a prompt-pack validator
     └── ProviderError                              the model provider failed

Backend errors (``redis.exceptions.*``, ``asyncpg.*``, ``httpx.*``, ``sqlite3.*``) never reach a
user: each backend translates them at its boundary with ``raise ... from exc``, so the original
is always available as ``__cause__``. Messages name the key that failed and never contain
passwords or API keys.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClosedError",
    "ConflictError",
    "CorruptStateError",
    "DecryptionError",
    "GuardrailError",
    "InvalidKeyError",
    "LeaseLostError",
    "NotFoundError",
    "PromptPackError",
    "PromptStateError",
    "ProviderError",
    "SessionBusyError",
    "StoreAuthError",
    "StoreUnavailableError",
    "ValidationError",
]


class PromptStateError(Exception):
    """The base of every error promptstate raises."""


class NotFoundError(PromptStateError, LookupError):
    """No state is stored under the key."""


class ConflictError(PromptStateError):
    """The stored version is not the expected one, or a fork target already exists."""


class SessionBusyError(PromptStateError):
    """A session's turn lock could not be acquired within the lock timeout."""


class LeaseLostError(SessionBusyError):
    """A turn's cross-process lease expired or was taken over before the turn was saved."""


class StoreUnavailableError(PromptStateError):
    """The store's server could not be reached: refused, timed out, or gone mid-call."""


class StoreAuthError(PromptStateError):
    """The store's server refused the credentials: a wrong password, or no permission.

    Deliberately not a :class:`StoreUnavailableError`: retrying cannot help, so code that
    retries on unavailability (the pipeline's save retry included) must not loop on it.
    """


class CorruptStateError(PromptStateError):
    """Stored or supplied bytes do not decode to a valid state."""


class DecryptionError(CorruptStateError):
    """Sealed data could not be opened: an unknown key id, a wrong key, or tampered bytes."""


class InvalidKeyError(PromptStateError, ValueError):
    """A key or prefix that no store accepts (empty, too long, control characters, not a str)."""


class ValidationError(PromptStateError, ValueError):
    """A bad argument, option, URL or field value (a message role, a TTL, a store URL)."""


class PromptPackError(ValidationError):
    """A prompt pack that is not valid JSON, misses a required field, or lacks a variable."""


class ClosedError(PromptStateError):
    """The store, pipeline or provider was used after ``aclose()``."""


class GuardrailError(PromptStateError):
    """An assistant reply violated a prompt-pack validator with ``fail_on_violation: true``.

    Args:
        message: Which validators, and what is wrong.
        violations: Every :class:`~promptstate.validators.Violation` of the reply.
    """

    def __init__(self, message: str, *, violations: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_guardrail_error, (self.message, self.violations))


class ProviderError(PromptStateError):
    """The model provider failed.

    Args:
        message: What failed, in the provider's words where it gave any.
        status_code: The HTTP status, when there was a response.
        retryable: Whether the same request may succeed if sent again.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retryable = retryable

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_provider_error, (self.message, self.status_code, self.retryable))


def _rebuild_provider_error(
    message: str, status_code: int | None, retryable: bool
) -> ProviderError:
    return ProviderError(message, status_code=status_code, retryable=retryable)


def _rebuild_guardrail_error(message: str, violations: tuple[Any, ...]) -> GuardrailError:
    return GuardrailError(message, violations=violations)

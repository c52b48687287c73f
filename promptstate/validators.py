"""Prompt-pack validators: guardrails that check every assistant reply.

A prompt's ``validators`` (PromptPack schema, ``prompts.<key>.validators``) are checked on
every assistant reply of a conversation using that prompt::

    "validators": [
        {"type": "banned_words", "enabled": true, "fail_on_violation": true,
         "params": {"words": ["guarantee", "refund"]}},
        {"type": "max_length", "enabled": true, "params": {"max_characters": 800}}
    ]

Built-in types (:data:`BUILTIN_VALIDATORS`):

* ``banned_words`` (``words``: a list of strings): none of the words may occur in the reply,
  matched as whole words, case-insensitively;
* ``max_length`` and its alias ``length`` (``max_characters`` and/or ``max_tokens``): the reply
  is at most that long (tokens as the pipeline's token counter counted the reply);
* ``max_sentences`` (``max_sentences``): at most that many sentences (ended by ``.``, ``!``
  or ``?`` followed by white space or the end);
* ``regex_match`` (``pattern``, ``must_match`` = true): the reply must (or, with
  ``must_match: false``, must not) contain a match of the regular expression.

Other types are added with :meth:`ValidatorRegistry.register` (or
:meth:`~promptstate.ConversationManager.register_validator`): a function
``fn(reply: Message, params: dict) -> str | None``, plain or async, that returns ``None`` when
the reply passes and otherwise a short text saying what is wrong.

A violated validator with ``fail_on_violation: true`` makes the turn raise
:class:`~promptstate.exceptions.GuardrailError` and store nothing; otherwise the violation is
logged (WARNING, on ``promptstate.validators``) and recorded in the reply's
``metadata["violations"]`` as ``[{"type": ..., "message": ...}]``. A type that is not
registered, or bad params of a built-in type, are refused when the pack is loaded with
:class:`~promptstate.exceptions.PromptPackError`, for disabled validators too: a mistyped
guardrail must never fail open.

Replies that only ask for tools (no text) are not checked; in a tool loop every answer with
text is.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from promptstate.exceptions import PromptPackError, ValidationError
from promptstate.tokens import HeuristicTokenCounter
from promptstate.types import Message

__all__ = [
    "BUILTIN_VALIDATORS",
    "Guardrails",
    "VIOLATIONS_KEY",
    "Validator",
    "ValidatorFunction",
    "ValidatorRegistry",
    "Violation",
]

logger = logging.getLogger(__name__)

#: The reply ``metadata`` key under which violations that did not fail the turn are recorded.
VIOLATIONS_KEY = "violations"

#: ``fn(reply, params)`` -> ``None`` (passes) or what is wrong; plain or async.
ValidatorFunction = Callable[[Message, dict[str, Any]], "str | Awaitable[str | None] | None"]

#: ``check(params)`` -> ``None`` (good params) or what is wrong with them.
ParamsCheck = Callable[[dict[str, Any]], "str | None"]

_FIELDS = frozenset({"type", "enabled", "fail_on_violation", "params"})
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_heuristic = HeuristicTokenCounter()


class Validator(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One validator of a prompt, as the pack declares it.

    Attributes:
        type: The validator type (a built-in one or one registered).
        enabled: A disabled validator is skipped (its type and params are still checked).
        fail_on_violation: Raise :class:`~promptstate.exceptions.GuardrailError` and store
            nothing when the reply violates it; otherwise log and record the violation.
        params: The type's parameters.
    """

    type: str
    enabled: bool = True
    fail_on_violation: bool = False
    params: dict[str, Any] = {}

    @classmethod
    def from_dict(cls, doc: object, *, where: str = "validator") -> Validator:
        """Build a validator from its pack JSON, refusing unknown fields and wrong types.

        Raises:
            PromptPackError: A field is missing, unknown or of the wrong type.
        """
        if not isinstance(doc, dict):
            raise PromptPackError(f"{where}: must be an object, got {doc!r}")
        unknown = sorted(set(doc) - _FIELDS)
        if unknown:
            raise PromptPackError(
                f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
                f"(a validator has {', '.join(sorted(_FIELDS))})"
            )
        kind = doc.get("type")
        if not isinstance(kind, str) or not kind:
            raise PromptPackError(f"{where}.type: must be a non-empty string, got {kind!r}")
        for flag in ("enabled", "fail_on_violation"):
            if flag in doc and not isinstance(doc[flag], bool):
                raise PromptPackError(f"{where}.{flag}: must be a boolean, got {doc[flag]!r}")
        params = doc.get("params", {})
        if not isinstance(params, dict):
            raise PromptPackError(f"{where}.params: must be an object, got {params!r}")
        return cls(
            type=kind,
            enabled=doc.get("enabled", True),
            fail_on_violation=doc.get("fail_on_violation", False),
            params=params,
        )


class Violation(msgspec.Struct, frozen=True, kw_only=True):
    """A validator the reply did not pass.

    Attributes:
        type: The validator's type.
        message: What is wrong, as the validator said it.
        fail_on_violation: Whether it failed the turn.
    """

    type: str
    message: str
    fail_on_violation: bool = False


# -- the built-in types -----------------------------------------------------------------------


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_banned_words(params: dict[str, Any]) -> str | None:
    words = params.get("words")
    if not isinstance(words, list) or not words:
        return "params.words must be a non-empty array of strings"
    if not all(isinstance(w, str) and w.strip() for w in words):
        return "params.words must hold only non-empty strings"
    return _only(params, {"words"})


def _banned_words(reply: Message, params: dict[str, Any]) -> str | None:
    text = reply.text
    found = []
    for word in params["words"]:
        pattern = r"(?<!\w)" + re.escape(word.strip()) + r"(?!\w)"
        if re.search(pattern, text, re.IGNORECASE):
            found.append(word)
    if found:
        return f"contains banned word(s) {', '.join(map(repr, found))}"
    return None


def _check_max_length(params: dict[str, Any]) -> str | None:
    if "max_characters" not in params and "max_tokens" not in params:
        return "params needs max_characters and/or max_tokens"
    for name in ("max_characters", "max_tokens"):
        if name in params and not _is_int(params[name], 0):
            return f"params.{name} must be an integer >= 0, got {params[name]!r}"
    return _only(params, {"max_characters", "max_tokens"})


def _max_length(reply: Message, params: dict[str, Any]) -> str | None:
    limit = params.get("max_characters")
    if limit is not None and len(reply.text) > limit:
        return f"is {len(reply.text)} characters long, more than {limit}"
    limit = params.get("max_tokens")
    if limit is not None:
        tokens = reply.tokens if reply.tokens is not None else _heuristic.count(reply)
        if tokens > limit:
            return f"is {tokens} tokens long, more than {limit}"
    return None


def _check_max_sentences(params: dict[str, Any]) -> str | None:
    if not _is_int(params.get("max_sentences"), 1):
        return f"params.max_sentences must be an integer >= 1, got {params.get('max_sentences')!r}"
    return _only(params, {"max_sentences"})


def _count_sentences(text: str) -> int:
    text = text.strip()
    if not text:
        return 0
    ends = list(_SENTENCE_END.finditer(text))
    # Text after the last sentence end (no closing punctuation) is one more sentence.
    tail = text[ends[-1].end() :].strip() if ends else text
    return len(ends) + (1 if tail else 0)


def _max_sentences(reply: Message, params: dict[str, Any]) -> str | None:
    count = _count_sentences(reply.text)
    limit = params["max_sentences"]
    if count > limit:
        return f"has {count} sentences, more than {limit}"
    return None


def _check_regex_match(params: dict[str, Any]) -> str | None:
    pattern = params.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        return "params.pattern must be a non-empty string"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"params.pattern is not a valid regular expression: {exc}"
    if "must_match" in params and not isinstance(params["must_match"], bool):
        return f"params.must_match must be a boolean, got {params['must_match']!r}"
    return _only(params, {"pattern", "must_match"})


def _regex_match(reply: Message, params: dict[str, Any]) -> str | None:
    pattern = params["pattern"]
    found = re.search(pattern, reply.text) is not None
    if params.get("must_match", True) and not found:
        return f"does not match the pattern {pattern!r}"
    if not params.get("must_match", True) and found:
        return f"matches the forbidden pattern {pattern!r}"
    return None


def _only(params: dict[str, Any], allowed: set[str]) -> str | None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        return f"unknown param(s) {', '.join(map(repr, unknown))}"
    return None


class _Entry(msgspec.Struct, frozen=True):
    fn: ValidatorFunction
    check: ParamsCheck | None
    is_async: bool


#: The built-in validator types: ``type -> (function, params check)``.
BUILTIN_VALIDATORS: Mapping[str, tuple[ValidatorFunction, ParamsCheck]] = {
    "banned_words": (_banned_words, _check_banned_words),
    "length": (_max_length, _check_max_length),
    "max_length": (_max_length, _check_max_length),
    "max_sentences": (_max_sentences, _check_max_sentences),
    "regex_match": (_regex_match, _check_regex_match),
}


class ValidatorRegistry:
    """The validator types a loader accepts and a turn runs: the built-ins plus your own.

    Args:
        builtins: Start with :data:`BUILTIN_VALIDATORS` (default) or empty.
    """

    __slots__ = ("_types",)

    def __init__(self, *, builtins: bool = True) -> None:
        self._types: dict[str, _Entry] = {}
        if builtins:
            for name, (fn, check) in BUILTIN_VALIDATORS.items():
                self._types[name] = _Entry(fn, check, False)

    def __repr__(self) -> str:
        return f"ValidatorRegistry({sorted(self._types)!r})"

    def __contains__(self, kind: object) -> bool:
        return kind in self._types

    def types(self) -> list[str]:
        """The registered type names, sorted."""
        return sorted(self._types)

    def register(
        self, kind: str, fn: ValidatorFunction, *, check_params: ParamsCheck | None = None
    ) -> None:
        """Add (or replace) a validator type.

        Args:
            kind: The ``type`` name packs use.
            fn: ``fn(reply, params)``, plain or async: ``None`` when the reply passes, else a
                short text saying what is wrong (it is logged at WARNING: do not quote the
                reply in it).
            check_params: Optional ``check(params)`` returning ``None`` or what is wrong with
                a pack's params; called by the pack loader.

        Raises:
            ValidationError: ``kind`` is not a non-empty string or ``fn`` is not callable.
        """
        if not isinstance(kind, str) or not kind:
            raise ValidationError(f"a validator type must be a non-empty str, got {kind!r}")
        if not callable(fn):
            raise ValidationError(f"validator {kind!r}: fn must be callable, got {fn!r}")
        if check_params is not None and not callable(check_params):
            raise ValidationError(f"validator {kind!r}: check_params must be callable")
        target = getattr(fn, "__call__", fn)  # noqa: B004 - async callable objects too
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(target)
        self._types[kind] = _Entry(fn, check_params, is_async)

    def check(self, validator: Validator, where: str = "validator") -> None:
        """Refuse a validator whose type is not registered or whose params are bad.

        Raises:
            PromptPackError: Naming ``where``, the type and the problem.
        """
        entry = self._types.get(validator.type)
        if entry is None:
            raise PromptPackError(
                f"{where}: unknown validator type {validator.type!r} (known: "
                f"{', '.join(self.types())}; add others with register_validator)"
            )
        if entry.check is not None:
            problem = entry.check(validator.params)
            if problem is not None:
                raise PromptPackError(f"{where}: {validator.type}: {problem}")

    def bind(self, validators: Iterable[Validator], where: str = "validators") -> Guardrails:
        """Check ``validators`` and return the :class:`Guardrails` that run them.

        Raises:
            PromptPackError: An unknown type or bad params.
        """
        return Guardrails(list(validators), self, where=where)

    def _entry(self, kind: str) -> _Entry:
        return self._types[kind]


_DEFAULT = ValidatorRegistry()


class Guardrails:
    """Validators bound to their functions, ready to check replies.

    Give them to a pipeline (``Pipeline(guardrails=...)`` or per turn,
    ``pipe.execute(..., guardrails=...)``); a :class:`~promptstate.ConversationManager` makes
    them from the conversation's prompt.

    Args:
        validators: The validators.
        registry: Where their types are looked up (default: the built-ins).
        where: What to name in errors.

    Raises:
        PromptPackError: An unknown type or bad params (of disabled validators too).
    """

    __slots__ = ("_bound", "validators")

    def __init__(
        self,
        validators: Sequence[Validator] = (),
        registry: ValidatorRegistry | None = None,
        *,
        where: str = "validators",
    ) -> None:
        registry = _DEFAULT if registry is None else registry
        if not isinstance(validators, (list, tuple)):
            raise ValidationError(f"{where}: must be a sequence of Validator, got {validators!r}")
        bound: list[tuple[Validator, _Entry]] = []
        for i, validator in enumerate(validators):
            if not isinstance(validator, Validator):
                raise ValidationError(f"{where}[{i}]: must be a Validator, got {validator!r}")
            registry.check(validator, f"{where}[{i}]")
            if validator.enabled:
                bound.append((validator, registry._entry(validator.type)))
        self.validators: tuple[Validator, ...] = tuple(validators)
        self._bound: tuple[tuple[Validator, _Entry], ...] = tuple(bound)

    def __repr__(self) -> str:
        return f"Guardrails({list(self.validators)!r})"

    def __bool__(self) -> bool:
        return bool(self._bound)

    async def check(self, reply: Message) -> list[Violation]:
        """Run every enabled validator on ``reply``; the violations, in declaration order.

        A validator function that raises is a violation too (its exception type is named):
        a broken guardrail must not let a reply through.
        """
        violations: list[Violation] = []
        for validator, entry in self._bound:
            try:
                outcome: Any = entry.fn(reply, validator.params)
                if entry.is_async or inspect.isawaitable(outcome):
                    outcome = await outcome
            except Exception as exc:
                # The traceback may quote the reply: only at DEBUG.
                logger.warning(
                    "validator %r raised %s; counted as a violation",
                    validator.type,
                    type(exc).__name__,
                )
                logger.debug("validator %r failed", validator.type, exc_info=True)
                outcome = f"the validator raised {type(exc).__name__}"
            if outcome is None:
                continue
            if not isinstance(outcome, str):
                outcome = f"the validator returned {type(outcome).__name__}, not None or a str"
            violations.append(
                Violation(
                    type=validator.type,
                    message=outcome,
                    fail_on_violation=validator.fail_on_violation,
                )
            )
        return violations

"""Conversations: the high-level API most applications use.

::

    manager = ConversationManager(provider=provider, store=store)
    pack = manager.load_pack("./assistant.pack.json")
    conv = await manager.new_conversation(pack, ConversationConfig(
        user_id="user123", conversation_id="conv-456", prompt_name="assistant",
        variables={"user_name": "Alice"}, max_tokens=4000))
    resp = await conv.send("My name is Alice")     # resp.content, resp.usage, resp.cost
    conv = await manager.get_conversation("conv-456")   # also from another process

A :class:`ConversationManager` runs turns through a :class:`~promptstate.pipeline.Pipeline`
on one store and one provider. A :class:`Conversation` is a handle on one stored
conversation: it holds no history in memory, so any number of handles (in any number of
processes) can work on the same conversation, and turns on it never interleave.

What a conversation needs to carry on is stored with its state, in
``State.metadata["promptstate"]`` (the key :data:`METADATA_KEY`; the rest of ``metadata`` is
yours)::

    {"pack": "hello-example", "pack_version": "1.0.0", "prompt": "chat",
     "variables": {"user_name": "Alice"}, "system": "<the rendered system prompt>",
     "options": {"temperature": 0.7, "tools": [...]}, "max_tokens": 4000}

so :meth:`ConversationManager.get_conversation` needs neither the pack nor the variables.

Prompt packs (:class:`PromptPack`, :func:`load_pack`) are the PromptPack JSON format: a pack
has ``prompts``, each with a ``system_template`` using ``{{variable}}`` placeholders,
``variables`` (``required``, ``default``, ``type`` and ``validation``), generation
``parameters``, the names of the pack-level ``tools`` it may offer the model and its
``validators`` (guardrails checked on every reply, :mod:`promptstate.validators`). The loader
checks the fields promptstate uses and ignores the rest (``evals``, ``workflow``, ``media``,
...). Every problem raises :class:`~promptstate.exceptions.PromptPackError` naming the file
and the field.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import msgspec

from promptstate._resource import AsyncResource
from promptstate.exceptions import (
    ConflictError,
    CorruptStateError,
    NotFoundError,
    PromptPackError,
    ValidationError,
)
from promptstate.locks import TurnRunner
from promptstate.pipeline import Middleware, Pipeline
from promptstate.providers.base import Chunk, Provider
from promptstate.stages import SaveState
from promptstate.stages.check_reply import with_check_reply
from promptstate.stores.base import Store, validate_key
from promptstate.stores.memory import MemoryStore
from promptstate.stores.url import open_store
from promptstate.tokens import TokenCounter
from promptstate.types import Message, Part, SessionPage, State, ToolCall, Usage
from promptstate.validators import Guardrails, ValidatorFunction, ValidatorRegistry
from promptstate.validators import Validator as PromptValidator

__all__ = [
    "METADATA_KEY",
    "Conversation",
    "ConversationConfig",
    "ConversationManager",
    "PromptPack",
    "PromptTemplate",
    "PromptTool",
    "PromptVariable",
    "Response",
    "load_pack",
]

logger = logging.getLogger(__name__)

#: The ``State.metadata`` key under which a conversation's own settings are stored.
METADATA_KEY = "promptstate"

#: Pipelines a manager keeps (one per prompt budget in use), least recently used dropped.

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VARIABLE_TYPES = ("string", "number", "boolean", "object", "array")
_SUPPORTED_SYNTAX = "{{variable}}"

# name: (type check, lowest, highest); None bounds are open.
_PARAMETERS: dict[str, tuple[str, float | None, float | None]] = {
    "temperature": ("number", 0, 2),
    "max_tokens": ("integer", 1, None),
    "top_p": ("number", 0, 1),
    "top_k": ("integer", 1, None),
    "frequency_penalty": ("number", -2, 2),
    "presence_penalty": ("number", -2, 2),
}


# -- prompt packs -----------------------------------------------------------------------------


class PromptVariable(msgspec.Struct, frozen=True, kw_only=True):
    """A variable of a prompt's ``system_template``.

    Attributes:
        name: The name used in ``{{name}}``.
        type: ``"string"``, ``"number"``, ``"boolean"``, ``"object"`` or ``"array"``; a value
            given for the variable must be of this type.
        required: Whether a value must be given (a required variable has no default).
        default: The value used when none is given (when ``has_default``).
        has_default: Whether the pack gave a ``default`` (it may be ``null``).
        description: What the variable means.
        validation: The pack's ``validation`` rules (``pattern``, ``min_length``,
            ``max_length``, ``minimum``, ``maximum``, ``enum``), checked on given values.
    """

    name: str
    type: str = "string"
    required: bool = False
    default: Any = None
    has_default: bool = False
    description: str | None = None
    validation: dict[str, Any] = {}


class PromptTool(msgspec.Struct, frozen=True, kw_only=True):
    """A pack-level tool the model may call.

    Attributes:
        name: The tool's name.
        description: What it does (the model reads this).
        parameters: The JSON schema of its arguments (an ``object`` schema).
    """

    name: str
    description: str
    parameters: dict[str, Any] = {}

    def to_openai(self) -> dict[str, Any]:
        """The tool in the OpenAI chat completions ``tools`` format."""
        parameters = self.parameters or {"type": "object", "properties": {}}
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }


class PromptTemplate(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt of a pack.

    Attributes:
        key: The prompt's key in the pack's ``prompts`` (the name you choose it by).
        id: The prompt's own ``id``.
        name: Its human-readable name.
        version: Its version.
        system_template: The system prompt with ``{{variable}}`` placeholders.
        variables: The declared variables.
        tools: The names of the pack-level tools it offers, or ``None`` when the prompt does
            not list any (then every pack-level tool is offered).
        parameters: Generation parameters passed to the provider (``temperature``, ...).
        tool_choice: The ``tool_policy.tool_choice``, when given.
        blocklist: ``tool_policy.blocklist``: tools never offered by this prompt.
        validators: Guardrails checked on every assistant reply
            (:class:`~promptstate.validators.Validator`).
    """

    key: str
    id: str
    name: str
    version: str
    system_template: str
    variables: tuple[PromptVariable, ...] = ()
    tools: tuple[str, ...] | None = None
    parameters: dict[str, Any] = {}
    tool_choice: str | None = None
    blocklist: tuple[str, ...] = ()
    validators: tuple[PromptValidator, ...] = ()

    def placeholders(self) -> list[str]:
        """The names used in ``{{...}}`` placeholders of the template, in order, unique."""
        return list(dict.fromkeys(_PLACEHOLDER.findall(self.system_template)))


class PromptPack(msgspec.Struct, frozen=True, kw_only=True):
    """A loaded PromptPack.

    Build one with :func:`load_pack` (a file) or :meth:`from_dict`.

    Attributes:
        id: The pack's id.
        name: Its human-readable name.
        version: Its version.
        prompts: The prompts by key.
        tools: The pack-level tools by name.
        fragments: Shared text blocks; a placeholder that names a fragment (and no variable)
            is replaced by the fragment's text.
        description: What the pack is for.
        source: Where it was loaded from (a path, or ``"<dict>"``), named in errors.
    """

    id: str
    name: str
    version: str
    prompts: dict[str, PromptTemplate]
    tools: dict[str, PromptTool] = {}
    fragments: dict[str, str] = {}
    description: str | None = None
    source: str = "<dict>"

    @classmethod
    def from_dict(
        cls,
        data: object,
        *,
        source: str = "<dict>",
        validators: ValidatorRegistry | None = None,
    ) -> PromptPack:
        """Validate and build a pack from decoded JSON.

        Args:
            data: The decoded JSON.
            source: What to name in errors.
            validators: The validator types the pack may use (default: the built-ins).

        Raises:
            PromptPackError: A required field is missing or a field has the wrong type, or a
                validator's type is unknown or its params are bad; the message names
                ``source`` and the field.
        """
        return _parse_pack(data, source, validators)

    def prompt(self, name: str | None = None) -> PromptTemplate:
        """The prompt under key ``name``; without a name, the pack's only prompt.

        Raises:
            PromptPackError: No such prompt, or ``name`` is None and the pack has several.
        """
        if name is None:
            if len(self.prompts) == 1:
                return next(iter(self.prompts.values()))
            raise PromptPackError(
                f"{self.source}: pack {self.id!r} has several prompts "
                f"({', '.join(sorted(self.prompts))}); choose one with prompt_name"
            )
        try:
            return self.prompts[name]
        except KeyError:
            raise PromptPackError(
                f"{self.source}: pack {self.id!r} has no prompt {name!r}; "
                f"it has {', '.join(sorted(self.prompts))}"
            ) from None

    def render(self, prompt_name: str | None = None, variables: Mapping[str, Any] = {}) -> str:
        """The prompt's system prompt with its variables substituted.

        Given values are checked against the variable's ``type`` and ``validation``; declared
        variables not given take their ``default``; an optional variable without a default
        becomes an empty string. A placeholder that is neither a declared variable, a given
        value nor a fragment counts as a required variable.

        Raises:
            PromptPackError: A required variable is not set, or a value is of the wrong type
                or fails its validation; the message names the variable.
        """
        prompt = self.prompt(prompt_name)
        where = f"{self.source}: prompt {prompt.key!r}"
        if not isinstance(variables, Mapping):
            raise PromptPackError(f"{where}: variables must be a mapping, got {variables!r}")
        values: dict[str, Any] = {}
        for var in prompt.variables:
            if var.name in variables:
                _check_value(var, variables[var.name], where)
                values[var.name] = variables[var.name]
            elif var.has_default:
                values[var.name] = var.default
            elif var.required:
                raise PromptPackError(f"{where}: required variable {var.name!r} is not set")
            else:
                values[var.name] = ""

        def substitute(match: re.Match[str], depth: int = 0) -> str:
            name = match.group(1)
            if name in values:
                return _as_text(values[name])
            if name in variables:
                return _as_text(variables[name])
            if name in self.fragments and depth < 4:
                return _PLACEHOLDER.sub(lambda m: substitute(m, depth + 1), self.fragments[name])
            raise PromptPackError(f"{where}: variable {name!r} in system_template is not set")

        return _PLACEHOLDER.sub(substitute, prompt.system_template)

    def options(self, prompt_name: str | None = None) -> dict[str, Any]:
        """The provider request options of a prompt: its parameters, tools and tool choice."""
        prompt = self.prompt(prompt_name)
        options = {k: v for k, v in prompt.parameters.items() if v is not None}
        names = list(self.tools) if prompt.tools is None else list(prompt.tools)
        tools = [self.tools[n].to_openai() for n in names if n not in prompt.blocklist]
        if tools:
            options["tools"] = tools
            if prompt.tool_choice is not None:
                options["tool_choice"] = prompt.tool_choice
        return options


def load_pack(
    path: str | PathLike[str], *, validators: ValidatorRegistry | None = None
) -> PromptPack:
    """Read and validate a PromptPack JSON file.

    Args:
        path: The file.
        validators: The validator types the pack may use (default: the built-ins of
            :mod:`promptstate.validators`).

    Raises:
        PromptPackError: The file cannot be read, is not valid JSON, misses a required field,
            has a field of the wrong type, or names a validator type that is not known (even
            a disabled one) or gives it bad params. The message names the file and the field.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PromptPackError(f"{source}: cannot read the prompt pack: {exc.strerror}") from exc
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise PromptPackError(f"{source}: not valid JSON: {exc}") from exc
    except RecursionError:
        raise PromptPackError(f"{source}: nested too deeply to be a prompt pack") from None
    return _parse_pack(doc, source, validators)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, Mapping)
    return isinstance(value, (list, tuple))  # array


def _check_value(var: PromptVariable, value: Any, where: str) -> None:
    name = var.name
    if not _type_ok(var.type, value):
        raise PromptPackError(
            f"{where}: variable {name!r} must be of type {var.type}, got {value!r}"
        )
    rules = var.validation
    if "enum" in rules and value not in rules["enum"]:
        raise PromptPackError(f"{where}: variable {name!r} must be one of {rules['enum']!r}")
    if isinstance(value, str):
        pattern = rules.get("pattern")
        if pattern is not None and re.search(pattern, value) is None:
            raise PromptPackError(f"{where}: variable {name!r} does not match {pattern!r}")
        low, high = rules.get("min_length"), rules.get("max_length")
        if low is not None and len(value) < low:
            raise PromptPackError(f"{where}: variable {name!r} is shorter than {low}")
        if high is not None and len(value) > high:
            raise PromptPackError(f"{where}: variable {name!r} is longer than {high}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = rules.get("minimum"), rules.get("maximum")
        if low is not None and value < low:
            raise PromptPackError(f"{where}: variable {name!r} is below the minimum {low}")
        if high is not None and value > high:
            raise PromptPackError(f"{where}: variable {name!r} is above the maximum {high}")


# -- pack validation --------------------------------------------------------------------------


class _Reader:
    """Field access that names the file and the field path in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> PromptPackError:
        return PromptPackError(f"{self.source}: {field}: {problem}")

    def obj(self, value: object, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be an object, got {_json_type(value)}")
        return value

    def required(self, doc: dict[str, Any], key: str, field: str) -> Any:
        if key not in doc:
            raise self.fail(f"{field}.{key}" if field else key, "missing required field")
        return doc[key]

    def string(self, doc: dict[str, Any], key: str, field: str) -> str:
        path = f"{field}.{key}" if field else key
        if key not in doc:
            raise self.fail(path, "missing required field")
        value = self.optional(doc, key, field)
        if not value:
            raise self.fail(path, "must not be empty")
        return value

    def optional(self, doc: dict[str, Any], key: str, field: str) -> str | None:
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            path = f"{field}.{key}" if field else key
            raise self.fail(path, f"must be a string, got {_json_type(value)}")
        return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _parse_pack(doc: object, source: str, registry: ValidatorRegistry | None = None) -> PromptPack:
    r = _Reader(source)
    if not isinstance(doc, dict):
        raise PromptPackError(
            f"{source}: a prompt pack must be a JSON object, got {_json_type(doc)}"
        )
    pack_id = r.string(doc, "id", "")
    name = r.string(doc, "name", "")
    version = r.string(doc, "version", "")
    description = r.optional(doc, "description", "")
    engine = r.obj(r.required(doc, "template_engine", ""), "template_engine")
    syntax = r.string(engine, "syntax", "template_engine")
    r.string(engine, "version", "template_engine")
    if syntax != _SUPPORTED_SYNTAX:
        raise r.fail(
            "template_engine.syntax",
            f"only {_SUPPORTED_SYNTAX!r} is supported, got {syntax!r}",
        )
    fragments_doc = r.obj(doc.get("fragments", {}), "fragments")
    fragments: dict[str, str] = {}
    for key, text in fragments_doc.items():
        if not isinstance(text, str):
            raise r.fail(f"fragments.{key}", f"must be a string, got {_json_type(text)}")
        fragments[key] = text
    tools_doc = r.obj(doc.get("tools", {}), "tools")
    tools = {key: _parse_tool(r, key, spec) for key, spec in tools_doc.items()}
    prompts_doc = r.obj(r.required(doc, "prompts", ""), "prompts")
    if not prompts_doc:
        raise r.fail("prompts", "a pack needs at least one prompt")
    prompts = {
        key: _parse_prompt(r, key, spec, tools, registry) for key, spec in prompts_doc.items()
    }
    return PromptPack(
        id=pack_id,
        name=name,
        version=version,
        prompts=prompts,
        tools=tools,
        fragments=fragments,
        description=description,
        source=source,
    )


def _parse_tool(r: _Reader, key: str, spec: object) -> PromptTool:
    field = f"tools.{key}"
    doc = r.obj(spec, field)
    name = r.string(doc, "name", field)
    if not _NAME.match(name):
        raise r.fail(f"{field}.name", f"must be an identifier, got {name!r}")
    description = r.string(doc, "description", field)
    parameters = r.obj(doc.get("parameters", {}), f"{field}.parameters")
    if parameters:
        if parameters.get("type", "object") != "object":
            raise r.fail(f"{field}.parameters.type", "must be 'object'")
        r.obj(parameters.get("properties", {}), f"{field}.parameters.properties")
        required = parameters.get("required", [])
        if not isinstance(required, list) or not all(isinstance(x, str) for x in required):
            raise r.fail(f"{field}.parameters.required", "must be an array of strings")
    return PromptTool(name=name, description=description, parameters=parameters)


def _parse_prompt(
    r: _Reader,
    key: str,
    spec: object,
    tools: dict[str, PromptTool],
    registry: ValidatorRegistry | None = None,
) -> PromptTemplate:
    field = f"prompts.{key}"
    doc = r.obj(spec, field)
    prompt_id = r.string(doc, "id", field)
    name = r.string(doc, "name", field)
    version = r.string(doc, "version", field)
    template = r.string(doc, "system_template", field)

    variables_doc = doc.get("variables", [])
    if not isinstance(variables_doc, list):
        raise r.fail(f"{field}.variables", f"must be an array, got {_json_type(variables_doc)}")
    variables: list[PromptVariable] = []
    for i, item in enumerate(variables_doc):
        variables.append(_parse_variable(r, f"{field}.variables[{i}]", item))
    seen = [v.name for v in variables]
    for dup in {n for n in seen if seen.count(n) > 1}:
        raise r.fail(f"{field}.variables", f"variable {dup!r} is declared twice")

    tool_names: tuple[str, ...] | None = None
    if "tools" in doc:
        names = doc["tools"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise r.fail(f"{field}.tools", "must be an array of tool names")
        for i, tool in enumerate(names):
            if tool not in tools:
                raise r.fail(
                    f"{field}.tools[{i}]", f"tool {tool!r} is not defined in the pack's tools"
                )
        tool_names = tuple(names)

    parameters_doc = r.obj(doc.get("parameters", {}), f"{field}.parameters")
    parameters: dict[str, Any] = {}
    for pname, value in parameters_doc.items():
        rule = _PARAMETERS.get(pname)
        if rule is not None and value is not None:
            _check_parameter(r, f"{field}.parameters.{pname}", value, rule)
        parameters[pname] = value

    policy = r.obj(doc.get("tool_policy", {}), f"{field}.tool_policy")
    tool_choice = r.optional(policy, "tool_choice", f"{field}.tool_policy")
    if tool_choice is not None and tool_choice not in ("auto", "required", "none"):
        raise r.fail(
            f"{field}.tool_policy.tool_choice",
            f"must be 'auto', 'required' or 'none', got {tool_choice!r}",
        )
    blocklist = policy.get("blocklist", [])
    if not isinstance(blocklist, list) or not all(isinstance(n, str) for n in blocklist):
        raise r.fail(f"{field}.tool_policy.blocklist", "must be an array of tool names")

    validators_doc = doc.get("validators", [])
    if not isinstance(validators_doc, list):
        raise r.fail(f"{field}.validators", f"must be an array, got {_json_type(validators_doc)}")
    validators = tuple(
        PromptValidator.from_dict(item, where=f"{r.source}: {field}.validators[{i}]")
        for i, item in enumerate(validators_doc)
    )
    # Unknown types and bad params are refused now (disabled ones too): never fail open.
    Guardrails(validators, registry, where=f"{r.source}: {field}.validators")

    return PromptTemplate(
        key=key,
        id=prompt_id,
        name=name,
        version=version,
        system_template=template,
        variables=tuple(variables),
        tools=tool_names,
        parameters=parameters,
        tool_choice=tool_choice,
        blocklist=tuple(blocklist),
        validators=validators,
    )


def _parse_variable(r: _Reader, field: str, spec: object) -> PromptVariable:
    doc = r.obj(spec, field)
    name = r.string(doc, "name", field)
    if not _NAME.match(name):
        raise r.fail(f"{field}.name", f"must be an identifier, got {name!r}")
    kind = r.optional(doc, "type", field) or "string"
    if kind not in _VARIABLE_TYPES:
        raise r.fail(f"{field}.type", f"must be one of {', '.join(_VARIABLE_TYPES)}, got {kind!r}")
    required = doc.get("required", False)
    if not isinstance(required, bool):
        raise r.fail(f"{field}.required", f"must be true or false, got {required!r}")
    has_default = "default" in doc
    default = doc.get("default")
    if has_default and default is not None and not _type_ok(kind, default):
        raise r.fail(f"{field}.default", f"must be of type {kind}, got {default!r}")
    validation = r.obj(doc.get("validation", {}), f"{field}.validation")
    pattern = validation.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise r.fail(f"{field}.validation.pattern", f"not a valid regex: {exc}") from exc
    description = doc.get("description")
    return PromptVariable(
        name=name,
        type=kind,
        required=required,
        default=default,
        has_default=has_default,
        description=description if isinstance(description, str) else None,
        validation=validation,
    )


def _check_parameter(
    r: _Reader, field: str, value: object, rule: tuple[str, float | None, float | None]
) -> None:
    kind, low, high = rule
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if not ok:
        raise r.fail(field, f"must be {'an' if kind == 'integer' else 'a'} {kind}, got {value!r}")
    assert isinstance(value, (int, float))
    if (low is not None and value < low) or (high is not None and value > high):
        raise r.fail(field, f"must be between {low} and {high}, got {value!r}")


# -- conversations ----------------------------------------------------------------------------


class ConversationConfig(msgspec.Struct, kw_only=True):
    """How to start a conversation (:meth:`ConversationManager.new_conversation`).

    Attributes:
        user_id: Whose conversation it is; stored in ``State.user_id``.
        conversation_id: Its key in the store; a random id (32 hex digits) when ``None``.
        prompt_name: Which prompt of the pack; may be omitted when the pack has one prompt.
        variables: Values for the prompt's ``{{variables}}``.
        max_tokens: The prompt budget: older messages are left out of what the model sees so
            that the prompt fits (the stored history keeps everything). ``None``: the
            manager's default.
        max_messages: Show the model only the newest ``max_messages`` messages (the stored
            history keeps everything). ``None``: the manager's default.
        metadata: Your own JSON-compatible data, stored in ``State.metadata`` (the key
            ``"promptstate"`` is reserved).
        system_prompt: A system prompt to use instead of (or without) a pack.
        options: Provider request options added to (and overriding) the pack's parameters.
    """

    user_id: str | None = None
    conversation_id: str | None = None
    prompt_name: str | None = None
    variables: dict[str, Any] = {}
    max_tokens: int | None = None
    max_messages: int | None = None
    metadata: dict[str, Any] = {}
    system_prompt: str | None = None
    options: dict[str, Any] = {}


class Response(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to :meth:`Conversation.send`.

    Attributes:
        message: The assistant's message as stored.
        usage: Tokens the turn's model call consumed.
        cost: Its price in USD (0.0 when the model's price is unknown).
        conversation_id: The conversation it belongs to.
    """

    message: Message
    usage: Usage
    cost: float
    conversation_id: str

    @property
    def content(self) -> str:
        """The assistant's text."""
        return self.message.content

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tools the model asked to call."""
        return self.message.tool_calls

    @property
    def parts(self) -> tuple[Part, ...]:
        """The reply's other pieces: reasoning, images, audio, files (see ``Message.parts``)."""
        return self.message.parts


class _Settings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is stored under ``State.metadata["promptstate"]``."""

    pack: str | None = None
    pack_version: str | None = None
    prompt: str | None = None
    variables: dict[str, Any] = {}
    system: str | None = None
    options: dict[str, Any] = {}
    max_tokens: int | None = None
    max_messages: int | None = None
    validators: list[PromptValidator] = []


class Conversation:
    """A handle on one stored conversation.

    Get one from :meth:`ConversationManager.new_conversation` or
    :meth:`ConversationManager.get_conversation`. It keeps no history in memory; each call
    reads or writes the store. (A turn does not check that the conversation still exists:
    sending on a handle after :meth:`delete` starts a new session under the same id, without
    the stored settings.)

    Attributes:
        id: The conversation's key in the store.
        user_id: Whose conversation it is.
        metadata: Your metadata, as it was when the handle was made.
        pack_id: The id of the pack it was started from, if any.
        prompt_name: The prompt of the pack, if any.
        variables: The variable values it was started with.
        system_prompt: The rendered system prompt sent first on every turn (never stored as a
            message), if any.
        options: The provider request options sent on every turn.
        max_tokens: Its prompt budget, if any.
        max_messages: How many of the newest messages the model sees, if limited.
        validators: The prompt's validators, checked on every reply.
    """

    def __init__(self, manager: ConversationManager, state: State, settings: _Settings) -> None:
        self._manager = manager
        self.id = state.conversation_id
        self.user_id = state.user_id
        self.metadata = {k: v for k, v in state.metadata.items() if k != METADATA_KEY}
        self.pack_id = settings.pack
        self.prompt_name = settings.prompt
        self.variables = dict(settings.variables)
        self.system_prompt = settings.system
        self.options = dict(settings.options)
        self.max_tokens = settings.max_tokens
        self.max_messages = settings.max_messages
        self.validators = tuple(settings.validators)
        # Resolved now, so a type this manager does not know fails here, not open later.
        self._guardrails: Guardrails | None = (
            manager._guardrails(settings.validators, self.id) if settings.validators else None
        )
        self._settings = settings

    def __repr__(self) -> str:
        return (
            f"Conversation(id={self.id!r}, user_id={self.user_id!r}, "
            f"prompt_name={self.prompt_name!r})"
        )

    def _turn_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**self.options, **options} if options else self.options

    async def send(self, content: str | Message, **options: Any) -> Response:
        """Send a message and wait for the whole answer; both are stored.

        Args:
            content: The user's text, or a whole :class:`~promptstate.Message` (e.g. a
                ``tool`` message answering a tool call).
            **options: Provider request options for this turn only.

        Raises:
            ProviderError: The model failed; nothing was stored.
            GuardrailError: The reply violated a validator with ``fail_on_violation``;
                nothing of the turn was stored.
            SessionBusyError: Another turn held the conversation for the lock timeout.
        """
        pipe = self._manager._pipeline()
        result = await pipe.execute(
            self.id,
            *((content,) if isinstance(content, Message) else ("user", content)),
            system=self.system_prompt,
            options=self._turn_options(options),
            guardrails=self._guardrails,
            max_tokens=self.max_tokens,
            max_messages=self.max_messages,
        )
        return Response(
            message=result.response,
            usage=result.usage,
            cost=result.cost,
            conversation_id=self.id,
        )

    async def stream(self, content: str | Message, **options: Any) -> AsyncIterator[Chunk]:
        """Send a message and yield the answer as it arrives.

        Chunks carry ``.text``; the last one (``done`` true) carries the whole ``message``,
        ``usage`` and ``cost`` and comes after the turn is stored. A stream that fails or is
        left early stores nothing; a reply that violates a validator with
        ``fail_on_violation`` raises :class:`~promptstate.exceptions.GuardrailError` after its
        last text chunk, and nothing is stored.
        """
        pipe = self._manager._pipeline()
        chunks = pipe.stream(
            self.id,
            *((content,) if isinstance(content, Message) else ("user", content)),
            system=self.system_prompt,
            options=self._turn_options(options),
            guardrails=self._guardrails,
            max_tokens=self.max_tokens,
            max_messages=self.max_messages,
        )
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # leaving early ends the turn now (nothing is stored), not at GC time
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def history(self, *, last: int | None = None) -> list[Message]:
        """The stored messages, oldest first (only the newest ``last`` when given)."""
        return await self._manager.store.load(self.id, last=last)

    async def state(self) -> State:
        """The whole stored state (``token_count``, ``total_cost``, ``version``, ...).

        Raises:
            NotFoundError: The conversation was deleted.
        """
        return await self._manager.store.get(self.id)

    async def fork(self, new_id: str | None = None) -> Conversation:
        """Copy the conversation to ``new_id`` (a random id when ``None``) and return it.

        The copy has the whole history and the same settings; later turns on either leave
        the other alone.

        Raises:
            ConflictError: ``new_id`` exists already.
            NotFoundError: This conversation was deleted.
        """
        target = uuid.uuid4().hex if new_id is None else validate_key(new_id)
        state = await self._manager.store.fork(self.id, target)
        return Conversation(self._manager, state, self._settings)

    async def branch(self, new_id: str | None = None, *, at: int) -> Conversation:
        """A new conversation holding the first ``at`` messages of this one ("edit and
        resend": branch before the message to change, then send the new one on the branch).

        The branch has the same settings (prompt, variables, budget) and metadata; later turns
        on either leave the other alone. ``at`` beyond the last message copies them all.

        Args:
            new_id: The branch's id (a random one when ``None``).
            at: How many of the first messages the branch keeps (0: none).

        Raises:
            ConflictError: ``new_id`` exists already.
            NotFoundError: This conversation was deleted.
            ValidationError: ``at`` is not an int >= 0.
        """
        target = uuid.uuid4().hex if new_id is None else validate_key(new_id)
        state = await self._manager.store.fork(self.id, target, at=at)
        return Conversation(self._manager, state, self._settings)

    async def undo(self, turns: int = 1) -> list[Message]:
        """Drop the last ``turns`` turns: each user message and what answered it (tool calls,
        tool results and the reply). "Regenerate" is ``undo()`` and sending the returned
        user message again.

        Holds the conversation like a turn does (within this process and, on stores with
        leases, across processes), so no turn is cut in half. Messages before the first user
        message (a stored system prompt) are kept. Reads only as many of the newest messages
        as it needs.

        Returns:
            The messages removed, oldest first (empty when there was no turn to drop).

        Raises:
            ValidationError: ``turns`` is not an int >= 1.
            SessionBusyError: A turn held the conversation for the lock timeout.
        """
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 1:
            raise ValidationError(f"turns must be an int >= 1, got {turns!r}")
        manager = self._manager
        manager._check_open()
        store = manager.store
        removed: list[Message] = []

        async def drop(lease: object) -> None:
            count = await store.count(self.id)
            last = 16
            while True:
                tail = await store.load(self.id, last=min(last, count))
                starts = [i for i, m in enumerate(tail) if m.role == "user"]
                if len(starts) >= turns or len(tail) >= count:
                    break
                last *= 4
            if starts:
                cut = starts[-turns] if len(starts) >= turns else starts[0]
                removed.extend(tail[cut:])
                await store.truncate(self.id, count - len(removed))

        # Held like a turn, by the same runner the pipeline's turns use.
        await manager._turns.run(self.id, drop)
        return removed

    async def delete(self) -> bool:
        """Delete the conversation from the store; True when it existed."""
        return await self._manager.store.delete(self.id)


class ConversationManager(AsyncResource):
    """Starts and resumes conversations on one store with one provider.

    Args:
        provider: The model provider (borrowed: not closed by :meth:`aclose`).
        store: A :class:`~promptstate.Store` (borrowed), a store URL such as
            ``"redis://localhost:6379/0"`` (opened and owned), or ``None`` for a new
            :class:`~promptstate.MemoryStore` (owned).
        max_tokens: The default prompt budget of conversations that set none.
        max_messages: The default message window of conversations that set none: the model
            sees the newest ``max_messages`` messages. Shapes the default stages only; with
            ``stages``, put a :class:`~promptstate.truncation.SlidingWindow` in them instead.
        token_counter: Counts tokens for truncation (default: the store's counter).
        lock_timeout: Seconds a turn waits for its conversation to be free.
        stages: A function from the default prompt budget (``max_tokens``, ``int | None``) to
            the pipeline stages, for your own middleware or another truncation strategy, e.g.
            ``lambda budget: [my_logger, *default_stages(budget)]`` or
            ``lambda budget: [LoadState(), Summarize(budget or 4000, 6, summarizer=p),
            CallProvider(), SaveState()]``. Called once. A conversation's own ``max_tokens``
            and ``max_messages`` are given to each of its turns, and the chain's
            :class:`~promptstate.truncation.TokenBudget`,
            :class:`~promptstate.truncation.Summarize` or
            :class:`~promptstate.truncation.SlidingWindow` applies them (a conversation with a
            limit the chain has no stage for fails its turns with
            :class:`~promptstate.exceptions.ValidationError`). Default:
            :func:`~promptstate.pipeline.default_stages`.

    The manager is an async context manager; :meth:`aclose` closes the store if the manager
    opened it. One manager per application is enough: it runs every conversation's turns
    through one pipeline, whatever their budgets, and shares the store's connections.
    """

    def __init__(
        self,
        provider: Provider,
        store: Store | str | None = None,
        *,
        max_tokens: int | None = None,
        max_messages: int | None = None,
        token_counter: TokenCounter | None = None,
        lock_timeout: float | None = 30.0,
        stages: Callable[[int | None], Sequence[Middleware]] | None = None,
    ) -> None:
        if not callable(getattr(provider, "complete", None)):
            raise ValidationError(f"provider must have complete() and stream(), got {provider!r}")
        _check_budget(max_tokens)
        _check_window(max_messages, stages)
        if store is None:
            self._store: Store = MemoryStore()
            self._owns_store = True
        elif isinstance(store, str):
            self._store = open_store(store)
            self._owns_store = True
        elif isinstance(store, Store):
            self._store = store
            self._owns_store = False
        else:
            raise ValidationError(f"store must be a Store, a URL or None, got {store!r}")
        self._provider = provider
        if stages is not None and not callable(stages):
            raise ValidationError(f"stages must be a function of the budget, got {stages!r}")
        middleware: list[Middleware] | None = None
        if stages is not None:
            middleware = list(stages(max_tokens))
            if any(isinstance(s, SaveState) for s in middleware):
                middleware = with_check_reply(middleware)  # so conversations' validators run
        self._pipe = Pipeline(
            provider,
            store=self._store,
            middleware=middleware,
            max_tokens=max_tokens,
            max_messages=max_messages,
            token_counter=token_counter,
            lock_timeout=lock_timeout,
        )
        # What holds a conversation like a turn outside the pipeline (undo).
        self._turns = TurnRunner(
            self._store, max_wait=self._pipe._lock_timeout, lease_ttl=_UNDO_LEASE_TTL
        )
        self._packs: dict[str, PromptPack] = {}
        self._validators = ValidatorRegistry()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"ConversationManager({type(self._provider).__name__}, "
            f"store={type(self._store).__name__})"
        )

    @property
    def store(self) -> Store:
        """The store conversations live in."""
        return self._store

    @property
    def provider(self) -> Provider:
        """The model provider."""
        return self._provider

    @property
    def validators(self) -> ValidatorRegistry:
        """The validator types packs of this manager may use (built-ins and registered).

        Pass it to :meth:`PromptPack.from_dict` or :func:`load_pack` as ``validators=``.
        """
        return self._validators

    @property
    def packs(self) -> Mapping[str, PromptPack]:
        """The packs loaded with :meth:`load_pack` or :meth:`add_pack`, by id."""
        return self._packs

    # -- lifecycle ----------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._owns_store:
            await self._store.__aenter__()

    async def aclose(self) -> None:
        """Close the pipelines, and the store if the manager opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._pipe.aclose()
        if self._owns_store:
            await self._store.aclose()

    def _pipeline(self) -> Pipeline:
        self._check_open()
        return self._pipe

    # -- packs --------------------------------------------------------------------------------

    def load_pack(self, path: str | PathLike[str]) -> PromptPack:
        """Read a PromptPack file (see :func:`load_pack`) and remember it by its id.

        Its validators may use the built-in types and those added with
        :meth:`register_validator`; any other type is refused with
        :class:`~promptstate.exceptions.PromptPackError`.
        """
        return self.add_pack(load_pack(path, validators=self._validators))

    def add_pack(self, pack: PromptPack) -> PromptPack:
        """Remember a pack by its id, so conversations can name it; returns it.

        Raises:
            PromptPackError: A validator of the pack has a type this manager does not know.
        """
        if not isinstance(pack, PromptPack):
            raise ValidationError(f"add_pack() takes a PromptPack, got {pack!r}")
        for prompt in pack.prompts.values():
            self._guardrails(prompt.validators, f"{pack.source}: prompts.{prompt.key}")
        self._packs[pack.id] = pack
        return pack

    def register_validator(
        self,
        type: str,
        fn: ValidatorFunction,
        *,
        check_params: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        """Add a validator type that packs loaded by this manager may use.

        ``fn(reply, params)`` (plain or async) returns ``None`` when the reply passes and
        otherwise a short text saying what is wrong (logged at WARNING: do not quote the
        reply in it). Register before loading the packs that use the type.

        Args:
            type: The name packs give as the validator's ``type``.
            fn: The check.
            check_params: Optional ``check(params) -> str | None`` run on a pack's params at
                load time (``None``: the params are good).
        """
        self._validators.register(type, fn, check_params=check_params)

    def _guardrails(self, validators: Sequence[PromptValidator], where: str) -> Guardrails:
        return Guardrails(validators, self._validators, where=f"{where}: validators")

    # -- conversations ------------------------------------------------------------------------

    async def new_conversation(
        self,
        pack: PromptPack | str | None = None,
        config: ConversationConfig | None = None,
    ) -> Conversation:
        """Start a conversation and store its (empty) state with its settings.

        Args:
            pack: The prompt pack (or the id of a loaded one); ``None`` for no pack.
            config: Who, which prompt, which variables, what budget; defaults for all.

        Raises:
            PromptPackError: The prompt is unknown, or a variable is missing or invalid.
            ConflictError: A conversation with this id exists already.
            ValidationError: A bad config value.
        """
        self._check_open()
        config = ConversationConfig() if config is None else config
        if not isinstance(config, ConversationConfig):
            raise ValidationError(f"config must be a ConversationConfig, got {config!r}")
        if isinstance(pack, str):
            try:
                pack = self._packs[pack]
            except KeyError:
                raise PromptPackError(f"no pack with id {pack!r} is loaded") from None
        if pack is not None and not isinstance(pack, PromptPack):
            raise ValidationError(f"pack must be a PromptPack, a pack id or None, got {pack!r}")
        _check_budget(config.max_tokens)
        _check_window(config.max_messages, None)
        # A limit the one pipeline's chain cannot apply fails here, not at the first turn.
        self._pipe._limits(config.max_tokens, config.max_messages)
        if config.user_id is not None and not isinstance(config.user_id, str):
            raise ValidationError(f"user_id must be a str or None, got {config.user_id!r}")
        if not isinstance(config.metadata, dict) or METADATA_KEY in config.metadata:
            raise ValidationError(
                f"metadata must be a dict without the reserved key {METADATA_KEY!r}"
            )
        key = uuid.uuid4().hex if config.conversation_id is None else config.conversation_id
        validate_key(key, what="conversation_id")

        settings = _Settings(max_tokens=config.max_tokens, max_messages=config.max_messages)
        options: dict[str, Any] = {}
        if pack is not None:
            prompt = pack.prompt(config.prompt_name)
            settings.pack = pack.id
            settings.pack_version = pack.version
            settings.prompt = prompt.key
            settings.system = pack.render(prompt.key, config.variables)
            options = pack.options(prompt.key)
            settings.validators = list(prompt.validators)
            self._guardrails(prompt.validators, f"{pack.source}: prompts.{prompt.key}")
        elif config.prompt_name is not None:
            raise PromptPackError(f"prompt_name {config.prompt_name!r} given without a pack")
        settings.variables = dict(config.variables)
        if config.system_prompt is not None:
            settings.system = config.system_prompt
        settings.options = {**options, **config.options}
        _check_json(settings, "conversation settings")
        _check_json(config.metadata, "metadata")

        state = State(
            conversation_id=key,
            user_id=config.user_id,
            metadata={**config.metadata, METADATA_KEY: msgspec.to_builtins(settings)},
        )
        try:
            stored = await self._store.set(key, state, expected_version=0)
        except ConflictError as exc:
            raise ConflictError(f"a conversation with id {key!r} exists already") from exc
        logger.debug("started conversation %r (pack %r)", key, settings.pack)
        return Conversation(self, stored, settings)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        """A handle on a stored conversation, with the settings it was started with.

        Works from any process using the same store, without loading its pack.

        Raises:
            NotFoundError: No conversation under that id.
        """
        self._check_open()
        try:
            state = await self._store.get(conversation_id)
        except NotFoundError:
            raise NotFoundError(f"no conversation with id {conversation_id!r}") from None
        return Conversation(self, state, _settings_of(state))

    async def list_conversations(
        self,
        prefix: str = "",
        *,
        user_id: str | None = None,
        order: str = "updated_desc",
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of conversations, newest first by default, without their messages.

        ``page.items`` are :class:`~promptstate.SessionInfo` (id, user, message count, tokens,
        cost, metadata, times); pass ``page.next_cursor`` as ``cursor`` for the next page
        (``None`` on the last one). Filtering by ``user_id`` and paging read only the page,
        from the store's index (see :meth:`Store.list_sessions`).

        Raises:
            ValidationError: A bad cursor, order or limit.
        """
        self._check_open()
        return await self._store.list_sessions(
            prefix=prefix, user_id=user_id, order=order, limit=limit, cursor=cursor
        )

    async def open_conversation(
        self,
        pack: PromptPack | str | None = None,
        config: ConversationConfig | None = None,
    ) -> Conversation:
        """The conversation ``config.conversation_id`` when it exists, else a new one.

        An existing conversation keeps the settings it was started with (``pack`` and the
        rest of ``config`` only shape a new one). Safe when two callers open the same new id
        at once: one creates it, the other gets it.

        Raises:
            ConflictError: The conversation exists and belongs to another user than
                ``config.user_id`` (when that is given): an id from a request never opens
                someone else's conversation.
            PromptPackError, ValidationError: As :meth:`new_conversation`, for a new one.
        """
        self._check_open()
        config = ConversationConfig() if config is None else config
        if not isinstance(config, ConversationConfig):
            raise ValidationError(f"config must be a ConversationConfig, got {config!r}")
        key = config.conversation_id
        if key is None:
            return await self.new_conversation(pack, config)
        validate_key(key, what="conversation_id")
        for _ in range(3):
            try:
                state = await self._store.get(key)
            except NotFoundError:
                try:
                    return await self.new_conversation(pack, config)
                except ConflictError:
                    continue  # created meanwhile by another caller: get it
            if config.user_id is not None and state.user_id != config.user_id:
                raise ConflictError(f"conversation {key!r} exists and belongs to another user")
            return Conversation(self, state, _settings_of(state))
        raise ConflictError(f"conversation {key!r} was created and deleted while opening it")

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation; True when it existed."""
        self._check_open()
        return await self._store.delete(conversation_id)


#: Lease lifetime of :meth:`Conversation.undo` on stores with leases (renewed while it runs).
_UNDO_LEASE_TTL = 30.0


def _check_budget(max_tokens: object) -> None:
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValidationError(f"max_tokens must be None or an int >= 1, got {max_tokens!r}")


def _check_window(max_messages: object, stages: object) -> None:
    if max_messages is None:
        return
    if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
        raise ValidationError(f"max_messages must be None or an int >= 1, got {max_messages!r}")
    if stages is not None:
        raise ValidationError(
            "max_messages shapes the default stages; with stages=..., put a "
            f"SlidingWindow({max_messages}) in them instead"
        )


def _check_json(value: object, what: str) -> None:
    try:
        msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(f"{what} must be JSON-compatible: {exc}") from exc


def _settings_of(state: State) -> _Settings:
    raw = state.metadata.get(METADATA_KEY)
    if raw is None:
        return _Settings()  # a session written by a pipeline or by hand: no settings
    try:
        return msgspec.convert(raw, _Settings)
    except msgspec.ValidationError as exc:
        raise CorruptStateError(
            f"conversation {state.conversation_id!r} has invalid metadata[{METADATA_KEY!r}]: {exc}"
        ) from exc

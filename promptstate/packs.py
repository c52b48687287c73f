"""Prompt packs: the PromptPack JSON format, parsed and checked.

Prompt packs (:class:`PromptPack`, :func:`load_pack`) are the PromptPack JSON format: a pack
has ``prompts``, each with a ``system_template`` using ``{{variable}}`` placeholders,
``variables`` (``required``, ``default``, ``type`` and ``validation``), generation
``parameters``, the names of the pack-level ``tools`` it may offer the model and its
``validators`` (guardrails checked on every reply, :mod:`promptstate.validators`). The loader
checks the fields promptstate uses and ignores the rest (``evals``, ``workflow``, ``media``,
...). Every problem raises :class:`~promptstate.exceptions.PromptPackError` naming the file
and the field.

The public entry points are :mod:`promptstate` and :mod:`promptstate.sdk`, which re-export
these names; :class:`~promptstate.sdk.ConversationManager` loads packs with them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import msgspec

from promptstate.exceptions import PromptPackError
from promptstate.validators import Guardrails, ValidatorRegistry
from promptstate.validators import Validator as PromptValidator

__all__ = [
    "PromptPack",
    "PromptTemplate",
    "PromptTool",
    "PromptVariable",
    "load_pack",
]

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

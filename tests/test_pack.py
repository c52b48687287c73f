"""The PromptPack loader: what it reads, what it renders, and every error naming file and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from promptstate import PromptPackError, ValidationError
from promptstate.sdk import PromptPack, load_pack

PACKS = Path(__file__).parent / "packs"


def _assistant_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((PACKS / "assistant.pack.json").read_text())
    return doc


def test_loads_prompts_variables_parameters_and_tools() -> None:
    pack = load_pack(PACKS / "assistant.pack.json")
    assert (pack.id, pack.name, pack.version) == ("test-assistant", "Test Assistant", "1.2.0")
    assert sorted(pack.prompts) == ["assistant", "support"]
    assert sorted(pack.tools) == ["get_time", "get_weather"]
    prompt = pack.prompt("assistant")
    assert [v.name for v in prompt.variables] == ["user_name", "language", "assistant_name"]
    assert prompt.variables[0].required
    assert prompt.variables[1].default == "English"
    assert prompt.placeholders() == ["user_name", "language", "signature"]
    assert pack.source == str(PACKS / "assistant.pack.json")


def test_render_substitutes_variables_defaults_and_fragments() -> None:
    pack = load_pack(PACKS / "assistant.pack.json")
    text = pack.render("assistant", {"user_name": "Alice"})
    assert text == "You help Alice in English. Sign off as Ada."
    text = pack.render("assistant", {"user_name": "Bob", "language": "French"})
    assert text == "You help Bob in French. Sign off as Ada."


def test_render_formats_non_string_values() -> None:
    pack = load_pack(PACKS / "assistant.pack.json")
    assert (
        pack.render("support") == 'Support agent. Ticket limit 3. Verbose: false. Tags: ["a", "b"]'
    )
    text = pack.render("support", {"max_tickets": 7, "verbose": True, "tags": []})
    assert text == "Support agent. Ticket limit 7. Verbose: true. Tags: []"


def test_required_variable_left_unset_names_it() -> None:
    pack = load_pack(PACKS / "assistant.pack.json")
    with pytest.raises(PromptPackError, match="required variable 'user_name' is not set") as info:
        pack.render("assistant", {})
    assert "assistant.pack.json" in str(info.value)
    assert isinstance(info.value, ValidationError)


def test_undeclared_placeholder_must_be_given() -> None:
    doc = _assistant_doc()
    doc["prompts"]["support"]["system_template"] = "Hello {{company}}"
    pack = PromptPack.from_dict(doc, source="inline.json")
    with pytest.raises(PromptPackError, match=r"inline\.json.*'company'"):
        pack.render("support")
    assert pack.render("support", {"company": "ACME"}) == "Hello ACME"


@pytest.mark.parametrize(
    ("prompt", "variables", "match"),
    [
        ("assistant", {"user_name": 42}, "'user_name' must be of type string"),
        ("assistant", {"user_name": "A", "language": "German"}, "'language' must be one of"),
        ("support", {"max_tickets": 11}, "'max_tickets' is above the maximum 10"),
        ("support", {"max_tickets": 0}, "'max_tickets' is below the minimum 1"),
        ("support", {"max_tickets": True}, "must be of type number"),
        ("support", {"verbose": "yes"}, "'verbose' must be of type boolean"),
        ("support", {"tags": "a,b"}, "'tags' must be of type array"),
    ],
)
def test_bad_variable_values_are_refused(
    prompt: str, variables: dict[str, Any], match: str
) -> None:
    pack = load_pack(PACKS / "assistant.pack.json")
    with pytest.raises(PromptPackError, match=match):
        pack.render(prompt, variables)


def test_prompt_choice() -> None:
    pack = load_pack(PACKS / "assistant.pack.json")
    with pytest.raises(PromptPackError, match=r"several prompts .*assistant, support"):
        pack.prompt()
    with pytest.raises(PromptPackError, match="no prompt 'nope'"):
        pack.prompt("nope")
    minimal = load_pack(PACKS / "minimal.pack.json")
    assert minimal.prompt().key == "chat"
    assert minimal.render() == "You are a terse assistant."


def test_options_carry_parameters_and_listed_tools() -> None:
    pack = load_pack(PACKS / "assistant.pack.json")
    options = pack.options("assistant")
    assert options["temperature"] == 0.2
    assert options["max_tokens"] == 300
    assert "top_k" not in options  # null parameters are left out
    assert options["tool_choice"] == "auto"
    assert options["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    # A prompt that lists no tools offers every pack-level tool.
    assert [t["function"]["name"] for t in pack.options("support")["tools"]] == [
        "get_weather",
        "get_time",
    ]
    minimal = load_pack(PACKS / "minimal.pack.json")
    assert [t["function"]["name"] for t in minimal.options()["tools"]] == ["lookup"]


def test_blocklisted_tools_are_not_offered() -> None:
    doc = _assistant_doc()
    doc["prompts"]["support"]["tool_policy"] = {"blocklist": ["get_time"]}
    pack = PromptPack.from_dict(doc)
    assert [t["function"]["name"] for t in pack.options("support")["tools"]] == ["get_weather"]


def test_invalid_json_names_the_file() -> None:
    with pytest.raises(PromptPackError, match=r"broken\.pack\.json: not valid JSON"):
        load_pack(PACKS / "broken.pack.json")


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(PromptPackError, match=r"nothere\.json: cannot read"):
        load_pack(tmp_path / "nothere.json")


def _without(path: str) -> dict[str, Any]:
    doc = _assistant_doc()
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    del node[last]
    return doc


@pytest.mark.parametrize(
    "path",
    [
        "id",
        "name",
        "version",
        "template_engine",
        "template_engine.syntax",
        "prompts",
        "prompts.assistant.system_template",
        "prompts.assistant.id",
        "tools.get_weather.description",
    ],
)
def test_missing_required_field_is_named(path: str) -> None:
    with pytest.raises(PromptPackError, match=rf"x\.json: {path}: missing required field"):
        PromptPack.from_dict(_without(path), source="x.json")


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = _assistant_doc()
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("prompts", {}, "prompts: a pack needs at least one prompt"),
        ("prompts", [], "prompts: must be an object, got array"),
        ("name", 3, "name: must be a string, got number"),
        ("template_engine.syntax", "${variable}", "template_engine.syntax: only"),
        ("prompts.assistant.system_template", "", "system_template: must not be empty"),
        ("prompts.assistant.tools", ["nope"], r"prompts\.assistant\.tools\[0\]: tool 'nope'"),
        ("prompts.assistant.tools", "get_weather", "must be an array of tool names"),
        ("prompts.assistant.variables", {}, "variables: must be an array"),
        (
            "prompts.assistant.variables.0.type",
            "date",
            r"variables\[0\]\.type: must be one of",
        ),
        ("prompts.assistant.variables.0.required", "yes", "required: must be true or false"),
        ("prompts.assistant.variables.1.default", 5, r"variables\[1\]\.default: must be of type"),
        ("prompts.assistant.variables.0.name", "bad name", "must be an identifier"),
        ("prompts.assistant.parameters.temperature", 3, "temperature: must be between 0 and 2"),
        ("prompts.assistant.parameters.max_tokens", 1.5, "max_tokens: must be an integer"),
        ("prompts.assistant.parameters.top_p", "high", "top_p: must be a number"),
        ("prompts.assistant.tool_policy.tool_choice", "always", "tool_choice: must be"),
        ("tools.get_weather.parameters.type", "array", "parameters.type: must be 'object'"),
        ("tools.get_weather.parameters.required", "city", "must be an array of strings"),
        ("fragments", {"x": 1}, "fragments.x: must be a string"),
    ],
)
def test_bad_field_is_named(path: str, value: Any, match: str) -> None:
    with pytest.raises(PromptPackError, match=match) as info:
        PromptPack.from_dict(_with(path, value), source="x.json")
    assert str(info.value).startswith("x.json: ")


def test_duplicate_variable_is_refused() -> None:
    doc = _assistant_doc()
    variables = doc["prompts"]["assistant"]["variables"]
    variables.append(copy.deepcopy(variables[0]))
    with pytest.raises(PromptPackError, match="'user_name' is declared twice"):
        PromptPack.from_dict(doc)


def test_not_an_object() -> None:
    with pytest.raises(PromptPackError, match="must be a JSON object, got array"):
        PromptPack.from_dict([])


def test_unknown_fields_are_ignored() -> None:
    doc = _assistant_doc()
    doc["compilation"] = {"anything": [1, 2]}
    doc["prompts"]["assistant"]["media"] = {"enabled": True}
    pack = PromptPack.from_dict(doc)
    assert pack.render("assistant", {"user_name": "Z"}).startswith("You help Z")

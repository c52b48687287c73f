"""Prompt-pack validators: every built-in type, custom types, load-time refusal, and turns
through Pipeline and ConversationManager (execute and stream, both fail_on_violation
settings)."""

from __future__ import annotations

import logging
import pickle
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from promptstate import (
    ConversationConfig,
    ConversationManager,
    GuardrailError,
    Guardrails,
    MemoryStore,
    Message,
    Pipeline,
    PromptPack,
    PromptPackError,
    ToolCall,
    ValidationError,
    Validator,
    ValidatorRegistry,
    load_pack,
)
from promptstate.providers.mock import MockProvider
from promptstate.stages import CallProvider, LoadState, SaveState
from promptstate.validators import VIOLATIONS_KEY

pytestmark = pytest.mark.anyio


def _pack(validators: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "guarded",
        "name": "Guarded",
        "version": "1.0.0",
        "template_engine": {"version": "v1", "syntax": "{{variable}}"},
        "prompts": {
            "chat": {
                "id": "chat",
                "name": "Chat",
                "version": "1.0.0",
                "system_template": "Be polite.",
                "validators": validators,
            }
        },
    }


def _v(kind: str, fail: bool = False, **params: Any) -> Validator:
    return Validator(type=kind, fail_on_violation=fail, params=params)


async def _check(validator: Validator, text: str, tokens: int | None = None) -> list[str]:
    reply = Message("assistant", text, tokens=tokens)
    return [v.message for v in await Guardrails([validator]).check(reply)]


# -- the built-in types, passing and failing --------------------------------------------------


async def test_banned_words_matches_whole_words_case_insensitively() -> None:
    v = _v("banned_words", words=["refund", "free money"])
    assert await _check(v, "We cannot discuss that.") == []
    assert await _check(v, "Refunds are processed weekly.") == []  # not the whole word
    (problem,) = await _check(v, "You get a REFUND and Free Money!")
    assert "'refund'" in problem
    assert "'free money'" in problem


@pytest.mark.parametrize("kind", ["max_length", "length"])
async def test_max_length_counts_characters_and_tokens(kind: str) -> None:
    assert await _check(_v(kind, max_characters=5), "12345") == []
    assert await _check(_v(kind, max_characters=5), "123456") == [
        "is 6 characters long, more than 5"
    ]
    assert await _check(_v(kind, max_tokens=3), "whatever", tokens=3) == []
    assert await _check(_v(kind, max_tokens=3), "whatever", tokens=4) == [
        "is 4 tokens long, more than 3"
    ]
    # Uncounted replies are counted with the heuristic counter.
    assert await _check(_v(kind, max_tokens=1), "word " * 50) != []


async def test_max_sentences() -> None:
    v = _v("max_sentences", max_sentences=2)
    assert await _check(v, "One. Two!") == []
    assert await _check(v, "Version 1.5 is out. Really") == []  # no break inside 1.5
    assert await _check(v, "One. Two? Three") == ["has 3 sentences, more than 2"]
    assert await _check(v, "") == []


async def test_regex_match_must_and_must_not() -> None:
    must = _v("regex_match", pattern=r"^Answer:")
    assert await _check(must, "Answer: 42") == []
    assert await _check(must, "42") == ["does not match the pattern '^Answer:'"]
    must_not = _v("regex_match", pattern=r"\d{16}", must_match=False)
    assert await _check(must_not, "no card here") == []
    assert await _check(must_not, "card 4111111111111111") == [
        "matches the forbidden pattern '\\\\d{16}'"
    ]


async def test_disabled_validator_is_skipped_but_checked() -> None:
    v = Validator(type="max_length", enabled=False, params={"max_characters": 1})
    assert await _check(v, "much longer than one") == []
    with pytest.raises(PromptPackError, match="unknown validator type 'nope'"):
        Guardrails([Validator(type="nope", enabled=False)])
    with pytest.raises(PromptPackError, match="max_characters"):
        Guardrails([Validator(type="max_length", enabled=False, params={"max_characters": -1})])


async def test_a_validator_that_raises_is_a_violation() -> None:
    registry = ValidatorRegistry()

    def broken(reply: Message, params: dict[str, Any]) -> str | None:
        raise RuntimeError("bug")

    registry.register("broken", broken)
    violations = await Guardrails([Validator(type="broken")], registry).check(
        Message("assistant", "hi")
    )
    assert [v.message for v in violations] == ["the validator raised RuntimeError"]


# -- load-time refusal ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("validator", "problem"),
    [
        ({"type": "banned_wrods", "enabled": True}, "unknown validator type 'banned_wrods'"),
        ({"type": "sentiment", "enabled": False}, "unknown validator type 'sentiment'"),
        ({"type": "banned_words", "enabled": True}, "params.words"),
        ({"type": "banned_words", "params": {"words": [""]}}, "non-empty strings"),
        ({"type": "banned_words", "params": {"words": ["a"], "x": 1}}, "unknown param"),
        ({"type": "max_length", "params": {}}, "max_characters and/or max_tokens"),
        ({"type": "length", "params": {"max_tokens": "10"}}, "max_tokens must be an integer"),
        ({"type": "max_sentences", "params": {"max_sentences": 0}}, "max_sentences must be"),
        ({"type": "regex_match", "params": {"pattern": "("}}, "not a valid regular expression"),
        ({"type": "regex_match", "params": {"pattern": "a", "must_match": 1}}, "must_match"),
        ({"type": "max_length", "enabled": "yes"}, "enabled: must be a boolean"),
        ({"type": "max_length", "fail_on_violaton": True}, "unknown field(s) 'fail_on_violaton'"),
        ({"type": "", "enabled": True}, "type: must be a non-empty string"),
        ("banned_words", "must be an object"),
    ],
)
def test_load_pack_refuses_unknown_types_and_bad_params(
    tmp_path: Path, validator: object, problem: str
) -> None:
    path = tmp_path / "guarded.pack.json"
    import json

    path.write_text(json.dumps(_pack([validator])))  # type: ignore[list-item]
    with pytest.raises(PromptPackError) as info:
        load_pack(path)
    assert problem in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(PromptPackError):
        ConversationManager(MockProvider(["x"])).load_pack(path)


def test_validators_must_be_an_array() -> None:
    doc = _pack([])
    doc["prompts"]["chat"]["validators"] = {"type": "max_length"}
    with pytest.raises(PromptPackError, match="validators: must be an array"):
        PromptPack.from_dict(doc)


def test_loaded_validators_are_kept_on_the_prompt() -> None:
    pack = PromptPack.from_dict(
        _pack([{"type": "max_length", "enabled": True, "params": {"max_characters": 9}}])
    )
    assert pack.prompt("chat").validators == (
        Validator(type="max_length", params={"max_characters": 9}),
    )


async def test_register_validator_makes_a_custom_type_known() -> None:
    calls: list[dict[str, Any]] = []

    async def no_shouting(reply: Message, params: dict[str, Any]) -> str | None:
        calls.append(params)
        return "shouts" if reply.content.isupper() else None

    doc = _pack([{"type": "no_shouting", "enabled": True, "fail_on_violation": True}])
    async with ConversationManager(MockProvider(["fine", "LOUD"])) as manager:
        with pytest.raises(PromptPackError, match="unknown validator type 'no_shouting'"):
            manager.add_pack(PromptPack.from_dict(doc, validators=_registry_with(no_shouting)))
        manager.register_validator(
            "no_shouting",
            no_shouting,
            check_params=lambda p: None if not p else "takes no params",
        )
        pack = manager.add_pack(PromptPack.from_dict(doc, validators=_registry_with(no_shouting)))
        conv = await manager.new_conversation(pack)
        assert (await conv.send("hi")).content == "fine"
        with pytest.raises(GuardrailError, match="no_shouting: shouts"):
            await conv.send("again")
        assert calls == [{}, {}]
        assert [m.content for m in await conv.history()] == ["hi", "fine"]

        bad = _pack([{"type": "no_shouting", "enabled": True, "params": {"x": 1}}])
        with pytest.raises(PromptPackError, match="takes no params"):
            manager.add_pack(PromptPack.from_dict(bad, validators=_registry_with(no_shouting)))

    with pytest.raises(ValidationError):
        ValidatorRegistry().register("", no_shouting)
    with pytest.raises(ValidationError):
        ValidatorRegistry().register("x", "not callable")  # type: ignore[arg-type]


def _registry_with(fn: Any) -> ValidatorRegistry:
    registry = ValidatorRegistry()
    registry.register("no_shouting", fn)
    return registry


# -- turns ------------------------------------------------------------------------------------


async def _manager_conv(
    replies: list[str], validators: list[dict[str, Any]]
) -> tuple[ConversationManager, Any]:
    manager = ConversationManager(MockProvider(replies), MemoryStore())
    pack = manager.add_pack(PromptPack.from_dict(_pack(validators)))
    conv = await manager.new_conversation(pack, ConversationConfig(conversation_id="c1"))
    return manager, conv


BANNED = {"type": "banned_words", "enabled": True, "params": {"words": ["darn"]}}


async def test_send_fail_on_violation_raises_and_stores_nothing() -> None:
    manager, conv = await _manager_conv(
        ["all good", "oh darn"], [{**BANNED, "fail_on_violation": True}]
    )
    async with manager:
        await conv.send("first")
        before = await conv.state()
        with pytest.raises(GuardrailError) as info:
            await conv.send("second")
        assert info.value.violations[0].type == "banned_words"
        assert "'darn'" in str(info.value)
        after = await conv.state()
        assert after.messages == before.messages
        assert after.version == before.version
        assert after.total_cost == before.total_cost


async def test_send_without_fail_records_and_logs_the_violation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, conv = await _manager_conv(["oh darn"], [BANNED])
    async with manager:
        with caplog.at_level(logging.WARNING, logger="promptstate"):
            resp = await conv.send("hello there")
        recorded = [{"type": "banned_words", "message": "contains banned word(s) 'darn'"}]
        assert resp.message.metadata[VIOLATIONS_KEY] == recorded
        stored = await conv.history()
        assert stored[-1].metadata[VIOLATIONS_KEY] == recorded
        (record,) = [r for r in caplog.records if r.name == "promptstate.stages.check_reply"]
        assert record.levelno == logging.WARNING
        assert "banned_words" in record.getMessage()
        assert "hello there" not in caplog.text  # no prompt text at WARNING


async def test_passing_reply_has_no_violations_recorded() -> None:
    manager, conv = await _manager_conv(["fine"], [{**BANNED, "fail_on_violation": True}])
    async with manager:
        resp = await conv.send("hi")
        assert VIOLATIONS_KEY not in resp.message.metadata


async def test_stream_fail_on_violation_raises_after_the_text_and_stores_nothing() -> None:
    manager, conv = await _manager_conv(["oh darn it"], [{**BANNED, "fail_on_violation": True}])
    async with manager:
        seen: list[str] = []

        async def consume() -> None:
            async with aclosing(conv.stream("hi")) as chunks:
                async for chunk in chunks:
                    seen.append(chunk.text)

        with pytest.raises(GuardrailError):
            await consume()
        assert "".join(seen) == "oh darn it"
        assert await conv.history() == []
        assert (await conv.state()).version == 1  # only the new_conversation write


async def test_stream_without_fail_stores_the_violation() -> None:
    manager, conv = await _manager_conv(["oh darn"], [BANNED])
    async with manager:
        async with aclosing(conv.stream("hi")) as chunks:
            last = [c async for c in chunks][-1]
        assert last.done
        assert last.message is not None
        assert last.message.metadata[VIOLATIONS_KEY][0]["type"] == "banned_words"
        assert (await conv.history())[-1].metadata[VIOLATIONS_KEY] == (
            last.message.metadata[VIOLATIONS_KEY]
        )


async def test_get_conversation_refuses_validators_it_does_not_know() -> None:
    store = MemoryStore()

    def never(reply: Message, params: dict[str, Any]) -> str | None:
        return "always wrong"

    registry = _registry_with(never)
    doc = _pack([{"type": "no_shouting", "enabled": True, "fail_on_violation": True}])
    async with ConversationManager(MockProvider(["x"]), store) as first:
        first.register_validator("no_shouting", never)
        pack = first.add_pack(PromptPack.from_dict(doc, validators=registry))
        await first.new_conversation(pack, ConversationConfig(conversation_id="c1"))
    async with ConversationManager(MockProvider(["x"]), store) as second:
        with pytest.raises(PromptPackError, match="unknown validator type 'no_shouting'"):
            await second.get_conversation("c1")
        second.register_validator("no_shouting", never)
        conv = await second.get_conversation("c1")
        assert conv.validators == (Validator(type="no_shouting", fail_on_violation=True),)
        with pytest.raises(GuardrailError, match="always wrong"):
            await conv.send("hi")
        assert await conv.history() == []


async def test_custom_stages_get_the_check_stage() -> None:
    manager = ConversationManager(
        MockProvider(["oh darn"]),
        stages=lambda budget: [LoadState(), CallProvider(), SaveState()],
    )
    async with manager:
        pack = manager.add_pack(
            PromptPack.from_dict(_pack([{**BANNED, "fail_on_violation": True}]))
        )
        conv = await manager.new_conversation(pack)
        with pytest.raises(GuardrailError):
            await conv.send("hi")


# -- Pipeline ---------------------------------------------------------------------------------


async def test_pipeline_guardrails_default_and_per_turn() -> None:
    strict = Guardrails([_v("max_length", fail=True, max_characters=3)])
    lenient = Guardrails([_v("max_length", max_characters=3)])
    async with Pipeline(MockProvider(["long reply"] * 3), guardrails=strict) as pipe:
        with pytest.raises(GuardrailError):
            await pipe.execute("s", "user", "hi")
        result = await pipe.execute("s", "user", "hi", guardrails=lenient)
        assert result.response.metadata[VIOLATIONS_KEY][0]["type"] == "max_length"
        result = await pipe.execute("s", "user", "hi", guardrails=Guardrails([]))
        assert VIOLATIONS_KEY not in result.response.metadata
        assert len(await pipe.store.load("s")) == 4


async def test_pipeline_refuses_guardrails_it_cannot_check() -> None:
    stages = [LoadState(), CallProvider(), SaveState()]
    guard = Guardrails([_v("max_length", fail=True, max_characters=3)])
    async with Pipeline(MockProvider(["x"]), middleware=stages) as pipe:
        with pytest.raises(ValidationError, match="no CheckReply"):
            await pipe.execute("s", "user", "hi", guardrails=guard)
        assert await pipe.store.load("s") == []
    with pytest.raises(ValidationError, match="CheckReply"):
        Pipeline(MockProvider(["x"]), middleware=[CallProvider()], guardrails=guard)
    with pytest.raises(ValidationError, match="Guardrails"):
        Pipeline(MockProvider(["x"]), guardrails=[_v("max_length")])  # type: ignore[arg-type]
    # Given at construction, the stage is put before SaveState.
    async with Pipeline(MockProvider(["long"]), middleware=stages, guardrails=guard) as pipe:
        with pytest.raises(GuardrailError):
            await pipe.execute("s", "user", "hi")


async def test_tool_loop_checks_answers_with_text_only() -> None:
    def model(messages: list[Message]) -> Message | str:
        if messages[-1].role == "user":
            return Message("assistant", tool_calls=(ToolCall("c1", "lookup", "{}"),))
        return "the darn answer"

    def lookup() -> str:
        return "42"

    guard = Guardrails([_v("banned_words", fail=True, words=["darn"])])
    async with Pipeline(MockProvider(model), tools=[lookup], guardrails=guard) as pipe:
        with pytest.raises(GuardrailError):
            await pipe.execute("s", "user", "look it up")
        # The first round (the tool call, which has no text) was stored; the failing answer
        # was not.
        stored = await pipe.store.load("s")
        assert [m.role for m in stored] == ["user", "assistant"]
        assert stored[-1].tool_calls


def test_guardrail_error_pickles() -> None:
    error = GuardrailError("bad", violations=("v",))
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == "bad"
    assert again.violations == ("v",)


def test_the_docs_example_runs() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "guardrails.py")],
        env={"PYTHONPATH": str(root), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "flagged: [{'type': 'max_sentences'" in done.stdout
    assert "refused: [\"contains banned word(s) 'guarantee'\"]" in done.stdout
    assert "refused: ['the reply is all capitals']" in done.stdout
    assert "stored messages: 2" in done.stdout

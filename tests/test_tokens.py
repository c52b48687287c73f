"""Token counters: the heuristic, and tiktoken built offline from bpe-openai's files."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from promptstate import HeuristicTokenCounter, Message, TiktokenCounter, ToolCall, ValidationError
from promptstate.tokens import count_tokens, with_tokens

tiktoken = pytest.importorskip(
    "tiktoken", reason="tiktoken is not installed (pip install 'promptstate[tiktoken]')"
)
pytest.importorskip("bpe_openai", reason="bpe-openai is not installed (it ships the encodings)")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails, as it would offline."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_heuristic_counter() -> None:
    counter = HeuristicTokenCounter()
    assert counter.count(Message("user", "")) == 4
    assert counter.count(Message("user", "abcd")) == 5
    assert counter.count(Message("user", "abcde")) == 6
    call = Message("assistant", "", tool_calls=(ToolCall("1", "f", "{}"),))
    assert counter.count(call) == 4 + 3 + 1
    assert "per_message=4" in repr(counter)


def test_with_tokens_counts_once() -> None:
    counter = HeuristicTokenCounter()
    m = with_tokens(Message("user", "hello"), counter)
    assert m.tokens == counter.count(m)
    assert with_tokens(m, counter) is m
    assert count_tokens([m, Message("user", "abcd")], counter) == m.tokens + 5


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_tiktoken_counter_works_offline_and_matches_tiktoken(name: str) -> None:
    counter = TiktokenCounter(name)
    assert counter.encoding.name == name
    text = "Hello, world! Wie spät ist es in 東京? 🕐 <|endoftext|>"
    ids = counter.encode(text)
    assert counter.encoding.decode(ids) == text
    # Known token ids of these encodings.
    expected = {"o200k_base": [24912, 2375], "cl100k_base": [15339, 1917]}[name]
    assert counter.encode("hello world") == expected
    message = Message("user", text, name="alice")
    assert counter.count(message) == 3 + len(ids) + 1 + len(counter.encode("alice"))


def test_tiktoken_definitions_match_tiktoken_ext() -> None:
    """Our copies of the pattern and special tokens equal tiktoken's own definitions."""
    import tiktoken_ext.openai_public as public

    from promptstate.tokens import _BUNDLED, bundled_ranks

    for name, spec in _BUNDLED.items():
        original = public.load_tiktoken_bpe
        public.load_tiktoken_bpe = lambda *a, **k: {}  # type: ignore[assignment]
        try:
            definition = getattr(public, name)()
        finally:
            public.load_tiktoken_bpe = original
        assert definition["pat_str"] == spec["pat_str"]
        assert definition["special_tokens"] == spec["special_tokens"]
        ranks = bundled_ranks(name)
        assert len(ranks) > 100_000


@pytest.mark.usefixtures("no_network")
def test_for_model() -> None:
    assert TiktokenCounter.for_model("gpt-4o").encoding.name == "o200k_base"
    assert TiktokenCounter.for_model("gpt-4").encoding.name == "cl100k_base"
    with pytest.raises(ValidationError, match="no encoding"):
        TiktokenCounter.for_model("not-a-model")


@pytest.mark.usefixtures("no_network")
def test_unknown_encoding_offline_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="not available"):
        TiktokenCounter("no_such_encoding")


def test_tool_calls_are_counted() -> None:
    counter = TiktokenCounter()
    plain = Message("assistant", "")
    call = Message("assistant", "", tool_calls=(ToolCall("1", "lookup", '{"q": "x"}'),))
    assert counter.count(call) == counter.count(plain) + 3 + len(counter.encode("lookup")) + len(
        counter.encode('{"q": "x"}')
    )
    assert repr(counter) == "TiktokenCounter('o200k_base')"

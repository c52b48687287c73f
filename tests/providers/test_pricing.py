"""The price table and cost arithmetic."""

from __future__ import annotations

import logging

import pytest

from promptstate.providers.pricing import (
    ANTHROPIC_PRICES,
    OPENAI_PRICES,
    Price,
    cost_of,
    lookup_price,
)


def test_exact_snapshot_and_latest_names() -> None:
    assert lookup_price("gpt-4o-mini", OPENAI_PRICES) == OPENAI_PRICES["gpt-4o-mini"]
    assert lookup_price("gpt-4o-2024-08-06", OPENAI_PRICES) == OPENAI_PRICES["gpt-4o"]
    assert lookup_price("gpt-4o-mini-2024-07-18", OPENAI_PRICES) == OPENAI_PRICES["gpt-4o-mini"]
    assert (
        lookup_price("claude-sonnet-4-20250514", ANTHROPIC_PRICES)
        == ANTHROPIC_PRICES["claude-sonnet-4"]
    )
    assert (
        lookup_price("claude-3-5-haiku-latest", ANTHROPIC_PRICES)
        == ANTHROPIC_PRICES["claude-3-5-haiku"]
    )


def test_unknown_variants_are_not_priced_as_a_neighbour() -> None:
    assert lookup_price("gpt-4o-audio-preview", OPENAI_PRICES) is None
    assert lookup_price("claude-opus-4-9", ANTHROPIC_PRICES) is None
    assert lookup_price("llama3.1:8b", OPENAI_PRICES) is None


def test_unknown_model_logged_once_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="promptstate.providers.pricing")
    lookup_price("never-seen-model-x1", OPENAI_PRICES)
    lookup_price("never-seen-model-x1", OPENAI_PRICES)
    records = [r for r in caplog.records if "never-seen-model-x1" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG


def test_cost_arithmetic() -> None:
    price = Price(2.0, 8.0, cache_write=2.5, cache_read=0.2)
    assert cost_of(None, 1000, 1000) == 0.0
    assert cost_of(price, 1_000_000, 0) == pytest.approx(2.0)
    assert cost_of(price, 0, 500_000) == pytest.approx(4.0)
    # 1M prompt tokens of which 200k cache writes and 300k cache reads
    assert cost_of(
        price, 1_000_000, 0, cache_write_tokens=200_000, cache_read_tokens=300_000
    ) == pytest.approx(0.5 * 2.0 + 0.2 * 2.5 + 0.3 * 0.2)
    plain = Price(1.0, 1.0)
    assert cost_of(plain, 1_000_000, 0, cache_read_tokens=500_000) == pytest.approx(1.0)


def test_every_listed_price_is_positive() -> None:
    for table in (OPENAI_PRICES, ANTHROPIC_PRICES):
        for model, price in table.items():
            assert price.input > 0, model
            assert price.output >= price.input, model

"""What model calls cost: a small price table in USD per million tokens.

The table covers the common OpenAI and Anthropic models. A dated snapshot
(``gpt-4o-2024-08-06``, ``claude-sonnet-4-20250514``) or a ``-latest`` alias costs what its
base model costs; any other unknown model costs 0.0 (logged once at DEBUG). Prices change:
pass ``prices={"model": (input, output)}`` to a provider to override or extend the table.

Prices were taken from the vendors' public price lists; check them for your account.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import msgspec

__all__ = ["ANTHROPIC_PRICES", "OPENAI_PRICES", "Price", "PriceTable", "cost_of", "lookup_price"]

logger = logging.getLogger(__name__)


class Price(msgspec.Struct, frozen=True):
    """USD per million tokens.

    Attributes:
        input: Per million prompt tokens.
        output: Per million completion tokens.
        cache_write: Per million prompt tokens written to the prompt cache (``None``: ``input``).
        cache_read: Per million prompt tokens read from the prompt cache (``None``: ``input``).
    """

    input: float
    output: float
    cache_write: float | None = None
    cache_read: float | None = None


PriceTable = Mapping[str, Price]


def _oa(inp: float, out: float, cached: float | None = None) -> Price:
    return Price(inp, out, None, cached)


def _an(inp: float, out: float) -> Price:
    # Anthropic: 5-minute cache writes cost 1.25x input, cache reads 0.1x input.
    return Price(inp, out, round(inp * 1.25, 6), round(inp * 0.1, 6))


#: OpenAI list prices (standard tier).
OPENAI_PRICES: dict[str, Price] = {
    "gpt-5": _oa(1.25, 10.0, 0.125),
    "gpt-5-mini": _oa(0.25, 2.0, 0.025),
    "gpt-5-nano": _oa(0.05, 0.40, 0.005),
    "gpt-4.1": _oa(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _oa(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _oa(0.10, 0.40, 0.025),
    "gpt-4o": _oa(2.50, 10.0, 1.25),
    "gpt-4o-mini": _oa(0.15, 0.60, 0.075),
    "gpt-4-turbo": _oa(10.0, 30.0),
    "gpt-4": _oa(30.0, 60.0),
    "gpt-3.5-turbo": _oa(0.50, 1.50),
    "o1": _oa(15.0, 60.0, 7.50),
    "o1-mini": _oa(1.10, 4.40, 0.55),
    "o3": _oa(2.0, 8.0, 0.50),
    "o3-mini": _oa(1.10, 4.40, 0.55),
    "o4-mini": _oa(1.10, 4.40, 0.275),
}

#: Anthropic list prices.
ANTHROPIC_PRICES: dict[str, Price] = {
    "claude-opus-4-5": _an(5.0, 25.0),
    "claude-opus-4-1": _an(15.0, 75.0),
    "claude-opus-4-0": _an(15.0, 75.0),
    "claude-opus-4": _an(15.0, 75.0),
    "claude-sonnet-4-5": _an(3.0, 15.0),
    "claude-sonnet-4-0": _an(3.0, 15.0),
    "claude-sonnet-4": _an(3.0, 15.0),
    "claude-haiku-4-5": _an(1.0, 5.0),
    "claude-3-7-sonnet": _an(3.0, 15.0),
    "claude-3-5-sonnet": _an(3.0, 15.0),
    "claude-3-5-haiku": _an(0.80, 4.0),
    "claude-3-opus": _an(15.0, 75.0),
    "claude-3-haiku": _an(0.25, 1.25),
}

_SNAPSHOT = re.compile(r"^(?P<base>.+?)(?:-\d{8}|-\d{4}-\d{2}-\d{2}|-latest)$")
_unknown_logged: set[str] = set()


def lookup_price(model: str, table: PriceTable) -> Price | None:
    """The price of ``model`` in ``table``: exact, else its base model's; ``None`` if unknown.

    Only a date suffix (``-20250514``, ``-2024-08-06``) or ``-latest`` is stripped, so an
    unknown variant (``gpt-4o-audio-preview``) is never priced as its shorter neighbour.
    """
    price = table.get(model)
    if price is None:
        match = _SNAPSHOT.match(model)
        if match:
            price = table.get(match["base"])
    if price is None and model not in _unknown_logged:
        _unknown_logged.add(model)
        logger.debug("no price known for model %r; its cost is counted as 0.0", model)
    return price


def cost_of(
    price: Price | None,
    input_tokens: int,
    output_tokens: int,
    *,
    cache_write_tokens: int = 0,
    cache_read_tokens: int = 0,
) -> float:
    """USD for the tokens at ``price`` (0.0 without one).

    ``input_tokens`` counts every prompt token; ``cache_write_tokens`` and
    ``cache_read_tokens`` (parts of it) are billed at the cache prices instead.
    """
    if price is None:
        return 0.0
    plain = max(input_tokens - cache_write_tokens - cache_read_tokens, 0)
    write = price.input if price.cache_write is None else price.cache_write
    read = price.input if price.cache_read is None else price.cache_read
    total = (
        plain * price.input
        + cache_write_tokens * write
        + cache_read_tokens * read
        + output_tokens * price.output
    )
    return total / 1_000_000

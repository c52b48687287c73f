"""Model providers: the seam (:class:`Provider`) and the bundled implementations."""

from promptstate.providers.anthropic import AnthropicProvider
from promptstate.providers.base import Chunk, Completion, Provider
from promptstate.providers.mock import MockProvider
from promptstate.providers.openai import OpenAIProvider
from promptstate.providers.pricing import Price

__all__ = [
    "AnthropicProvider",
    "Chunk",
    "Completion",
    "MockProvider",
    "OpenAIProvider",
    "Price",
    "Provider",
]

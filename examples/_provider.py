"""The model for the example apps: OpenAI-compatible when configured, else a mock."""

from __future__ import annotations

import os

from promptstate.providers.base import Provider
from promptstate.types import Message


def remembering_mock(messages: list[Message]) -> str:
    """A mock model that answers from the history the store gave it."""
    users = [m.content for m in messages if m.role == "user"]
    if len(users) == 1:
        return f"You said {users[0]!r}. This is our first turn."
    return f"You said {users[-1]!r}; before that, {users[-2]!r}. This is turn {len(users)}."


def make_provider() -> Provider:
    """``OpenAIProvider`` when OPENAI_API_KEY or OPENAI_BASE_URL is set, else the mock."""
    base_url = os.environ.get("OPENAI_BASE_URL")
    if os.environ.get("OPENAI_API_KEY") or base_url:
        import promptstate.providers

        openai = getattr(promptstate.providers, "OpenAIProvider", None)
        if openai is not None:
            provider: Provider = openai(
                os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), base_url=base_url
            )
            return provider
    from promptstate.providers.mock import MockProvider

    return MockProvider(remembering_mock)

"""Talk to a real model through promptstate: OpenAI, Anthropic, or a local OpenAI-compatible server.

Which endpoint is used depends on the environment:

* ``OPENAI_BASE_URL`` (e.g. ``http://localhost:11434/v1`` for Ollama) → that server, with
  ``OPENAI_API_KEY`` if set; the model from ``PROMPTSTATE_MODEL`` (default ``llama3.1``);
* else ``OPENAI_API_KEY`` → OpenAI (model default ``gpt-4o-mini``);
* else ``ANTHROPIC_API_KEY`` → Anthropic (model default ``claude-3-5-haiku-latest``);
* else it says what to set and exits without doing anything.

Run it with ``python examples/real_endpoint.py``. It sends a few short requests (a fraction
of a cent on the paid APIs): one turn, one streamed turn, and one turn that calls a tool.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timezone

from promptstate import AnthropicProvider, MemoryStore, OpenAIProvider, Pipeline, ProviderError


def utc_time(city: str) -> str:
    """The current UTC time, for a city the user asked about.

    Args:
        city: The city the user mentioned.
    """
    return f"It is {datetime.now(timezone.utc):%H:%M} UTC (asked for {city})."


def choose_provider() -> OpenAIProvider | AnthropicProvider | None:
    model = os.environ.get("PROMPTSTATE_MODEL")
    if os.environ.get("OPENAI_BASE_URL"):
        return OpenAIProvider(model or "llama3.1", base_url=os.environ["OPENAI_BASE_URL"])
    if os.environ.get("OPENAI_API_KEY"):
        return OpenAIProvider(model or "gpt-4o-mini")
    if os.environ.get("ANTHROPIC_API_KEY"):
        return AnthropicProvider(model or "claude-3-5-haiku-latest", max_tokens=512)
    return None


async def main() -> int:
    provider = choose_provider()
    if provider is None:
        print(
            "No endpoint configured: set OPENAI_API_KEY, ANTHROPIC_API_KEY, or OPENAI_BASE_URL "
            "(a local OpenAI-compatible server such as Ollama, vLLM or llama.cpp)."
        )
        return 0
    print(f"Using {provider!r}")
    try:
        async with (
            provider,
            MemoryStore() as store,
            Pipeline(provider, store=store, tools=[utc_time], max_tool_rounds=2) as pipe,
        ):
            result = await pipe.execute("demo", "user", "Hi, I'm Alice. Reply in one sentence.")
            print(f"assistant: {result.response.content}")
            print(f"  usage: {result.usage}, cost: ${result.cost:.6f}")

            print("assistant (streamed): ", end="", flush=True)
            async for chunk in pipe.stream("demo", "user", "What's my name? One word."):
                print(chunk.text, end="", flush=True)
                if chunk.done:
                    print(f"\n  usage: {chunk.usage}, cost: ${chunk.cost:.6f}")

            result = await pipe.execute("demo", "user", "What time is it in Oslo? Use the tool.")
            print(f"assistant (after tools): {result.response.content}")
            state = await store.get("demo")
            print(f"stored: {len(state.messages)} messages, total cost ${state.total_cost:.6f}")
    except ProviderError as exc:
        print(f"The provider failed: {exc} (status {exc.status_code})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

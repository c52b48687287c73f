"""Traces of pipeline turns printed to the console (needs opentelemetry-sdk)."""

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from promptstate import ConversationManager, MockProvider

# Wire the SDK once, at start-up, before the first turn: promptstate reports to the global
# tracer provider by itself (nothing to register).
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(provider)


async def main() -> None:
    model = MockProvider(["Hello Alice!", "You are Alice."], model="mock-model")
    async with ConversationManager(model) as manager:
        conv = await manager.new_conversation()
        await conv.send("Hi, I'm Alice")  # spans: promptstate.turn > load, chat, save
        async for chunk in conv.stream("Who am I?"):  # a streamed turn: the same spans
            print(chunk.text, end="", flush=True)
        print()


if __name__ == "__main__":
    asyncio.run(main())
    provider.shutdown()

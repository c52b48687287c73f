"""Guardrails from a prompt pack: a reply that breaks a rule is refused or flagged."""

import asyncio
import logging

from promptstate import ConversationManager, GuardrailError, Message, MockProvider, PromptPack

PACK = {
    "id": "support",
    "name": "Support",
    "version": "1.0.0",
    "template_engine": {"version": "v1", "syntax": "{{variable}}"},
    "prompts": {
        "agent": {
            "id": "agent",
            "name": "Agent",
            "version": "1.0.0",
            "system_template": "You answer support questions briefly.",
            "validators": [
                # Refused: the turn raises GuardrailError and nothing of it is stored.
                {
                    "type": "banned_words",
                    "enabled": True,
                    "fail_on_violation": True,
                    "params": {"words": ["guarantee"]},
                },
                # Flagged: logged and recorded in the reply's metadata["violations"].
                {"type": "max_sentences", "enabled": True, "params": {"max_sentences": 2}},
                # A type of your own, registered below.
                {"type": "no_shouting", "enabled": True, "fail_on_violation": True},
            ],
        }
    },
}


def no_shouting(reply: Message, params: dict[str, object]) -> str | None:
    return "the reply is all capitals" if reply.content.isupper() else None


async def main() -> None:
    replies = [
        "Your parcel ships today. It arrives Monday. Anything else?",
        "We guarantee it arrives Monday.",
        "IT ARRIVES MONDAY.",
    ]
    async with ConversationManager(MockProvider(replies)) as manager:
        manager.register_validator("no_shouting", no_shouting)  # before loading the pack
        pack = manager.add_pack(PromptPack.from_dict(PACK, validators=manager.validators))
        conv = await manager.new_conversation(pack)

        resp = await conv.send("Where is my parcel?")
        print("flagged:", resp.message.metadata["violations"])
        for question in ["Will it arrive Monday?", "Are you sure?"]:
            try:
                await conv.send(question)
            except GuardrailError as exc:
                print("refused:", [v.message for v in exc.violations])
        print("stored messages:", len(await conv.history()))  # only the first turn's 2


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())

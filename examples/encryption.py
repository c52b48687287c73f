"""Conversations encrypted at rest (AES-256-GCM), and a key rotation."""

import asyncio
import os
import tempfile

from promptstate import ConversationConfig, ConversationManager, EncryptedStore, MockProvider
from promptstate.stores.sqlite import SQLiteStore


async def main() -> None:
    # Keys are 32 random bytes each; keep them in your secret manager, never in the store.
    k1, k2 = os.urandom(32), os.urandom(32)
    path = os.path.join(tempfile.mkdtemp(), "chat.db")

    async with SQLiteStore(path) as inner:
        store = EncryptedStore(inner, keys={"k1": k1}, active="k1")
        async with ConversationManager(MockProvider(["Noted, Alice."]), store) as manager:
            conv = await manager.new_conversation(None, ConversationConfig(conversation_id="a:1"))
            await conv.send("My PIN is 1234")
            print("through the store:", [m.content for m in await conv.history()])

        raw = await inner.load("a:1")  # what the database holds
        print("in the database:  ", raw[0].content[:24] + "...")

        # Rotation: add the new key, make it active, re-seal what the old key sealed.
        store = EncryptedStore(inner, keys={"k1": k1, "k2": k2}, active="k2")
        print("sessions re-sealed:", await store.rotate())
        only_k2 = EncryptedStore(inner, keys={"k2": k2}, active="k2")
        print("after rotation:   ", [m.content for m in await only_k2.load("a:1")])


if __name__ == "__main__":
    asyncio.run(main())

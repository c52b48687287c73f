"""The OpenAI Agents SDK: any promptstate store as an Agents ``Session``.

::

    from agents import Agent, Runner
    from promptstate import RedisStore
    from promptstate.integrations.openai_agents import PromptStateSession

    async with RedisStore.from_url("redis://localhost:6379/0") as store:
        session = PromptStateSession("user-42", store)
        result = await Runner.run(agent, "Hello", session=session)

:class:`PromptStateSession` follows the SDK's ``Session`` protocol (``get_items``,
``add_items``, ``pop_item``, ``clear_session``, ``session_id``, ``session_settings``). Needs
``pip install 'promptstate[agents]'``.

How items are stored
--------------------
Every SDK item (a dict in one of the Responses input-item shapes) is one promptstate
:class:`~promptstate.Message`, so the CLI, listings, token counts and truncation see the
conversation: a message keeps its role and its text, a ``function_call`` becomes an assistant
message with a :class:`~promptstate.ToolCall`, a ``function_call_output`` a ``tool`` message,
and anything else (reasoning items with encrypted content, hosted tool calls, item types a
later SDK adds) an assistant message without text. The item itself is kept verbatim in the
message's ``metadata["agents_item"]`` and is what :meth:`PromptStateSession.get_items`
returns, so every item round-trips exactly (dict equality), whatever its type.

A message in the session that has no ``agents_item`` (written by promptstate's own pipeline,
say) is read back as the item it corresponds to: ``{"role": ..., "content": ...}``, a
``function_call_output`` for a ``tool`` message, and one ``function_call`` per tool call of an
assistant message (the only case where one message gives several items).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    from agents.memory.session_settings import SessionSettings
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "promptstate.integrations.openai_agents needs the OpenAI Agents SDK 0.24 or later:"
        " pip install 'promptstate[agents]'"
    ) from exc

import msgspec

from promptstate.exceptions import ValidationError
from promptstate.stores.base import Store, validate_key
from promptstate.types import Message, ToolCall

__all__ = ["ITEM_KEY", "PromptStateSession", "item_to_message", "message_to_items"]

#: The ``Message.metadata`` key that holds the SDK item verbatim.
ITEM_KEY = "agents_item"

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_json_encode = msgspec.json.Encoder().encode


def _text_of(content: object) -> str:
    """The text of a message's ``content``: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text", part.get("refusal"))
                if isinstance(text, str):
                    texts.append(text)
        return "".join(texts)
    return ""


def item_to_message(item: Mapping[str, Any]) -> Message:
    """The promptstate message an SDK item is stored as (the item is in its metadata).

    Raises:
        ValidationError: ``item`` is not a dict with ``str`` keys.
    """
    if not isinstance(item, Mapping):
        raise ValidationError(
            f"an Agents SDK session item must be a dict, got {type(item).__name__}"
        )
    raw = dict(item)
    kind = raw.get("type")
    role = raw.get("role")
    if kind in (None, "message") and role in _ROLES:
        return Message(_ROLES[role], _text_of(raw.get("content")), metadata={ITEM_KEY: raw})
    call_id = raw.get("call_id")
    if kind == "function_call":
        name, arguments = raw.get("name"), raw.get("arguments")
        if isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str):
            return Message(
                "assistant",
                tool_calls=(ToolCall(call_id, name, arguments),),
                metadata={ITEM_KEY: raw},
            )
    if isinstance(kind, str) and kind.endswith("_output"):
        output = raw.get("output")
        text = output if isinstance(output, str) else _text_of(output)
        return Message(
            "tool",
            text,
            tool_call_id=call_id if isinstance(call_id, str) else None,
            metadata={ITEM_KEY: raw},
        )
    # Reasoning, hosted tool calls, item references, types a later SDK adds: kept verbatim.
    return Message("assistant", metadata={ITEM_KEY: raw})


def message_to_items(message: Message) -> list[dict[str, Any]]:
    """The SDK items a stored message stands for: its ``agents_item`` when it has one."""
    raw = message.metadata.get(ITEM_KEY)
    if isinstance(raw, dict):
        return [raw]
    if message.role == "tool":
        return [
            {
                "type": "function_call_output",
                "call_id": message.tool_call_id or "",
                "output": message.content,
            }
        ]
    items: list[dict[str, Any]] = []
    if message.content or not message.tool_calls:
        items.append({"role": message.role, "content": message.content})
    items.extend(
        {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}
        for c in message.tool_calls
    )
    return items


def _items_of(messages: Sequence[Message]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for message in messages:
        items.extend(message_to_items(message))
    return items


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValidationError(f"limit must be None or an int >= 0, got {limit!r}")
    return limit


class PromptStateSession:
    """An OpenAI Agents SDK ``Session`` kept in a promptstate store.

    Args:
        session_id: The session's key in ``store``.
        store: Any promptstate store (borrowed: closing it is up to you).
        session_settings: The SDK's ``SessionSettings`` (or a dict of them); its ``limit``
            is how many of the newest items a run reads when it does not say.

    Every method is one store call: ``get_items(limit=n)`` reads only the newest ``n``
    messages, ``add_items`` is one atomic append, ``pop_item`` one atomic
    :meth:`~promptstate.Store.pop_messages` (two concurrent pops never return the same item)
    and ``clear_session`` deletes the session.
    """

    def __init__(
        self,
        session_id: str,
        store: Store,
        *,
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
    ) -> None:
        validate_key(session_id, what="session_id")
        if not isinstance(store, Store):
            raise ValidationError(f"store must be a promptstate Store, got {store!r}")
        self.session_id = session_id
        self._store = store
        if isinstance(session_settings, Mapping):
            session_settings = SessionSettings(**session_settings)
        elif session_settings is not None and not isinstance(session_settings, SessionSettings):
            raise ValidationError(
                f"session_settings must be a SessionSettings or a dict, got {session_settings!r}"
            )
        self.session_settings: SessionSettings | None = session_settings

    @property
    def store(self) -> Store:
        """The store the session is kept in."""
        return self._store

    def __repr__(self) -> str:
        return f"PromptStateSession({self.session_id!r}, {self._store!r})"

    async def get_items(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The items, oldest first; only the newest ``limit`` when given.

        Without ``limit``, ``session_settings.limit`` applies (all items when that is
        ``None`` too). ``limit=0`` returns ``[]``.

        Raises:
            ValidationError: ``limit`` is not ``None`` or an int >= 0.
        """
        limit = _check_limit(limit)
        if limit is None and self.session_settings is not None:
            limit = _check_limit(getattr(self.session_settings, "limit", None))
        if limit is None:
            return _items_of(await self._store.load(self.session_id))
        if limit == 0:
            return []
        items = _items_of(await self._store.load(self.session_id, last=limit))
        return items[-limit:]

    async def add_items(self, items: list[Any]) -> None:
        """Append ``items`` at the end, all or none, in one write.

        Raises:
            ValidationError: An item is not a dict, or holds something a store cannot keep
                (values that are not JSON); nothing is written then.
        """
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise ValidationError(f"add_items() takes a list of items, got {type(items).__name__}")
        messages = [item_to_message(item) for item in items]
        if messages:
            await self._store.append(self.session_id, messages)

    async def pop_item(self) -> dict[str, Any] | None:
        """Remove the newest item and return it; ``None`` when the session is empty."""
        popped = await self._store.pop_messages(self.session_id)
        if not popped:
            return None
        return _items_of(popped)[-1]

    async def clear_session(self) -> None:
        """Delete every item of the session (the whole session in the store)."""
        await self._store.delete(self.session_id)

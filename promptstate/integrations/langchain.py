"""LangChain: any promptstate store as a ``BaseChatMessageHistory``.

::

    from langchain_core.runnables.history import RunnableWithMessageHistory
    from promptstate import RedisStore
    from promptstate.integrations.langchain import PromptStateChatMessageHistory

    store = RedisStore.from_url("redis://localhost:6379/0")
    chain = RunnableWithMessageHistory(
        prompt | model, lambda session_id: PromptStateChatMessageHistory(session_id, store)
    )

:class:`PromptStateChatMessageHistory` implements the async methods (``aget_messages``,
``aadd_messages``, ``aclear``) natively, one store call each. Needs
``pip install 'promptstate[langchain]'``.

How messages are stored
-----------------------
Each LangChain message is one promptstate :class:`~promptstate.Message` (``human`` as
``user``, ``ai`` as ``assistant`` with its ``tool_calls`` as
:class:`~promptstate.ToolCall` s, ``tool`` as ``tool``, ``system`` as ``system``), so the CLI,
listings and token counts see the conversation. Unless it is a plain ``HumanMessage``,
``AIMessage`` or ``SystemMessage`` (text content, nothing else set: rebuilt exactly from role,
text and name), the message itself, as LangChain's ``message_to_dict`` gives it, is kept in
``metadata["langchain_message"]`` and is what is read back: ``tool_calls``,
``usage_metadata``, content blocks, ids and response metadata all round trip. Messages
without it (plain ones, and those promptstate's own pipeline wrote) read back as the
``HumanMessage`` / ``AIMessage`` / ``ToolMessage`` / ``SystemMessage`` they correspond to.

The sync API
------------
``messages``, ``add_messages`` and ``clear`` work from code that runs no event loop in this
thread: they run the async method on an event loop kept for the thread (so a store's
connections, which belong to the loop that opened them, stay usable from one sync call to the
next). Use a store either from sync code or from async code, not both. Called while an event
loop runs in this thread, they raise :class:`~promptstate.exceptions.PromptStateError` naming
the async method to await instead: blocking the loop would stall every other task on it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        message_to_dict,
        messages_from_dict,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "promptstate.integrations.langchain needs langchain-core:"
        " pip install 'promptstate[langchain]'"
    ) from exc

from promptstate.exceptions import PromptStateError, ValidationError
from promptstate.stores.base import Store, validate_key
from promptstate.types import Message, ToolCall

__all__ = [
    "MESSAGE_KEY",
    "PromptStateChatMessageHistory",
    "from_langchain",
    "to_langchain",
]

#: The ``Message.metadata`` key that holds the LangChain message (``message_to_dict``).
MESSAGE_KEY = "langchain_message"

_T = TypeVar("_T")


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for block in content:
            if isinstance(block, str):
                texts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                texts.append(block["text"])
        return "".join(texts)
    return ""


def _role_of(message: BaseMessage) -> str:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, (ToolMessage, FunctionMessage)):
        return "tool"
    # A ChatMessage carries its own role; anything else is kept as a user message.
    role = getattr(message, "role", None)
    return role if role in ("user", "assistant", "system", "tool") else "user"


def from_langchain(message: BaseMessage) -> Message:
    """The promptstate message a LangChain message is stored as (it is in the metadata).

    Raises:
        ValidationError: ``message`` is not a LangChain ``BaseMessage``.
    """
    if not isinstance(message, BaseMessage):
        raise ValidationError(
            f"a chat history takes LangChain messages, got {type(message).__name__}"
        )
    role = _role_of(message)
    calls: tuple[ToolCall, ...] = ()
    if isinstance(message, AIMessage) and message.tool_calls:
        try:
            calls = tuple(
                ToolCall(
                    call.get("id") or "",
                    call["name"],
                    json.dumps(call.get("args", {}), ensure_ascii=False),
                )
                for call in message.tool_calls
            )
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"a tool call's args cannot be stored: {exc}") from exc
    tool_call_id = getattr(message, "tool_call_id", None)
    return Message(
        role,
        _text_of(message.content),
        name=message.name if isinstance(message.name, str) else None,
        tool_calls=calls,
        tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
        # A plain message is rebuilt from the fields above; the rest are kept whole.
        metadata={} if _is_plain(message) else {MESSAGE_KEY: message_to_dict(message)},
    )


_PLAIN = (HumanMessage, AIMessage, SystemMessage)


def _is_plain(message: BaseMessage) -> bool:
    """Whether :func:`to_langchain` rebuilds ``message`` exactly from role, text and name."""
    kind = type(message)
    if kind not in _PLAIN or not isinstance(message.content, str):
        return False
    if message.additional_kwargs or message.response_metadata or message.id is not None:
        return False
    return kind is not AIMessage or not (
        message.tool_calls  # type: ignore[attr-defined]
        or message.invalid_tool_calls  # type: ignore[attr-defined]
        or message.usage_metadata is not None  # type: ignore[attr-defined]
    )


def to_langchain(message: Message) -> BaseMessage:
    """The LangChain message a stored message stands for: the one stored, when there is one."""
    stored = message.metadata.get(MESSAGE_KEY)
    if isinstance(stored, dict):
        return messages_from_dict([stored])[0]
    if message.role == "user":
        return HumanMessage(content=message.content, name=message.name)
    if message.role == "system":
        return SystemMessage(content=message.content, name=message.name)
    if message.role == "tool":
        return ToolMessage(
            content=message.content, tool_call_id=message.tool_call_id or "", name=message.name
        )
    calls: list[Any] = []
    invalid: list[Any] = []
    for c in message.tool_calls:
        try:
            args = json.loads(c.arguments or "{}")
        except ValueError as exc:  # a model's broken JSON: LangChain's invalid_tool_calls
            invalid.append({"id": c.id, "name": c.name, "args": c.arguments, "error": str(exc)})
            continue
        if isinstance(args, dict):
            calls.append({"id": c.id, "name": c.name, "args": args})
        else:
            invalid.append({"id": c.id, "name": c.name, "args": c.arguments, "error": None})
    return AIMessage(
        content=message.content, name=message.name, tool_calls=calls, invalid_tool_calls=invalid
    )


# -- the sync API: one event loop per thread -------------------------------------------------

_local = threading.local()
_loops: list[asyncio.AbstractEventLoop] = []
_loops_lock = threading.Lock()


def _close_loops() -> None:
    with _loops_lock:
        for loop in _loops:
            if not loop.is_closed() and not loop.is_running():
                loop.close()
        _loops.clear()


atexit.register(_close_loops)


def _run_sync(coro: Coroutine[Any, Any, _T], method: str) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise PromptStateError(
            f"PromptStateChatMessageHistory.{method} was called while an event loop runs in"
            f" this thread: await the async method instead ({_ASYNC[method]})"
        )
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
        with _loops_lock:
            _loops.append(loop)
    return loop.run_until_complete(coro)


_ASYNC = {
    "messages": "await history.aget_messages()",
    "add_messages": "await history.aadd_messages(messages)",
    "add_message": "await history.aadd_messages([message])",
    "clear": "await history.aclear()",
}


class PromptStateChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat message history kept in a promptstate store.

    Args:
        session_id: The conversation's key in ``store``.
        store: Any promptstate store (borrowed: closing it is up to you).
        last: Read only the newest ``last`` messages (what the model sees), so that a turn's
            cost does not grow with the history; ``None`` (the default) reads them all, as
            LangChain's own histories do. A window never starts with a ``ToolMessage`` whose
            call it cut off (those are left out).
    """

    def __init__(self, session_id: str, store: Store, *, last: int | None = None) -> None:
        validate_key(session_id, what="session_id")
        if not isinstance(store, Store):
            raise ValidationError(f"store must be a promptstate Store, got {store!r}")
        if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < 1):
            raise ValidationError(f"last must be None or an int >= 1, got {last!r}")
        self.session_id = session_id
        self._store = store
        self._last = last

    @property
    def store(self) -> Store:
        """The store the history is kept in."""
        return self._store

    def __repr__(self) -> str:
        return f"PromptStateChatMessageHistory({self.session_id!r}, {self._store!r})"

    # -- async: the native API ------------------------------------------------------------

    async def aget_messages(self) -> list[BaseMessage]:
        """The messages, oldest first (``[]`` for a new conversation); the newest ``last``."""
        stored = await self._store.load(self.session_id, last=self._last)
        if self._last is not None:
            start = 0
            while start < len(stored) and stored[start].role == "tool":
                start += 1
            stored = stored[start:]
        return [to_langchain(m) for m in stored]

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages``, all or none, in one write.

        Raises:
            ValidationError: An item is not a LangChain message, or holds something a store
                cannot keep; nothing is written then.
        """
        given: object = messages
        if isinstance(given, (str, bytes, BaseMessage)) or not isinstance(given, Sequence):
            raise ValidationError(
                f"aadd_messages() takes a list of messages, got {type(messages).__name__}"
            )
        stored = [from_langchain(m) for m in messages]
        if stored:
            await self._store.append(self.session_id, stored)

    async def aclear(self) -> None:
        """Delete the conversation."""
        await self._store.delete(self.session_id)

    # -- sync: only where no event loop runs in this thread --------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The messages (sync; see the module's notes on the sync API)."""
        return _run_sync(self.aget_messages(), "messages")

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` (sync; see the module's notes on the sync API)."""
        _run_sync(self.aadd_messages(messages), "add_messages")

    def add_message(self, message: BaseMessage) -> None:
        """Append one message (sync; see the module's notes on the sync API)."""
        _run_sync(self.aadd_messages([message]), "add_message")

    def clear(self) -> None:
        """Delete the conversation (sync; see the module's notes on the sync API)."""
        _run_sync(self.aclear(), "clear")

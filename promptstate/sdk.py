"""Conversations: the high-level API most applications use.

::

    manager = ConversationManager(provider=provider, store=store)
    pack = manager.load_pack("./assistant.pack.json")
    conv = await manager.new_conversation(pack, ConversationConfig(
        user_id="user123", conversation_id="conv-456", prompt_name="assistant",
        variables={"user_name": "Alice"}, max_tokens=4000))
    resp = await conv.send("My name is Alice")     # resp.content, resp.usage, resp.cost
    conv = await manager.get_conversation("conv-456")   # also from another process

A :class:`ConversationManager` runs turns through a :class:`~promptstate.pipeline.Pipeline`
on one store and one provider. A :class:`Conversation` is a handle on one stored
conversation: it holds no history in memory, so any number of handles (in any number of
processes) can work on the same conversation, and turns on it never interleave.

What a conversation needs to carry on is stored with its state, in
``State.metadata["promptstate"]`` (the key :data:`METADATA_KEY`; the rest of ``metadata`` is
yours)::

    {"pack": "hello-example", "pack_version": "1.0.0", "prompt": "chat",
     "variables": {"user_name": "Alice"}, "system": "<the rendered system prompt>",
     "options": {"temperature": 0.7, "tools": [...]}, "max_tokens": 4000}

so :meth:`ConversationManager.get_conversation` needs neither the pack nor the variables.

Prompt packs (:class:`PromptPack`, :func:`load_pack`) are defined in :mod:`promptstate.packs`;
this module re-exports them, and ``promptstate.sdk.PromptPack`` etc. keep working.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from os import PathLike
from typing import Any

import msgspec

from promptstate._resource import AsyncResource
from promptstate.exceptions import (
    ConflictError,
    CorruptStateError,
    NotFoundError,
    PromptPackError,
    ValidationError,
)
from promptstate.locks import TurnRunner
from promptstate.packs import PromptPack, PromptTemplate, PromptTool, PromptVariable, load_pack
from promptstate.pipeline import Middleware, Pipeline
from promptstate.providers.base import Chunk, Provider
from promptstate.stages import SaveState
from promptstate.stages.check_reply import with_check_reply
from promptstate.stores.base import Store, validate_key
from promptstate.stores.memory import MemoryStore
from promptstate.stores.url import open_store
from promptstate.tokens import TokenCounter
from promptstate.types import Message, Part, SessionPage, State, ToolCall, Usage
from promptstate.validators import Guardrails, ValidatorFunction, ValidatorRegistry
from promptstate.validators import Validator as PromptValidator

__all__ = [
    "Conversation",
    "ConversationConfig",
    "ConversationManager",
    "METADATA_KEY",
    "PromptPack",
    "PromptTemplate",
    "PromptTool",
    "PromptVariable",
    "Response",
    "load_pack",
]

logger = logging.getLogger(__name__)

#: The ``State.metadata`` key under which a conversation's own settings are stored.
METADATA_KEY = "promptstate"


# -- conversations ----------------------------------------------------------------------------


class ConversationConfig(msgspec.Struct, kw_only=True):
    """How to start a conversation (:meth:`ConversationManager.new_conversation`).

    Attributes:
        user_id: Whose conversation it is; stored in ``State.user_id``.
        conversation_id: Its key in the store; a random id (32 hex digits) when ``None``.
        prompt_name: Which prompt of the pack; may be omitted when the pack has one prompt.
        variables: Values for the prompt's ``{{variables}}``.
        max_tokens: The prompt budget: older messages are left out of what the model sees so
            that the prompt fits (the stored history keeps everything). ``None``: the
            manager's default.
        max_messages: Show the model only the newest ``max_messages`` messages (the stored
            history keeps everything). ``None``: the manager's default.
        metadata: Your own JSON-compatible data, stored in ``State.metadata`` (the key
            ``"promptstate"`` is reserved).
        system_prompt: A system prompt to use instead of (or without) a pack.
        options: Provider request options added to (and overriding) the pack's parameters.
    """

    user_id: str | None = None
    conversation_id: str | None = None
    prompt_name: str | None = None
    variables: dict[str, Any] = {}
    max_tokens: int | None = None
    max_messages: int | None = None
    metadata: dict[str, Any] = {}
    system_prompt: str | None = None
    options: dict[str, Any] = {}


class Response(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to :meth:`Conversation.send`.

    Attributes:
        message: The assistant's message as stored.
        usage: Tokens the turn's model call consumed.
        cost: Its price in USD (0.0 when the model's price is unknown).
        conversation_id: The conversation it belongs to.
    """

    message: Message
    usage: Usage
    cost: float
    conversation_id: str

    @property
    def content(self) -> str:
        """The assistant's text."""
        return self.message.content

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tools the model asked to call."""
        return self.message.tool_calls

    @property
    def parts(self) -> tuple[Part, ...]:
        """The reply's other pieces: reasoning, images, audio, files (see ``Message.parts``)."""
        return self.message.parts


class _Settings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is stored under ``State.metadata["promptstate"]``."""

    pack: str | None = None
    pack_version: str | None = None
    prompt: str | None = None
    variables: dict[str, Any] = {}
    system: str | None = None
    options: dict[str, Any] = {}
    max_tokens: int | None = None
    max_messages: int | None = None
    validators: list[PromptValidator] = []


class Conversation:
    """A handle on one stored conversation.

    Get one from :meth:`ConversationManager.new_conversation` or
    :meth:`ConversationManager.get_conversation`. It keeps no history in memory; each call
    reads or writes the store. (A turn does not check that the conversation still exists:
    sending on a handle after :meth:`delete` starts a new session under the same id, without
    the stored settings.)

    Attributes:
        id: The conversation's key in the store.
        user_id: Whose conversation it is.
        metadata: Your metadata, as it was when the handle was made.
        pack_id: The id of the pack it was started from, if any.
        prompt_name: The prompt of the pack, if any.
        variables: The variable values it was started with.
        system_prompt: The rendered system prompt sent first on every turn (never stored as a
            message), if any.
        options: The provider request options sent on every turn.
        max_tokens: Its prompt budget, if any.
        max_messages: How many of the newest messages the model sees, if limited.
        validators: The prompt's validators, checked on every reply.
    """

    def __init__(self, manager: ConversationManager, state: State, settings: _Settings) -> None:
        self._manager = manager
        self.id = state.conversation_id
        self.user_id = state.user_id
        self.metadata = {k: v for k, v in state.metadata.items() if k != METADATA_KEY}
        self.pack_id = settings.pack
        self.prompt_name = settings.prompt
        self.variables = dict(settings.variables)
        self.system_prompt = settings.system
        self.options = dict(settings.options)
        self.max_tokens = settings.max_tokens
        self.max_messages = settings.max_messages
        self.validators = tuple(settings.validators)
        # Resolved now, so a type this manager does not know fails here, not open later.
        self._guardrails: Guardrails | None = (
            manager._guardrails(settings.validators, self.id) if settings.validators else None
        )
        self._settings = settings

    def __repr__(self) -> str:
        return (
            f"Conversation(id={self.id!r}, user_id={self.user_id!r}, "
            f"prompt_name={self.prompt_name!r})"
        )

    def _turn_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**self.options, **options} if options else self.options

    async def send(self, content: str | Message, **options: Any) -> Response:
        """Send a message and wait for the whole answer; both are stored.

        Args:
            content: The user's text, or a whole :class:`~promptstate.Message` (e.g. a
                ``tool`` message answering a tool call).
            **options: Provider request options for this turn only.

        Raises:
            ProviderError: The model failed; nothing was stored.
            GuardrailError: The reply violated a validator with ``fail_on_violation``;
                nothing of the turn was stored.
            SessionBusyError: Another turn held the conversation for the lock timeout.
        """
        pipe = self._manager._pipeline()
        result = await pipe.execute(
            self.id,
            *((content,) if isinstance(content, Message) else ("user", content)),
            system=self.system_prompt,
            options=self._turn_options(options),
            guardrails=self._guardrails,
            max_tokens=self.max_tokens,
            max_messages=self.max_messages,
        )
        return Response(
            message=result.response,
            usage=result.usage,
            cost=result.cost,
            conversation_id=self.id,
        )

    async def stream(self, content: str | Message, **options: Any) -> AsyncIterator[Chunk]:
        """Send a message and yield the answer as it arrives.

        Chunks carry ``.text``; the last one (``done`` true) carries the whole ``message``,
        ``usage`` and ``cost`` and comes after the turn is stored. A stream that fails or is
        left early stores nothing; a reply that violates a validator with
        ``fail_on_violation`` raises :class:`~promptstate.exceptions.GuardrailError` after its
        last text chunk, and nothing is stored.
        """
        pipe = self._manager._pipeline()
        chunks = pipe.stream(
            self.id,
            *((content,) if isinstance(content, Message) else ("user", content)),
            system=self.system_prompt,
            options=self._turn_options(options),
            guardrails=self._guardrails,
            max_tokens=self.max_tokens,
            max_messages=self.max_messages,
        )
        try:
            async for chunk in chunks:
                yield chunk
        finally:  # leaving early ends the turn now (nothing is stored), not at GC time
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def history(self, *, last: int | None = None) -> list[Message]:
        """The stored messages, oldest first (only the newest ``last`` when given)."""
        return await self._manager.store.load(self.id, last=last)

    async def state(self) -> State:
        """The whole stored state (``token_count``, ``total_cost``, ``version``, ...).

        Raises:
            NotFoundError: The conversation was deleted.
        """
        return await self._manager.store.get(self.id)

    async def fork(self, new_id: str | None = None) -> Conversation:
        """Copy the conversation to ``new_id`` (a random id when ``None``) and return it.

        The copy has the whole history and the same settings; later turns on either leave
        the other alone.

        Raises:
            ConflictError: ``new_id`` exists already.
            NotFoundError: This conversation was deleted.
        """
        target = uuid.uuid4().hex if new_id is None else validate_key(new_id)
        state = await self._manager.store.fork(self.id, target)
        return Conversation(self._manager, state, self._settings)

    async def branch(self, new_id: str | None = None, *, at: int) -> Conversation:
        """A new conversation holding the first ``at`` messages of this one ("edit and
        resend": branch before the message to change, then send the new one on the branch).

        The branch has the same settings (prompt, variables, budget) and metadata; later turns
        on either leave the other alone. ``at`` beyond the last message copies them all.

        Args:
            new_id: The branch's id (a random one when ``None``).
            at: How many of the first messages the branch keeps (0: none).

        Raises:
            ConflictError: ``new_id`` exists already.
            NotFoundError: This conversation was deleted.
            ValidationError: ``at`` is not an int >= 0.
        """
        target = uuid.uuid4().hex if new_id is None else validate_key(new_id)
        state = await self._manager.store.fork(self.id, target, at=at)
        return Conversation(self._manager, state, self._settings)

    async def undo(self, turns: int = 1) -> list[Message]:
        """Drop the last ``turns`` turns: each user message and what answered it (tool calls,
        tool results and the reply). "Regenerate" is ``undo()`` and sending the returned
        user message again.

        Holds the conversation like a turn does (within this process and, on stores with
        leases, across processes), so no turn is cut in half. Messages before the first user
        message (a stored system prompt) are kept. Reads only as many of the newest messages
        as it needs.

        Returns:
            The messages removed, oldest first (empty when there was no turn to drop).

        Raises:
            ValidationError: ``turns`` is not an int >= 1.
            SessionBusyError: A turn held the conversation for the lock timeout.
        """
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 1:
            raise ValidationError(f"turns must be an int >= 1, got {turns!r}")
        manager = self._manager
        manager._check_open()
        store = manager.store
        removed: list[Message] = []

        async def drop(lease: object) -> None:
            count = await store.count(self.id)
            last = 16
            while True:
                tail = await store.load(self.id, last=min(last, count))
                starts = [i for i, m in enumerate(tail) if m.role == "user"]
                if len(starts) >= turns or len(tail) >= count:
                    break
                last *= 4
            if starts:
                cut = starts[-turns] if len(starts) >= turns else starts[0]
                removed.extend(tail[cut:])
                await store.truncate(self.id, count - len(removed))

        # Held like a turn, by the same runner the pipeline's turns use.
        await manager._turns.run(self.id, drop)
        return removed

    async def delete(self) -> bool:
        """Delete the conversation from the store; True when it existed."""
        return await self._manager.store.delete(self.id)


class ConversationManager(AsyncResource):
    """Starts and resumes conversations on one store with one provider.

    Args:
        provider: The model provider (borrowed: not closed by :meth:`aclose`).
        store: A :class:`~promptstate.Store` (borrowed), a store URL such as
            ``"redis://localhost:6379/0"`` (opened and owned), or ``None`` for a new
            :class:`~promptstate.MemoryStore` (owned).
        max_tokens: The default prompt budget of conversations that set none.
        max_messages: The default message window of conversations that set none: the model
            sees the newest ``max_messages`` messages. Shapes the default stages only; with
            ``stages``, put a :class:`~promptstate.truncation.SlidingWindow` in them instead.
        token_counter: Counts tokens for truncation (default: the store's counter).
        lock_timeout: Seconds a turn waits for its conversation to be free.
        stages: A function from the default prompt budget (``max_tokens``, ``int | None``) to
            the pipeline stages, for your own middleware or another truncation strategy, e.g.
            ``lambda budget: [my_logger, *default_stages(budget)]`` or
            ``lambda budget: [LoadState(), Summarize(budget or 4000, 6, summarizer=p),
            CallProvider(), SaveState()]``. Called once. A conversation's own ``max_tokens``
            and ``max_messages`` are given to each of its turns, and the chain's
            :class:`~promptstate.truncation.TokenBudget`,
            :class:`~promptstate.truncation.Summarize` or
            :class:`~promptstate.truncation.SlidingWindow` applies them (a conversation with a
            limit the chain has no stage for fails its turns with
            :class:`~promptstate.exceptions.ValidationError`). Default:
            :func:`~promptstate.pipeline.default_stages`.

    The manager is an async context manager; :meth:`aclose` closes the store if the manager
    opened it. One manager per application is enough: it runs every conversation's turns
    through one pipeline, whatever their budgets, and shares the store's connections.
    """

    def __init__(
        self,
        provider: Provider,
        store: Store | str | None = None,
        *,
        max_tokens: int | None = None,
        max_messages: int | None = None,
        token_counter: TokenCounter | None = None,
        lock_timeout: float | None = 30.0,
        stages: Callable[[int | None], Sequence[Middleware]] | None = None,
    ) -> None:
        if not callable(getattr(provider, "complete", None)):
            raise ValidationError(f"provider must have complete() and stream(), got {provider!r}")
        _check_budget(max_tokens)
        _check_window(max_messages, stages)
        if store is None:
            self._store: Store = MemoryStore()
            self._owns_store = True
        elif isinstance(store, str):
            self._store = open_store(store)
            self._owns_store = True
        elif isinstance(store, Store):
            self._store = store
            self._owns_store = False
        else:
            raise ValidationError(f"store must be a Store, a URL or None, got {store!r}")
        self._provider = provider
        if stages is not None and not callable(stages):
            raise ValidationError(f"stages must be a function of the budget, got {stages!r}")
        middleware: list[Middleware] | None = None
        if stages is not None:
            middleware = list(stages(max_tokens))
            if any(isinstance(s, SaveState) for s in middleware):
                middleware = with_check_reply(middleware)  # so conversations' validators run
        self._pipe = Pipeline(
            provider,
            store=self._store,
            middleware=middleware,
            max_tokens=max_tokens,
            max_messages=max_messages,
            token_counter=token_counter,
            lock_timeout=lock_timeout,
        )
        # What holds a conversation like a turn outside the pipeline (undo).
        self._turns = TurnRunner(
            self._store, max_wait=self._pipe._lock_timeout, lease_ttl=_UNDO_LEASE_TTL
        )
        self._packs: dict[str, PromptPack] = {}
        self._validators = ValidatorRegistry()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"ConversationManager({type(self._provider).__name__}, "
            f"store={type(self._store).__name__})"
        )

    @property
    def store(self) -> Store:
        """The store conversations live in."""
        return self._store

    @property
    def provider(self) -> Provider:
        """The model provider."""
        return self._provider

    @property
    def validators(self) -> ValidatorRegistry:
        """The validator types packs of this manager may use (built-ins and registered).

        Pass it to :meth:`PromptPack.from_dict` or :func:`load_pack` as ``validators=``.
        """
        return self._validators

    @property
    def packs(self) -> Mapping[str, PromptPack]:
        """The packs loaded with :meth:`load_pack` or :meth:`add_pack`, by id."""
        return self._packs

    # -- lifecycle ----------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._owns_store:
            await self._store.__aenter__()

    async def aclose(self) -> None:
        """Close the pipelines, and the store if the manager opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._pipe.aclose()
        if self._owns_store:
            await self._store.aclose()

    def _pipeline(self) -> Pipeline:
        self._check_open()
        return self._pipe

    # -- packs --------------------------------------------------------------------------------

    def load_pack(self, path: str | PathLike[str]) -> PromptPack:
        """Read a PromptPack file (see :func:`load_pack`) and remember it by its id.

        Its validators may use the built-in types and those added with
        :meth:`register_validator`; any other type is refused with
        :class:`~promptstate.exceptions.PromptPackError`.
        """
        return self.add_pack(load_pack(path, validators=self._validators))

    def add_pack(self, pack: PromptPack) -> PromptPack:
        """Remember a pack by its id, so conversations can name it; returns it.

        Raises:
            PromptPackError: A validator of the pack has a type this manager does not know.
        """
        if not isinstance(pack, PromptPack):
            raise ValidationError(f"add_pack() takes a PromptPack, got {pack!r}")
        for prompt in pack.prompts.values():
            self._guardrails(prompt.validators, f"{pack.source}: prompts.{prompt.key}")
        self._packs[pack.id] = pack
        return pack

    def register_validator(
        self,
        type: str,
        fn: ValidatorFunction,
        *,
        check_params: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        """Add a validator type that packs loaded by this manager may use.

        ``fn(reply, params)`` (plain or async) returns ``None`` when the reply passes and
        otherwise a short text saying what is wrong (logged at WARNING: do not quote the
        reply in it). Register before loading the packs that use the type.

        Args:
            type: The name packs give as the validator's ``type``.
            fn: The check.
            check_params: Optional ``check(params) -> str | None`` run on a pack's params at
                load time (``None``: the params are good).
        """
        self._validators.register(type, fn, check_params=check_params)

    def _guardrails(self, validators: Sequence[PromptValidator], where: str) -> Guardrails:
        return Guardrails(validators, self._validators, where=f"{where}: validators")

    # -- conversations ------------------------------------------------------------------------

    async def new_conversation(
        self,
        pack: PromptPack | str | None = None,
        config: ConversationConfig | None = None,
    ) -> Conversation:
        """Start a conversation and store its (empty) state with its settings.

        Args:
            pack: The prompt pack (or the id of a loaded one); ``None`` for no pack.
            config: Who, which prompt, which variables, what budget; defaults for all.

        Raises:
            PromptPackError: The prompt is unknown, or a variable is missing or invalid.
            ConflictError: A conversation with this id exists already.
            ValidationError: A bad config value.
        """
        self._check_open()
        config = ConversationConfig() if config is None else config
        if not isinstance(config, ConversationConfig):
            raise ValidationError(f"config must be a ConversationConfig, got {config!r}")
        if isinstance(pack, str):
            try:
                pack = self._packs[pack]
            except KeyError:
                raise PromptPackError(f"no pack with id {pack!r} is loaded") from None
        if pack is not None and not isinstance(pack, PromptPack):
            raise ValidationError(f"pack must be a PromptPack, a pack id or None, got {pack!r}")
        _check_budget(config.max_tokens)
        _check_window(config.max_messages, None)
        # A limit the one pipeline's chain cannot apply fails here, not at the first turn.
        self._pipe._limits(config.max_tokens, config.max_messages)
        if config.user_id is not None and not isinstance(config.user_id, str):
            raise ValidationError(f"user_id must be a str or None, got {config.user_id!r}")
        if not isinstance(config.metadata, dict) or METADATA_KEY in config.metadata:
            raise ValidationError(
                f"metadata must be a dict without the reserved key {METADATA_KEY!r}"
            )
        key = uuid.uuid4().hex if config.conversation_id is None else config.conversation_id
        validate_key(key, what="conversation_id")

        settings = _Settings(max_tokens=config.max_tokens, max_messages=config.max_messages)
        options: dict[str, Any] = {}
        if pack is not None:
            prompt = pack.prompt(config.prompt_name)
            settings.pack = pack.id
            settings.pack_version = pack.version
            settings.prompt = prompt.key
            settings.system = pack.render(prompt.key, config.variables)
            options = pack.options(prompt.key)
            settings.validators = list(prompt.validators)
            self._guardrails(prompt.validators, f"{pack.source}: prompts.{prompt.key}")
        elif config.prompt_name is not None:
            raise PromptPackError(f"prompt_name {config.prompt_name!r} given without a pack")
        settings.variables = dict(config.variables)
        if config.system_prompt is not None:
            settings.system = config.system_prompt
        settings.options = {**options, **config.options}
        _check_json(settings, "conversation settings")
        _check_json(config.metadata, "metadata")

        state = State(
            conversation_id=key,
            user_id=config.user_id,
            metadata={**config.metadata, METADATA_KEY: msgspec.to_builtins(settings)},
        )
        try:
            stored = await self._store.set(key, state, expected_version=0)
        except ConflictError as exc:
            raise ConflictError(f"a conversation with id {key!r} exists already") from exc
        logger.debug("started conversation %r (pack %r)", key, settings.pack)
        return Conversation(self, stored, settings)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        """A handle on a stored conversation, with the settings it was started with.

        Works from any process using the same store, without loading its pack.

        Raises:
            NotFoundError: No conversation under that id.
        """
        self._check_open()
        try:
            state = await self._store.get(conversation_id)
        except NotFoundError:
            raise NotFoundError(f"no conversation with id {conversation_id!r}") from None
        return Conversation(self, state, _settings_of(state))

    async def list_conversations(
        self,
        prefix: str = "",
        *,
        user_id: str | None = None,
        order: str = "updated_desc",
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of conversations, newest first by default, without their messages.

        ``page.items`` are :class:`~promptstate.SessionInfo` (id, user, message count, tokens,
        cost, metadata, times); pass ``page.next_cursor`` as ``cursor`` for the next page
        (``None`` on the last one). Filtering by ``user_id`` and paging read only the page,
        from the store's index (see :meth:`Store.list_sessions`).

        Raises:
            ValidationError: A bad cursor, order or limit.
        """
        self._check_open()
        return await self._store.list_sessions(
            prefix=prefix, user_id=user_id, order=order, limit=limit, cursor=cursor
        )

    async def open_conversation(
        self,
        pack: PromptPack | str | None = None,
        config: ConversationConfig | None = None,
    ) -> Conversation:
        """The conversation ``config.conversation_id`` when it exists, else a new one.

        An existing conversation keeps the settings it was started with (``pack`` and the
        rest of ``config`` only shape a new one). Safe when two callers open the same new id
        at once: one creates it, the other gets it.

        Raises:
            ConflictError: The conversation exists and belongs to another user than
                ``config.user_id`` (when that is given): an id from a request never opens
                someone else's conversation.
            PromptPackError, ValidationError: As :meth:`new_conversation`, for a new one.
        """
        self._check_open()
        config = ConversationConfig() if config is None else config
        if not isinstance(config, ConversationConfig):
            raise ValidationError(f"config must be a ConversationConfig, got {config!r}")
        key = config.conversation_id
        if key is None:
            return await self.new_conversation(pack, config)
        validate_key(key, what="conversation_id")
        for _ in range(3):
            try:
                state = await self._store.get(key)
            except NotFoundError:
                try:
                    return await self.new_conversation(pack, config)
                except ConflictError:
                    continue  # created meanwhile by another caller: get it
            if config.user_id is not None and state.user_id != config.user_id:
                raise ConflictError(f"conversation {key!r} exists and belongs to another user")
            return Conversation(self, state, _settings_of(state))
        raise ConflictError(f"conversation {key!r} was created and deleted while opening it")

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation; True when it existed."""
        self._check_open()
        return await self._store.delete(conversation_id)


#: Lease lifetime of :meth:`Conversation.undo` on stores with leases (renewed while it runs).
_UNDO_LEASE_TTL = 30.0


def _check_budget(max_tokens: object) -> None:
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValidationError(f"max_tokens must be None or an int >= 1, got {max_tokens!r}")


def _check_window(max_messages: object, stages: object) -> None:
    if max_messages is None:
        return
    if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
        raise ValidationError(f"max_messages must be None or an int >= 1, got {max_messages!r}")
    if stages is not None:
        raise ValidationError(
            "max_messages shapes the default stages; with stages=..., put a "
            f"SlidingWindow({max_messages}) in them instead"
        )


def _check_json(value: object, what: str) -> None:
    try:
        msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(f"{what} must be JSON-compatible: {exc}") from exc


def _settings_of(state: State) -> _Settings:
    raw = state.metadata.get(METADATA_KEY)
    if raw is None:
        return _Settings()  # a session written by a pipeline or by hand: no settings
    try:
        return msgspec.convert(raw, _Settings)
    except msgspec.ValidationError as exc:
        raise CorruptStateError(
            f"conversation {state.conversation_id!r} has invalid metadata[{METADATA_KEY!r}]: {exc}"
        ) from exc

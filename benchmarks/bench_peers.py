"""The same turn through the libraries promptstate is measured against, on the same servers.

Run: ``python -m benchmarks.bench_peers`` (``--quick``), or everything: ``python -m benchmarks``.
Install the peers with ``pip install --group bench`` (or ``pip install openai-agents[redis,
sqlalchemy] langchain-postgres langgraph langgraph-checkpoint-postgres``); a peer that is not
installed is skipped with a note.

Each peer is used the way its documentation shows, with the semantics closest to a
promptstate turn (read what the model sees, append a user and an assistant message):

- **openai-agents** ``RedisSession`` (``agents.extensions.memory``): one ``redis.asyncio``
  client (64 connections) shared by a ``RedisSession`` per request, as a server would build
  one per conversation; ``get_items(limit=50)`` then ``add_items([user, assistant])``. Reads
  a window.
- **openai-agents** ``SQLAlchemySession`` on PostgreSQL (``postgresql+asyncpg``, pool of 10,
  ``create_tables=True``): ``get_items(limit=50)`` + ``add_items``. Reads a window.
- **langchain-postgres** ``PostgresChatMessageHistory`` (psycopg 3, an
  ``AsyncConnectionPool`` of 10, a history object per request on a pooled connection, as its
  docstring suggests): ``aget_messages()`` + ``aadd_messages([HumanMessage, AIMessage])``.
  It has no way to read a window: every turn reads the **whole** history.
- **langgraph** ``AsyncPostgresSaver`` (pool of 10 with ``autocommit``, ``prepare_threshold=0``
  and ``dict_row`` as its docs require): a one-node ``StateGraph(MessagesState)`` compiled
  with the checkpointer, ``ainvoke({"messages": [HumanMessage]}, thread_id=session)``, the
  node returning the ``AIMessage``. A checkpointer stores the whole graph state: every turn
  reads the **whole** history and writes it back as a new checkpoint.

Beside them, the adapters that let those frameworks' users switch stores by changing one line,
driven exactly like their framework's peer (rows of kind ``adapter``; ``ratio_vs_peer`` on
such a row is its time per turn over the same framework's own store on that backend):

- **openai-agents** ``PromptStateSession`` on ``RedisStore`` and on ``PostgresStore``:
  ``get_items(limit=50)`` + ``add_items``, one session object per conversation.
- **langchain** ``PromptStateChatMessageHistory`` on ``PostgresStore``: ``aget_messages()`` +
  ``aadd_messages``, a history object per request. Its interface has no window either: every
  turn reads the whole history, like ``PostgresChatMessageHistory``. A second row passes
  ``last=50``, the option the adapter adds: the turn then reads the newest 50.
"""

from __future__ import annotations

import uuid
from typing import Any

from benchmarks import _servers
from benchmarks.bench_turns import StoreTurn
from benchmarks.workload import (
    WINDOW,
    Contender,
    Env,
    Skip,
    assistant_text,
    history_messages,
    user_text,
)


def _agents_items(n: int) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in history_messages(n)]


def _need(module: str, install: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"not installed (pip install {install}): {exc}") from exc


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


class AgentsRedis(Contender):
    name = "openai-agents RedisSession"
    kind = "peer"
    backend = "redis"
    reads = "window"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.client: Any = None
        self.prefix = ""
        self._sessions: dict[str, Any] = {}

    async def open(self) -> None:
        url = self.env.need_redis()
        memory = _need("agents.extensions.memory", "'openai-agents[redis]'")
        self._cls = memory.RedisSession
        import redis.asyncio as aioredis

        self.name = f"openai-agents {_version('openai-agents')} RedisSession"
        self.prefix = self.env.redis_prefix("agents")
        # a blocking pool of 64, as RedisStore has: tasks beyond 64 wait for a connection
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=None)
        self.client = aioredis.Redis.from_pool(pool)
        await self.client.ping()

    def _session(self, session_id: str) -> Any:
        # One session object per conversation, kept for the run (the peer's best case).
        # key_prefix is joined with ":" by RedisSession.
        session = self._sessions.get(session_id)
        if session is None:
            session = self._cls(session_id, redis_client=self.client, key_prefix=self.prefix[:-1])
            self._sessions[session_id] = session
        return session

    async def populate(self, session_id: str, history: int) -> None:
        await self._session(session_id).add_items(_agents_items(history))

    async def turn(self, session_id: str, i: int) -> None:
        session = self._session(session_id)
        window = await session.get_items(limit=WINDOW)  # kept until the turn ends
        await session.add_items(
            [
                {"role": "user", "content": user_text(i)},
                {"role": "assistant", "content": assistant_text(i)},
            ]
        )
        del window

    async def reset(self) -> None:
        self._sessions.clear()
        await _servers.unlink_prefix(self.env.need_redis(), self.prefix)

    async def footprint(self) -> int | None:
        return (await _servers.redis_bytes(self.env.need_redis(), self.prefix))[0]

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def _sqlalchemy_url(dsn: str) -> str:
    _scheme, rest = dsn.split("://", 1)
    return f"postgresql+asyncpg://{rest}"


class AgentsSQLAlchemy(Contender):
    name = "openai-agents SQLAlchemySession"
    kind = "peer"
    backend = "postgres"
    reads = "window"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.engine: Any = None
        self.schema = ""
        self._sessions: dict[str, Any] = {}

    async def open(self) -> None:
        dsn = self.env.need_postgres()
        memory = _need("agents.extensions.memory", "'openai-agents[sqlalchemy]'")
        asyncio_ext = _need("sqlalchemy.ext.asyncio", "'sqlalchemy[asyncio]' asyncpg")
        self._cls = memory.SQLAlchemySession
        self.name = f"openai-agents {_version('openai-agents')} SQLAlchemySession"
        self.schema = self.env.pg_schema("sqla")
        await _servers.create_schema(dsn, self.schema)
        self.engine = asyncio_ext.create_async_engine(
            _sqlalchemy_url(dsn),
            pool_size=10,
            max_overflow=0,
            connect_args={"server_settings": {"search_path": self.schema}},
        )
        # The first session creates the tables, as the docs' create_tables=True does.
        await self._cls("setup", engine=self.engine, create_tables=True).get_items(limit=1)

    def _session(self, session_id: str) -> Any:
        # One session object per conversation, kept for the run (the peer's best case:
        # a new SQLAlchemySession builds new Table objects, whose statements SQLAlchemy then
        # compiles afresh).
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = self._cls(session_id, engine=self.engine)
        return session

    async def populate(self, session_id: str, history: int) -> None:
        await self._session(session_id).add_items(_agents_items(history))

    async def turn(self, session_id: str, i: int) -> None:
        session = self._session(session_id)
        window = await session.get_items(limit=WINDOW)  # kept until the turn ends
        await session.add_items(
            [
                {"role": "user", "content": user_text(i)},
                {"role": "assistant", "content": assistant_text(i)},
            ]
        )
        del window

    async def reset(self) -> None:
        from sqlalchemy import text

        self._sessions.clear()
        async with self.engine.begin() as conn:
            await conn.execute(text("TRUNCATE agent_messages, agent_sessions"))

    async def footprint(self) -> int | None:
        return (await _servers.pg_bytes(self.env.need_postgres(), self.schema))[0]

    async def aclose(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()


def _uuid(session_id: str) -> str:
    """langchain-postgres wants UUID session ids."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, session_id))


class LangchainPostgres(Contender):
    name = "langchain-postgres PostgresChatMessageHistory"
    kind = "peer"
    backend = "postgres"
    reads = "full"
    table = "chat_history"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.pool: Any = None
        self.schema = ""

    async def open(self) -> None:
        dsn = self.env.need_postgres()
        lcp = _need("langchain_postgres", "langchain-postgres")
        messages = _need("langchain_core.messages", "langchain-postgres")
        pool_mod = _need("psycopg_pool", "'psycopg[binary,pool]'")
        self._cls = lcp.PostgresChatMessageHistory
        self._human, self._ai = messages.HumanMessage, messages.AIMessage
        self.name = (
            f"langchain-postgres {_version('langchain-postgres')} PostgresChatMessageHistory"
        )
        self.schema = self.env.pg_schema("lc")
        await _servers.create_schema(dsn, self.schema)
        self.pool = pool_mod.AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=10,
            kwargs={"options": f"-c search_path={self.schema}"},
            open=False,
        )
        await self.pool.open()
        async with self.pool.connection() as conn:
            await self._cls.acreate_tables(conn, self.table)

    def _lc(self, messages: list[Any]) -> list[Any]:
        return [
            self._human(m.content) if m.role == "user" else self._ai(m.content) for m in messages
        ]

    async def populate(self, session_id: str, history: int) -> None:
        async with self.pool.connection() as conn:
            await self._cls(self.table, _uuid(session_id), async_connection=conn).aadd_messages(
                self._lc(history_messages(history))
            )

    async def turn(self, session_id: str, i: int) -> None:
        sid = _uuid(session_id)
        async with self.pool.connection() as conn:  # load; the model call happens in between
            window = await self._cls(self.table, sid, async_connection=conn).aget_messages()
        async with self.pool.connection() as conn:
            await self._cls(self.table, sid, async_connection=conn).aadd_messages(
                [self._human(user_text(i)), self._ai(assistant_text(i))]
            )
        del window

    async def reset(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(f"TRUNCATE {self.table}")

    async def footprint(self) -> int | None:
        return (await _servers.pg_bytes(self.env.need_postgres(), self.schema))[0]

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()


class LangGraphPostgres(Contender):
    name = "langgraph AsyncPostgresSaver"
    kind = "peer"
    backend = "postgres"
    reads = "full"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.pool: Any = None
        self.schema = ""

    async def open(self) -> None:
        dsn = self.env.need_postgres()
        aio = _need("langgraph.checkpoint.postgres.aio", "langgraph-checkpoint-postgres")
        graph_mod = _need("langgraph.graph", "langgraph")
        messages = _need("langchain_core.messages", "langgraph")
        pool_mod = _need("psycopg_pool", "'psycopg[binary,pool]'")
        rows = _need("psycopg.rows", "'psycopg[binary,pool]'")
        self._human, self._ai = messages.HumanMessage, messages.AIMessage
        self.name = (
            f"langgraph {_version('langgraph')} + AsyncPostgresSaver "
            f"{_version('langgraph-checkpoint-postgres')}"
        )
        self.schema = self.env.pg_schema("lg")
        await _servers.create_schema(dsn, self.schema)
        self.pool = pool_mod.AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=10,
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "row_factory": rows.dict_row,
                "options": f"-c search_path={self.schema}",
            },
            open=False,
        )
        await self.pool.open()
        saver = aio.AsyncPostgresSaver(self.pool)
        await saver.setup()
        ai = self._ai

        def model(state: dict[str, Any]) -> dict[str, Any]:
            return {"messages": [ai(assistant_text(len(state["messages"])))]}

        builder = graph_mod.StateGraph(graph_mod.MessagesState)
        builder.add_node("model", model)
        builder.add_edge(graph_mod.START, "model")
        self.graph = builder.compile(checkpointer=saver)

    @staticmethod
    def _config(session_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": session_id}}

    async def populate(self, session_id: str, history: int) -> None:
        # history - 1 input messages; the node adds the last one.
        msgs = [
            self._human(m.content) if m.role == "user" else self._ai(m.content)
            for m in history_messages(max(0, history - 1))
        ]
        await self.graph.ainvoke({"messages": msgs}, self._config(session_id))

    async def turn(self, session_id: str, i: int) -> None:
        await self.graph.ainvoke(
            {"messages": [self._human(user_text(i))]}, self._config(session_id)
        )

    async def reset(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("TRUNCATE checkpoints, checkpoint_blobs, checkpoint_writes")

    async def footprint(self) -> int | None:
        return (await _servers.pg_bytes(self.env.need_postgres(), self.schema))[0]

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()


PEERS: tuple[type[Contender], ...] = (
    AgentsRedis,
    AgentsSQLAlchemy,
    LangchainPostgres,
    LangGraphPostgres,
)


# -- the adapters: the same framework calls, on promptstate's stores -------------------------


class _AdapterTurn(StoreTurn):
    """A framework adapter over a promptstate store, driven exactly like the framework's peer.

    ``name`` starts with the framework's name (the first word), which is how the runner finds
    the framework's own stores to compare the row with.
    """

    kind = "adapter"
    framework = "?"
    adapter = "?"

    async def open(self) -> None:
        await super().open()
        self.name = f"{self.framework} {self.adapter} + {type(self.store).__name__}"


class AgentsAdapter(_AdapterTurn):
    """``PromptStateSession``: ``get_items(limit=50)`` + ``add_items``, as the agents peers."""

    framework = "openai-agents"
    adapter = "PromptStateSession"
    reads = "window"

    async def open(self) -> None:
        adapters = _need("promptstate.integrations.openai_agents", "'promptstate[agents]'")
        self._cls = adapters.PromptStateSession
        await super().open()
        self._sessions: dict[str, Any] = {}

    def _session(self, session_id: str) -> Any:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = self._cls(session_id, self.store)
        return session

    async def populate(self, session_id: str, history: int) -> None:
        await self._session(session_id).add_items(_agents_items(history))

    async def turn(self, session_id: str, i: int) -> None:
        session = self._session(session_id)
        window = await session.get_items(limit=WINDOW)  # kept until the turn ends
        await session.add_items(
            [
                {"role": "user", "content": user_text(i)},
                {"role": "assistant", "content": assistant_text(i)},
            ]
        )
        del window

    async def reset(self) -> None:
        self._sessions.clear()
        await super().reset()


class LangchainAdapter(_AdapterTurn):
    """``PromptStateChatMessageHistory``: ``aget_messages()`` + ``aadd_messages``, as the
    LangChain peer (the interface has no window: every turn reads the whole history)."""

    framework = "langchain"
    adapter = "PromptStateChatMessageHistory"
    reads = "full"
    last: int | None = None

    async def open(self) -> None:
        adapters = _need("promptstate.integrations.langchain", "'promptstate[langchain]'")
        messages = _need("langchain_core.messages", "'promptstate[langchain]'")
        self._cls = adapters.PromptStateChatMessageHistory
        self._human, self._ai = messages.HumanMessage, messages.AIMessage
        await super().open()

    async def populate(self, session_id: str, history: int) -> None:
        await self._cls(session_id, self.store).aadd_messages(
            [
                self._human(m.content) if m.role == "user" else self._ai(m.content)
                for m in history_messages(history)
            ]
        )

    async def turn(self, session_id: str, i: int) -> None:
        # One per request, as a history factory makes them.
        history = self._cls(session_id, self.store, last=self.last)
        window = await history.aget_messages()  # kept until the turn ends
        await history.aadd_messages([self._human(user_text(i)), self._ai(assistant_text(i))])
        del window


class LangchainWindowAdapter(LangchainAdapter):
    """The same with ``last=50``: the option the adapter adds, reading what the model sees."""

    adapter = f"PromptStateChatMessageHistory(last={WINDOW})"
    reads = "window"
    last = WINDOW


#: (adapter, backend): where each adapter is measured (the backends its framework's own
#: stores are measured on).
ADAPTERS: tuple[tuple[type[_AdapterTurn], str], ...] = (
    (AgentsAdapter, "redis"),
    (AgentsAdapter, "postgres"),
    (LangchainAdapter, "postgres"),
    (LangchainWindowAdapter, "postgres"),
)


def contenders(env: Env, backends: set[str]) -> list[Contender]:
    found: list[Contender] = [cls(env) for cls in PEERS if cls.backend in backends]  # type: ignore[call-arg]
    found += [cls(env, backend) for cls, backend in ADAPTERS if backend in backends]
    return found


if __name__ == "__main__":
    from benchmarks.runner import main

    main(default_only="turns,raw,peers")

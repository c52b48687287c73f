"""The Redis store: append-only message lists, atomic scripts, ready for Redis Cluster.

Layout (details in ``docs/redis.md``): every session has two keys that share one hash tag, so
they live in one slot and every write is a single atomic Lua script on one node::

    <prefix>{<escaped session id>}:h    the header hash: version, user id, tokens, cost,
                                         metadata, created/updated timestamps
    <prefix>{<escaped session id>}:m    the messages, a list of MessagePack items

The escaping (``%`` → ``%25``, ``{`` → ``%7B``, ``}`` → ``%7D``) keeps braces out of the tag, so
any session id works. ``append`` is one EVALSHA that pushes the new messages, bumps the version
and sets the TTL of both keys, at a cost that does not depend on the history's length;
``load(last=n)`` is one ``LRANGE``.

Listing uses a sorted-set index per store prefix (members = session ids, all scored 0, queried
with ``ZRANGEBYLEX``), a second sorted set of expiry hints, and sorted sets of the session ids
by updated and by created time (microseconds), for the store and per user, so listing costs
what it returns, never ``KEYS`` and never ``SCAN`` (the layout is in
:mod:`promptstate.stores._redis_scripts`). On a single Redis the index is updated in the same
script as the session, from the header as the script left it. On a Cluster it lives in its own
slots (sharded over ``index_shards`` keys) and is updated by a second call just before the
write; listing checks every entry it returns against the session's header, prunes what is gone
and repairs what a failed or racing write left behind. Expired sessions leave the index through
the expiry hints (a pruning pass now and then on writes) and whenever a listing meets them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote, urlsplit

import promptstate.stores._redis_scripts as scripts
from promptstate.exceptions import (
    ConflictError,
    CorruptStateError,
    NotFoundError,
    StoreAuthError,
    StoreUnavailableError,
    ValidationError,
)
from promptstate.redaction import redact as _redact
from promptstate.serialization import pack, unpack_any, unpack_messages
from promptstate.settle import settled
from promptstate.stores.base import LeasingStore, SessionQuery, normalize_ttl
from promptstate.stores.integrity import (
    check_metadata,
    checked_info,
    checked_state,
    corrupt,
    timestamp_from_us,
)
from promptstate.stores.turns import TURN_ID_KEY, turn_refusal
from promptstate.tokens import TokenCounter
from promptstate.types import Message, SessionInfo, State

try:
    import redis.exceptions as redis_errors
    from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from promptstate.stores._redis_connections import CommandConnections, Permit, Permits
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "RedisStore needs the redis package: pip install 'promptstate[redis]'"
    ) from exc

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline
    from redis.asyncio.cluster import ClusterPipeline

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)

#: The oldest redis-py whose async ``RedisCluster`` the store's Cluster support is tested on.
#: Found by the Redis tests on 5.0.1, 6.4.0 and 7.4.1: a command cancelled while it is being
#: sent lost its node connection (``ClusterNode.execute_command`` gave the connection back only
#: after the send; fixed upstream in 8.0.1 and 8.1.0), and a failover was not ridden out (5.0.1
#: raised ``AttributeError`` from inside redis-py; 6.4.0 stopped making progress; 7.4.1 left
#: dropped nodes' connections unclosed; 8.1.0 has redis-py's connection cleanup on topology
#: refresh).
_CLUSTER_REDIS_PY = (8, 1)


def _redis_py_version() -> tuple[int, ...]:
    """redis-py's (major, minor), or ``()`` when its version string does not start with them."""
    import redis

    found = re.match(r"(\d+)\.(\d+)", str(getattr(redis, "__version__", "")))
    return (int(found[1]), int(found[2])) if found else ()


def _old_cluster_client() -> bool:
    """Whether the installed redis-py is older than :data:`_CLUSTER_REDIS_PY` (an unreadable
    version counts as new enough)."""
    version = _redis_py_version()
    return bool(version) and version < _CLUSTER_REDIS_PY


@functools.cache
def _warn_old_cluster_client() -> None:
    """Warn once per process when a Cluster store runs on a redis-py older than
    ``_CLUSTER_REDIS_PY``."""
    if not _old_cluster_client():
        return
    import redis

    logger.warning(
        "redis-py %s is older than 8.1, the oldest release RedisStore's Redis Cluster support "
        "is tested with: older releases can lose a node connection each time a command is "
        "cancelled while it is being sent (after max_connections such losses, calls to that "
        "node fail with StoreUnavailableError), and a failover can end in errors from inside "
        "redis-py. Use redis-py >= 8.1 with a Cluster.",
        redis.__version__,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
#: Sessions per listing / deletion batch: bounds how long one server step can take.
_BATCH = 200
#: Index entries one PAGE script looks at at most (entries a prefix filter skips count too).
_PAGE_BUDGET = 2000
#: How often a listing may find the index out of step with the sessions (gone, or repaired
#: on a Cluster) and read the page again before it returns what it has checked.
_PAGE_ATTEMPTS = 8
_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def _tag(session_id: str) -> str:
    """The hash tag content for a session id: the id with ``%``, ``{`` and ``}`` escaped."""
    if "%" in session_id or "{" in session_id or "}" in session_id:
        session_id = session_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return session_id


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _US


def _header_number(
    key: str,
    fields: dict[bytes, bytes],
    name: bytes,
    kind: type[int] | type[float],
    default: object = None,
) -> object:
    """One number of a session's header hash, parsed; ranges are checked by the caller."""
    raw = fields.get(name, default)
    if isinstance(raw, int):
        return raw
    if not isinstance(raw, bytes):
        corrupt("Redis", key, f"header (field {name.decode()!r} is missing)", raw)
    try:
        return kind(raw)
    except (ValueError, TypeError):
        corrupt("Redis", key, f"header field {name.decode()!r}", raw)


def _now_us() -> int:
    return time.time_ns() // 1000


class RedisStore(LeasingStore):
    """Conversation state in Redis or Redis Cluster, over ``redis.asyncio`` (with hiredis).

    Three ways to make one:

    * ``RedisStore.from_url("redis://:password@host:6379/0")`` builds and owns its client
      (``rediss://`` for TLS, ``redis+cluster://`` or ``cluster=True`` for a Cluster) and
      closes it in :meth:`aclose`.
    * ``RedisStore(client)`` borrows a ``redis.asyncio.Redis`` or ``RedisCluster`` you made
      (with ``decode_responses=False``) and never closes it.
    * ``RedisStore(address="host:6379", password=..., db=0)`` builds and owns a client.

    Args:
        client: A client to borrow. Mutually exclusive with the connection keywords.
        address: ``host:port`` to connect to (default ``localhost:6379``).
        password: The password (``AUTH``); never shown in a repr, log or error.
        username: The ACL user name, if any.
        db: The database number (single Redis only).
        ssl: Connect with TLS.
        cluster: Talk to a Redis Cluster (``address`` is then any node of it).
        prefix: Prepended to every key; stores with different prefixes never see each
            other's sessions.
        ttl: Session lifetime after its last write (``timedelta`` or seconds), kept in
            milliseconds by Redis.
        touch_on_read: Slide the TTL on reads too.
        token_counter: Counter for ``State.token_count``.
        max_connections: Pool size (per node on a Cluster). On a Cluster it also caps the
            store's calls in flight at once: the others wait in arrival order. A store that
            makes its own client on a single Redis also keeps up to this many connections of
            its own for its single-command calls (docs/redis.md, "Connections").
        socket_timeout: Seconds to wait for a reply before giving up.
        socket_connect_timeout: Seconds to wait for a connection.
        pool_timeout: Seconds a call waits for a free connection before
            :class:`~promptstate.exceptions.StoreUnavailableError` (``None``: no limit).
        index_shards: How many sorted sets hold the listing index (default 1 on a single
            Redis, 8 on a Cluster, where they spread over the nodes).
        wait_replicas: After each write of a session (``append``, ``append_turn``, ``save``,
            ``set``, ``fork``, ``merge_metadata``, ``truncate``, ``delete``), wait until this
            many replicas of the primary have it (Redis ``WAIT``), so that a failover cannot
            lose an acknowledged write (leases and the listing index are not waited for).
            ``0`` (the default) does not wait: Redis replicates asynchronously.
        wait_timeout: Seconds to wait for those replicas (default 1.0; less than
            ``socket_timeout``). Fewer acknowledgements in that time raise
            :class:`~promptstate.exceptions.StoreUnavailableError` saying how many replicas
            acknowledged; the write itself happened on the primary.

    Errors from Redis never reach you: a refused connection, a timeout or a server that went
    away raise :class:`~promptstate.exceptions.StoreUnavailableError` (the redis-py error
    chained as ``__cause__``); stored bytes that do not decode raise
    :class:`~promptstate.exceptions.CorruptStateError` naming the key.

    Writes made by a store that owns its client are never retried by redis-py, because a
    retried ``append`` whose first attempt did reach the server would store its messages twice.
    A borrowed client keeps whatever retry policy you gave it.
    """

    db_system = "redis"

    def __init__(
        self,
        client: Redis | RedisCluster | None = None,
        *,
        address: str | None = None,
        password: str | None = None,
        username: str | None = None,
        db: int = 0,
        ssl: bool = False,
        cluster: bool = False,
        prefix: str = "promptstate:",
        ttl: timedelta | float | None = None,
        touch_on_read: bool = False,
        token_counter: TokenCounter | None = None,
        max_connections: int = 64,
        socket_timeout: float | None = 5.0,
        socket_connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 5.0,
        index_shards: int | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        super().__init__(ttl=ttl, touch_on_read=touch_on_read, token_counter=token_counter)
        if not isinstance(prefix, str):
            raise ValidationError(f"prefix must be a str, got {type(prefix).__name__}")
        _check_positive("max_connections", max_connections)
        if client is None:
            _check_wait(wait_replicas, wait_timeout, socket_timeout)
        if client is not None:
            if address is not None or password is not None or username is not None or db:
                raise ValidationError(
                    "give RedisStore either a client or address/password/db, not both"
                )
            if not isinstance(client, (Redis, RedisCluster)):
                raise ValidationError(
                    "RedisStore(client) takes a redis.asyncio.Redis or RedisCluster, "
                    f"got {type(client).__name__}"
                )
            if client.get_encoder().decode_responses:
                raise ValidationError(
                    "RedisStore needs a client made with decode_responses=False "
                    "(it stores MessagePack bytes)"
                )
            _check_wait(wait_replicas, wait_timeout, _socket_timeout(client))
            self._client: Redis | RedisCluster = client
        else:
            host, port = _split_address(address or "localhost:6379")
            options: dict[str, Any] = {
                "password": password,
                "username": username,
                "ssl": ssl,
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_connect_timeout,
            }
            if cluster:
                if db:
                    raise ValidationError("a Redis Cluster has only database 0")
                self._client = _make_cluster(
                    RedisCluster, options, max_connections, host=host, port=port
                )
            else:
                scheme = "rediss" if ssl else "redis"
                del options["ssl"]
                url = f"{scheme}://{_bracket(host)}:{port}/{int(db)}"
                self._client = _make_single(url, options, max_connections, pool_timeout)
        self._owns_client = False
        self._commands: CommandConnections | None = None
        if client is None:
            self._own_client(pool_timeout)
        self._cluster = isinstance(self._client, RedisCluster)
        self._pending_init = self._cluster
        # redis-py's async RedisCluster refuses a call at once (MaxConnectionsError) when all
        # max_connections connections to its node are busy; the store queues such calls
        # instead, as a single Redis's blocking pool does. Each call holds one permit and
        # uses at most one connection per node at a time, so no node runs out.
        self._permits: Permits | None = None
        if isinstance(self._client, RedisCluster):
            size = self._client.connection_kwargs.get("max_connections") or max_connections
            self._permits = Permits(int(size), pool_timeout)
            _warn_old_cluster_client()
        self._init_lock = asyncio.Lock()
        # Calls under way, so that aclose() can let them finish before closing the client.
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._prefix = prefix
        self._pkey = prefix.encode()
        shards = index_shards if index_shards is not None else (8 if self._cluster else 1)
        _check_positive("index_shards", shards)
        self._shards = shards
        self._ttl_ms = b"0" if self._ttl is None else str(max(1, round(self._ttl * 1000))).encode()
        self._next_prune = 0.0
        self._prune_every = 0.0 if self._ttl is None else min(max(self._ttl, 0.05), 60.0)
        self._wait_replicas = wait_replicas
        self._wait_timeout = wait_timeout
        self._wait_ms = _ms(wait_timeout)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        prefix: str = "promptstate:",
        ttl: timedelta | float | None = None,
        touch_on_read: bool = False,
        token_counter: TokenCounter | None = None,
        max_connections: int = 64,
        socket_timeout: float | None = 5.0,
        socket_connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 5.0,
        index_shards: int | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> RedisStore:
        """A store that owns a client built from ``url``.

        URL forms: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
        ``unix:///path/to/redis.sock?db=0``, and ``redis+cluster://host:port`` or
        ``rediss+cluster://...`` (a Redis Cluster; any node's address will do; same as
        ``cluster=True``). Query parameters redis-py understands (``ssl_cert_reqs``,
        ``ssl_ca_certs``, ...) are passed on.

        Raises:
            ValidationError: The URL is not a Redis URL (the message hides its password).
        """
        if not isinstance(url, str) or "://" not in url:
            raise ValidationError(
                f"a Redis URL looks like redis://host:6379/0, got {_redact(url)!r}"
            )
        scheme = url.split("://", 1)[0].lower()
        if scheme not in _SCHEMES:
            raise ValidationError(
                f"unsupported Redis URL scheme {scheme + '://'!r} in {_redact(url)!r}; "
                "use redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"
            )
        if scheme.endswith("+cluster"):
            cluster = True
            url = scheme.split("+", 1)[0] + url[len(scheme) :]
        _check_db_path(url, scheme)
        # Check the other arguments before a client exists that would then need closing.
        _check_positive("max_connections", max_connections)
        normalize_ttl(ttl)
        if not isinstance(prefix, str):
            raise ValidationError(f"prefix must be a str, got {type(prefix).__name__}")
        if index_shards is not None:
            _check_positive("index_shards", index_shards)
        _check_wait(wait_replicas, wait_timeout, socket_timeout)
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
        }
        try:
            if cluster:
                if scheme.startswith("unix"):
                    raise ValidationError("a Redis Cluster can't be reached over a unix socket")
                client: Redis | RedisCluster = _make_cluster(
                    RedisCluster.from_url, options, max_connections, url=url
                )
            else:
                client = _make_single(url, options, max_connections, pool_timeout)
        except (ValueError, TypeError, redis_errors.RedisError) as exc:
            raise ValidationError(f"bad Redis URL {_redact(url)!r}: {_explain(exc)}") from None
        store = cls(
            client,
            prefix=prefix,
            ttl=ttl,
            touch_on_read=touch_on_read,
            token_counter=token_counter,
            pool_timeout=pool_timeout,
            index_shards=index_shards,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
        )
        store._own_client(pool_timeout)
        return store

    def _own_client(self, pool_timeout: float | None) -> None:
        """The store made its client: it closes it, and on a single Redis (RESP2, the
        default) runs its single-command calls on connections of its own
        (:class:`CommandConnections`)."""
        self._owns_client = True
        if isinstance(self._client, Redis):
            pool = self._client.connection_pool
            # RESP3 connections can carry push messages (redis-py 8 turns maintenance
            # notifications on for them), which only redis-py's pool knows how to apply.
            if str(pool.connection_kwargs.get("protocol") or 2) != "3":
                self._commands = CommandConnections(pool, pool.max_connections, pool_timeout)

    def __repr__(self) -> str:
        kind = "cluster" if self._cluster else "single"
        wait = f", wait_replicas={self._wait_replicas}" if self._wait_replicas else ""
        return f"RedisStore(prefix={self._prefix!r}, {kind}, ttl={self._ttl!r}{wait})"

    @property
    def client(self) -> Redis | RedisCluster:
        """The redis-py client the store talks through."""
        return self._client

    @property
    def prefix(self) -> str:
        """The key prefix of this store."""
        return self._prefix

    async def _open(self) -> None:
        with self._errors("connecting"):
            if self._cluster:
                await self._ready()
            else:
                await self._client.ping()

    async def aclose(self, *, timeout: float = 10.0) -> None:
        """Refuse new calls, let the calls under way finish (for up to ``timeout`` seconds),
        then close the client if the store created it. Idempotent."""
        if self._closed:
            return
        await super().aclose()
        if self._in_flight:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                logger.warning(
                    "closing RedisStore with %d calls still under way after %.1f s",
                    self._in_flight,
                    timeout,
                )
        if self._owns_client:
            try:
                if self._commands is not None:
                    await self._commands.aclose()  # closes every one, whatever fails
                await self._client.aclose()
            except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError):
                logger.debug("closing the Redis client failed", exc_info=True)

    # -- keys and errors ------------------------------------------------------------------

    def _keys(self, session_id: str) -> tuple[bytes, bytes]:
        base = self._pkey + b"{" + _tag(session_id).encode() + b"}:"
        return base + b"h", base + b"m"

    def _index_base(self, shard: int) -> bytes:
        # '%i' never occurs in an escaped session id, so no session's keys can collide.
        return self._pkey + b"{%idx" + str(shard).encode() + b"}:"

    def _index_keys(self, shard: int) -> tuple[bytes, bytes]:
        base = self._index_base(shard)
        return base + b"z", base + b"e"

    def _shard(self, member: bytes) -> int:
        return 0 if self._shards == 1 else zlib.crc32(member) % self._shards

    def _write_keys(self, session_id: str) -> tuple[list[bytes], bytes]:
        """The keys a write script gets (with the index on a single Redis) and the member."""
        member = session_id.encode()
        keys = list(self._keys(session_id))
        if not self._cluster:
            keys.extend(self._index_keys(self._shard(member)))
        return keys, member

    def _errors(self, what: str, key: object = None) -> _Errors:
        """The boundary of every call: translates redis-py and socket errors (``what`` and
        ``key`` name the call) and counts the call as under way."""
        return _Errors(self, what, key)

    async def _eval(
        self, script: scripts.Script, keys: Sequence[bytes], args: Sequence[Any]
    ) -> Any:
        commands = self._commands
        if commands is not None:
            try:
                return await commands.execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                return await commands.execute("EVAL", script.lua, len(keys), *keys, *args)
        if self._pending_init:
            await self._ready()
        client = self._client
        permits = self._permits
        if permits is not None:
            await permits.acquire()
        try:
            try:
                return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                return await client.execute_command("EVAL", script.lua, len(keys), *keys, *args)
        finally:
            if permits is not None:
                permits.release()

    async def _eval_write(
        self,
        what: str,
        key: str,
        script: scripts.Script,
        keys: Sequence[bytes],
        args: Sequence[Any],
    ) -> Any:
        """``_eval`` for a write of a session; with ``wait_replicas``, Redis ``WAIT`` follows
        the script on the same connection, in the same round trip."""
        if not self._wait_replicas:
            return await self._eval(script, keys, args)
        result, acked = await self._eval_and_wait(script, keys, args)
        if isinstance(result, BaseException):
            raise result
        n, timeout = self._wait_replicas, self._wait_timeout
        if isinstance(acked, BaseException) or int(acked) < n:
            if isinstance(acked, BaseException):
                told = f"WAIT failed ({type(acked).__name__}: {acked})"
            else:
                told = f"{int(acked)} of {n} replicas acknowledged it within {timeout:g} s"
            raise StoreUnavailableError(
                f"Redis did not confirm the write to replicas while {what} {key!r}: {told} "
                f"(wait_replicas={n}, wait_timeout={timeout:g}). The write itself happened on "
                "the primary and stays there, but a failover before a replica has it would "
                "lose it. Check that the primary has enough connected replicas (INFO "
                "replication); a retry of a write that is not idempotent (append without a "
                "turn id) stores it again."
            ) from (acked if isinstance(acked, BaseException) else None)
        return result

    async def _eval_and_wait(
        self, script: scripts.Script, keys: Sequence[bytes], args: Sequence[Any]
    ) -> tuple[Any, Any]:
        """The script's reply and ``WAIT``'s (either may be an exception), from one
        connection to the primary of the keys' slot."""
        if self._pending_init:
            await self._ready()
        client = self._client
        head: tuple[Any, ...] = ("EVALSHA", script.sha, len(keys), *keys, *args)
        wait = ("WAIT", self._wait_replicas, self._wait_ms)
        replies: list[Any] = []
        async with self._permit():
            for _ in range(3):
                pipe: Any = client.pipeline(transaction=False)
                if isinstance(client, RedisCluster):
                    # WAIT counts the acknowledgements of its own connection's writes: both
                    # go to the primary of the slot, and so share one of its connections.
                    await client.initialize()  # runs a topology refresh an error asked for
                    node = client.get_node_from_key(keys[0].decode())
                    pipe.execute_command(*head, target_nodes=node)
                    pipe.execute_command(*wait, target_nodes=node)
                    replies = await pipe.execute(raise_on_error=False, allow_redirections=False)
                else:
                    pipe.execute_command(*head)
                    pipe.execute_command(*wait)
                    replies = await pipe.execute(raise_on_error=False)
                result = replies[0]
                if isinstance(result, redis_errors.NoScriptError) and head[0] == "EVALSHA":
                    head = ("EVAL", script.lua, *head[2:])
                elif isinstance(result, redis_errors.MovedError) and isinstance(
                    client, RedisCluster
                ):
                    # The slot moved (a failover, a resharding) and nothing was written: a
                    # plain command follows the redirect and teaches the client the new map.
                    await client.execute_command("EXISTS", keys[0])
                else:
                    break
        return replies[0], replies[1]

    async def _ready(self) -> None:
        """Initialise a cluster client once, before any concurrent use.

        redis-py's async ``RedisCluster`` breaks connections when many commands race through
        its first, lazy initialisation (some of them fail after they were executed), so the
        store initialises it alone, under a lock, before the first command.
        """
        if self._pending_init:
            async with self._init_lock:
                if self._pending_init:
                    assert isinstance(self._client, RedisCluster)
                    async with self._permit():
                        await self._client.initialize()
                    self._pending_init = False

    async def _cmd(self, *args: Any) -> Any:
        commands = self._commands
        if commands is not None:
            return await commands.execute(*args)
        if self._pending_init:
            await self._ready()
        permits = self._permits
        if permits is None:
            return await self._client.execute_command(*args)
        await permits.acquire()
        try:
            return await self._client.execute_command(*args)
        finally:
            permits.release()

    def _permit(self) -> Permit:
        """Hold one of the Cluster's call permits (a no-op on a single Redis)."""
        return Permit(self._permits)

    async def _pipeline(self) -> Pipeline | ClusterPipeline:
        if self._pending_init:
            await self._ready()
        return self._client.pipeline(transaction=False)

    async def _execute(self, pipe: Pipeline | ClusterPipeline, **options: Any) -> list[Any]:
        """Run a pipeline under one permit (a Cluster pipeline uses one connection per node)."""
        async with self._permit():
            return await pipe.execute(**options)

    async def _run_read_pipeline(self, build: Any, used: Sequence[scripts.Script]) -> list[Any]:
        """Run a read-only pipeline built by ``build(pipe)``, loading scripts on NOSCRIPT."""
        for attempt in range(2):
            pipe = await self._pipeline()
            build(pipe)
            results = await self._execute(pipe, raise_on_error=False)
            if not any(isinstance(r, redis_errors.NoScriptError) for r in results) or attempt:
                break
            for script in used:
                async with self._permit():
                    await self._client.script_load(script.lua)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    # -- decoding -------------------------------------------------------------------------

    def _state(self, key: str, flat: list[bytes], items: list[bytes]) -> State:
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
        raw_user = fields.get(b"u")
        user: str | None = None
        if raw_user is not None:
            try:
                user = raw_user.decode()
            except UnicodeDecodeError:
                corrupt("Redis", key, "user_id", raw_user)
        raw_meta = fields.get(b"d")
        created = _header_number(key, fields, b"ca", int)
        return checked_state(
            "Redis",
            key,
            user_id=user,
            version=_header_number(key, fields, b"v", int),
            token_count=_header_number(key, fields, b"t", int, b"0"),
            total_cost=_header_number(key, fields, b"c", float, b"0"),
            metadata=unpack_any(raw_meta, key=key) if raw_meta else {},
            created_at=timestamp_from_us("Redis", key, "created_at", created),
            updated_at=timestamp_from_us(
                "Redis", key, "updated_at", _header_number(key, fields, b"ua", int, created)
            ),
            messages=unpack_messages(items, key=key),
        )

    # -- reads ----------------------------------------------------------------------------

    async def _get(self, key: str) -> State:
        with self._errors("reading key", key):
            found = await self._eval(scripts.GET, self._keys(key), (self._read_ttl(),))
        if not found:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return self._state(key, found[0], found[1])

    def _read_ttl(self) -> bytes:
        return self._ttl_ms if self._touch_on_read and self._ttl is not None else b"0"

    async def _load(self, session_id: str, *, last: int | None = None) -> list[Message]:
        if last == 0:
            return []
        h, m = self._keys(session_id)
        with self._errors("loading key", session_id):
            if self._touch_on_read and self._ttl is not None:
                items = await self._eval(
                    scripts.LOAD_TOUCH, (h, m), (self._ttl_ms, -1 if last is None else last)
                )
            else:
                items = await self._cmd("LRANGE", m, 0 if last is None else -last, -1)
        return unpack_messages(items, key=session_id) if items else []

    async def _get_many(self, keys: Iterable[str]) -> list[State | None]:
        keys = list(keys)
        if not keys:
            return []
        ttl = self._read_ttl()

        def build(pipe: Any) -> None:
            for key in keys:
                h, m = self._keys(key)
                pipe.execute_command("EVALSHA", scripts.GET.sha, 2, h, m, ttl)

        with self._errors(f"reading {len(keys)} keys, the first", keys[0]):
            results = await self._run_read_pipeline(build, (scripts.GET,))
        return [
            None if not found else self._state(key, found[0], found[1])
            for key, found in zip(keys, results, strict=True)
        ]

    # -- writes ---------------------------------------------------------------------------

    async def _index_sync(
        self,
        member: bytes,
        ttl: bytes,
        updated: int,
        created: int | None,
        user: tuple[str, str | None],
        *,
        exact: bool = False,
    ) -> None:
        """Cluster only: index a session in its shard as a write is about to leave it (only
        adding, see :data:`~promptstate.stores._redis_scripts.INDEX_SYNC`), or ``exact``ly as
        its header reads.

        ``created`` is ``None`` to keep the indexed one (or ``updated`` for a new session);
        ``user`` is ``("k", None)`` to keep the indexed user, ``("s", id)`` or ``("n", None)``.
        """
        mode, user_id = user
        await self._eval(
            scripts.INDEX_SYNC,
            self._index_keys(self._shard(member)),
            (
                member,
                ttl,
                updated,
                b"" if created is None else created,
                mode,
                b"" if user_id is None else user_id,
                1 if exact else 0,
            ),
        )

    async def _write(
        self,
        what: str,
        key: str,
        script: scripts.Script,
        keys: list[bytes],
        member: bytes,
        args: list[Any],
        *,
        updated: int,
        created: int | None = None,
        user: tuple[str, str | None] = ("k", None),
    ) -> Any:
        with self._errors(what, key):
            if self._cluster:
                # Index first: if the write then fails or is cancelled, the entry points at
                # nothing (or at the wrong time) and listing prunes or repairs it; the other
                # order could leave a session that no listing finds.
                await self._index_sync(member, self._ttl_ms, updated, created, user)
            result = await self._eval_write(what, key, script, keys, args)
        if self._ttl is not None and time.monotonic() >= self._next_prune:
            try:
                await self._maybe_prune()
            except (StoreUnavailableError, CorruptStateError):
                # The write succeeded: reporting a failure now would invite a retry that
                # stores it twice. The next pass prunes what this one could not.
                logger.debug("pruning the listing index failed", exc_info=True)
        return result

    async def _set(self, key: str, state: State, *, expected_version: int | None = None) -> State:
        # The version written is the stored one + 1, known only inside the script: prepare
        # with a placeholder and put the real one in afterwards.
        stored = self._prepare(key, state, 0)
        fields: list[Any] = [
            b"t", stored.token_count,
            b"c", repr(float(stored.total_cost)),
            b"ca", _to_us(stored.created_at),
            b"ua", _to_us(stored.updated_at),
        ]  # fmt: skip
        if stored.user_id is not None:
            fields += [b"u", stored.user_id]
        if stored.metadata:
            fields += [b"d", pack(stored.metadata)]
        keys, member = self._write_keys(key)
        args: list[Any] = [
            -1 if expected_version is None else expected_version,
            self._ttl_ms,
            member,
            len(fields) // 2,
            *fields,
            *(pack(m) for m in stored.messages),
        ]
        ok, version = await self._write(
            "writing key",
            key,
            scripts.SET,
            keys,
            member,
            args,
            updated=fields[7],
            created=fields[5],
            user=("n", None) if stored.user_id is None else ("s", stored.user_id),
        )
        if not ok:
            raise ConflictError(
                f"version conflict on key {key!r}: expected {expected_version}, stored {version}"
            )
        stored.version = int(version)
        return stored

    async def _append(self, session_id: str, messages: Sequence[Message]) -> int:
        if not messages:
            with self._errors("counting messages of key", session_id):
                return int(await self._cmd("LLEN", self._keys(session_id)[1]))
        counted, tokens = self._count_new(messages)
        keys, member = self._write_keys(session_id)
        now = _now_us()
        args: list[Any] = [self._ttl_ms, now, tokens, member]
        args.extend(pack(m) for m in counted)
        count = await self._write(
            "appending to key", session_id, scripts.APPEND, keys, member, args, updated=now
        )
        return int(count)

    async def _append_turn(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        cost: float = 0.0,
        turn_id: str | None = None,
        expected_count: int | None = None,
        release_lease: str | None = None,
    ) -> int:
        """One pipeline turn in one script: turn id and count checks, append, cost, TTL.

        Its cost follows the turn's messages, never the history: the turn id is looked up in
        the single stored message where the turn would start. With ``release_lease`` the
        script also checks that this owner holds the session's turn lease (else
        :class:`~promptstate.exceptions.LeaseLostError`, nothing written, unless the turn is
        stored already) and deletes the lease, all in the same atomic step.
        """
        counted, tokens = self._count_new(messages)
        keys, member = self._write_keys(session_id)
        keys.insert(2, self._lease_key(session_id))
        now = _now_us()
        args: list[Any] = [
            self._ttl_ms,
            now,
            tokens,
            member,
            repr(float(cost)),
            b"" if turn_id is None else pack(TURN_ID_KEY) + pack(turn_id),
            -1 if expected_count is None else expected_count,
            "" if release_lease is None else release_lease,
        ]
        args.extend(pack(m) for m in counted)
        status, count = await self._write(
            "appending a turn to key",
            session_id,
            scripts.APPEND_TURN,
            keys,
            member,
            args,
            updated=now,
        )
        if status < 0:
            # The script refused the turn by the rules of promptstate.stores.turns (-2: the
            # lease is not held, -1: not the expected count): raise that module's error.
            error = turn_refusal(
                session_id,
                int(count),
                expected_count=expected_count,
                lease_held=status != -2 if release_lease is not None else None,
            )
            if error is not None:
                raise error
        if status == 0 and self._wait_replicas and turn_id is not None:
            # The turn was stored already (a retry): WAIT after a script that wrote nothing
            # would count the acknowledgements of this connection's older writes, so write
            # something harmless first, after the turn, and wait for that.
            with self._errors("appending a turn to key", session_id):
                await self._eval_write("appending a turn to key", session_id, _MARK, keys[:1], [])
        return int(count)

    async def _save(self, session_id: str, messages: Sequence[Message]) -> None:
        counted, tokens = self._count_new(messages)
        keys, member = self._write_keys(session_id)
        now = _now_us()
        args: list[Any] = [self._ttl_ms, now, tokens, member]
        args.extend(pack(m) for m in counted)
        await self._write("saving key", session_id, scripts.SAVE, keys, member, args, updated=now)

    async def _delete(self, key: str) -> bool:
        keys, member = self._write_keys(key)
        with self._errors("deleting key", key):
            existed = await self._eval_write("deleting key", key, scripts.DELETE, keys, [member])
            if self._cluster:
                await self._eval(
                    scripts.INDEX_DROP, self._index_keys(self._shard(member)), (member,)
                )
        return bool(existed)

    async def _fork(
        self, source: str, target: str, *, overwrite: bool = False, at: int | None = None
    ) -> State:
        if self._cluster:
            # Source and target live in different slots: read the source in one atomic step,
            # then write the target guarded by its version (0 = must not exist).
            state = await self._get(source)
            if at is not None:
                del state.messages[at:]
            try:
                return await self._set(target, state, expected_version=None if overwrite else 0)
            except ConflictError as exc:
                raise ConflictError(f"fork target {target!r} exists already") from exc
        keys = [*self._keys(source), *self._keys(target)]
        member = target.encode()
        keys.extend(self._index_keys(self._shard(member)))
        now = _now_us()
        args = (1 if overwrite else 0, self._ttl_ms, now, member, -1 if at is None else at)
        result = await self._write(
            f"forking {source!r} to key",
            target,
            scripts.FORK,
            keys,
            member,
            list(args),
            updated=now,
        )
        if result[0] == 0:
            raise NotFoundError(f"fork source {source!r} does not exist")
        if result[0] == 1:
            raise ConflictError(f"fork target {target!r} exists already")
        return self._state(target, result[1], result[2])

    # -- session facts, listing, branching ------------------------------------------------

    async def _count(self, key: str) -> int:
        with self._errors("counting messages of key", key):
            if self._touch_on_read and self._ttl is not None:
                _, _, count = await self._eval(scripts.META_TOUCH, self._keys(key), (self._ttl_ms,))
                return int(count)
            return int(await self._cmd("LLEN", self._keys(key)[1]))

    async def _get_metadata(self, key: str) -> dict[str, Any]:
        with self._errors("reading the metadata of key", key):
            if self._touch_on_read and self._ttl is not None:
                version, raw, _ = await self._eval(
                    scripts.META_TOUCH, self._keys(key), (self._ttl_ms,)
                )
            else:
                version, raw = await self._cmd("HMGET", self._keys(key)[0], b"v", b"d")
        if version is None:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return self._metadata(key, raw)

    @staticmethod
    def _metadata(key: str, raw: bytes | None) -> dict[str, Any]:
        return check_metadata("Redis", key, unpack_any(raw, key=key) if raw else {})

    async def _merge_metadata(
        self, key: str, updates: Mapping[str, Any], *, remove: Iterable[str] = ()
    ) -> dict[str, Any]:
        """One script that rewrites only the header's metadata map, pair by pair, whatever the
        history holds (the messages are never read)."""
        keys, member = self._write_keys(key)
        now = _now_us()
        args: list[Any] = [self._ttl_ms, now, member, len(updates)]
        for name, value in updates.items():
            args += [pack(name), pack(value)]
        args.extend(pack(name) for name in remove)
        _, raw = await self._write(
            "merging the metadata of key",
            key,
            scripts.MERGE_META,
            keys,
            member,
            args,
            updated=now,
        )
        return self._metadata(key, raw)

    async def _truncate(self, key: str, keep: int) -> int:
        keys, member = self._write_keys(key)
        now = _now_us()
        args: list[Any] = [self._ttl_ms, now, member, keep]
        count = int(
            await self._write(
                "truncating key", key, scripts.TRUNCATE, keys, member, args, updated=now
            )
        )
        if count < 0:
            raise NotFoundError(f"no conversation state under key {key!r}")
        return count

    async def _pop_messages(self, key: str, count: int = 1) -> list[Message]:
        if not count:
            return []
        keys, member = self._write_keys(key)
        now = _now_us()
        args: list[Any] = [self._ttl_ms, now, member, count]
        raw = await self._write(
            "popping from key", key, scripts.POP, keys, member, args, updated=now
        )
        return unpack_messages(raw, key=key) if raw else []

    def _info(self, key: str, flat: list[bytes], count: int) -> SessionInfo:
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
        raw_user = fields.get(b"u")
        user: str | None = None
        if raw_user is not None:
            try:
                user = raw_user.decode()
            except UnicodeDecodeError:
                corrupt("Redis", key, "user_id", raw_user)
        raw_meta = fields.get(b"d")
        created = _header_number(key, fields, b"ca", int)
        return checked_info(
            "Redis",
            key,
            user_id=user,
            version=_header_number(key, fields, b"v", int),
            token_count=_header_number(key, fields, b"t", int, b"0"),
            total_cost=_header_number(key, fields, b"c", float, b"0"),
            metadata=unpack_any(raw_meta, key=key) if raw_meta else {},
            created_at=timestamp_from_us("Redis", key, "created_at", created),
            updated_at=timestamp_from_us(
                "Redis", key, "updated_at", _header_number(key, fields, b"ua", int, created)
            ),
            message_count=count,
        )

    def _time_index(self, shard: int, query: SessionQuery) -> bytes:
        base = self._index_base(shard)
        if query.user_id is None:
            return base + (b"c" if query.by_created else b"u")
        return base + (b"C:" if query.by_created else b"U:") + query.user_id.encode()

    async def _shard_page(
        self, shard: int, query: SessionQuery, want: int
    ) -> list[tuple[int, str]]:
        """The first ``want`` index entries of one shard after the cursor, as (time, id)."""
        index = self._time_index(shard, query)
        prefix = query.prefix.encode()
        after = query.after
        found: list[tuple[int, str]] = []
        while True:
            args: list[Any] = [
                1 if query.descending else 0,
                0 if after is None else 1,
                0 if after is None else after[0],
                b"" if after is None else after[1].encode(),
                want - len(found),
                prefix,
                _PAGE_BUDGET,
            ]
            with self._errors("listing sessions with prefix", query.prefix):
                items, done, last_time, last_id = await self._eval(scripts.PAGE, (index,), args)
            found += [
                (int(float(items[i + 1])), items[i].decode()) for i in range(0, len(items), 2)
            ]
            if len(found) >= want or int(done) or not last_id:
                return found
            after = (int(float(last_time)), last_id.decode())

    async def _list_sessions(self, query: SessionQuery) -> list[SessionInfo]:
        want = query.limit + 1
        checked: list[SessionInfo] = []
        for _ in range(_PAGE_ATTEMPTS):
            pages = await asyncio.gather(
                *(self._shard_page(shard, query, want) for shard in range(self._shards))
            )
            candidates = sorted(
                (entry for page in pages for entry in page), reverse=query.descending
            )[:want]
            if not candidates:
                return []
            ids = [key for _, key in candidates]

            def build(pipe: Any, ids: list[str] = ids) -> None:
                for key in ids:
                    pipe.execute_command("EVALSHA", scripts.INFO.sha, 2, *self._keys(key))

            with self._errors("listing sessions with prefix", query.prefix):
                found = await self._run_read_pipeline(build, (scripts.INFO,))
            checked = []
            gone: dict[int, list[bytes]] = {}
            stale: list[SessionInfo] = []
            for (at, key), item in zip(candidates, found, strict=True):
                if not item:  # expired or deleted: its entry goes
                    member = key.encode()
                    gone.setdefault(self._shard(member), []).append(member)
                    continue
                info = self._info(key, item[0], item[1])
                if query.sort_key(info) != (at, key) or (
                    query.user_id is not None and info.user_id != query.user_id
                ):
                    stale.append(info)  # (a Cluster only) the index is behind the header
                    continue
                checked.append(info)
            for shard, members in gone.items():
                await self._prune(shard, members)
            for info in stale:
                await self._repair(info)
            if not gone and not stale:
                return checked
        return checked

    async def _repair(self, info: SessionInfo) -> None:
        """Index a session as its header reads (a Cluster write failed or raced)."""
        member = info.conversation_id.encode()
        user = ("n", None) if info.user_id is None else ("s", info.user_id)
        with self._errors("repairing the listing index of key", info.conversation_id):
            await self._index_sync(
                member, b"0", _to_us(info.updated_at), _to_us(info.created_at), user, exact=True
            )

    # -- listing --------------------------------------------------------------------------

    async def _index_members(self, prefix: str) -> AsyncIterator[tuple[int, list[bytes]]]:
        """Batches of index members starting with ``prefix``, with their shard."""
        raw = prefix.encode()
        low = b"[" + raw if raw else b"-"
        high = b"(" + raw + b"\xff" if raw else b"+"
        for shard in range(self._shards):
            idx, _ = self._index_keys(shard)
            start = low
            while True:
                with self._errors("listing keys starting with", prefix):
                    batch: list[bytes] = await self._cmd(
                        "ZRANGEBYLEX", idx, start, high, "LIMIT", 0, _BATCH
                    )
                if batch:
                    yield shard, batch
                if len(batch) < _BATCH:
                    break
                start = b"(" + batch[-1]

    async def _list_keys(self, prefix: str) -> AsyncIterator[str]:
        async for shard, batch in self._index_members(prefix):

            def build(pipe: Any, batch: list[bytes] = batch) -> None:
                for member in batch:
                    pipe.execute_command("EXISTS", self._keys(member.decode())[0])

            with self._errors("listing keys starting with", prefix):
                found = await self._run_read_pipeline(build, ())
            gone = [m for m, e in zip(batch, found, strict=True) if not e]
            if gone:
                await self._prune(shard, gone)
            for member, exists in zip(batch, found, strict=True):
                if exists:
                    yield member.decode()

    async def _list_by_prefix(self, prefix: str) -> AsyncIterator[State]:
        async for shard, batch in self._index_members(prefix):
            keys = [m.decode() for m in batch]
            states = await self.get_many(keys)
            gone = [m for m, s in zip(batch, states, strict=True) if s is None]
            if gone:
                await self._prune(shard, gone)
            for state in states:
                if state is not None:
                    yield state

    async def _delete_by_prefix(self, prefix: str) -> int:
        deleted = 0
        while True:
            batches = [b async for b in _first_batches(self._index_members(prefix))]
            if not batches:
                return deleted
            for shard, batch in batches:
                deleted += await self._delete_batch(shard, batch, prefix)

    async def _delete_batch(self, shard: int, batch: list[bytes], prefix: str) -> int:
        idx, exp = self._index_keys(shard)
        with self._errors("deleting keys starting with", prefix):
            if not self._cluster:
                keys: list[bytes] = [idx, exp]
                for member in batch:
                    keys.extend(self._keys(member.decode()))
                return int(await self._eval(scripts.DELETE_MANY, keys, batch))
            pipe = await self._pipeline()
            for member in batch:
                h, m = self._keys(member.decode())
                pipe.execute_command("EVAL", scripts.DELETE.lua, 2, h, m, member)
            found = await self._execute(pipe)
            await self._eval(scripts.INDEX_DROP, (idx, exp), batch)
            return sum(int(f) for f in found)

    # -- index upkeep ---------------------------------------------------------------------

    async def _prune(self, shard: int, members: list[bytes]) -> None:
        """Drop index entries of sessions that are gone (expired or deleted)."""
        idx, exp = self._index_keys(shard)
        with self._errors("pruning the listing index"):
            if not self._cluster:
                keys = [idx, exp, *(self._keys(m.decode())[0] for m in members)]
                await self._eval(scripts.INDEX_PRUNE_CHECKED, keys, members)
                return
            pipe = await self._pipeline()
            for member in members:
                pipe.zscore(exp, member)
            scores = await self._execute(pipe)
            pipe = await self._pipeline()
            for member in members:
                pipe.pttl(self._keys(member.decode())[0])
            ttls = await self._execute(pipe)
            args: list[Any] = []
            for member, score, ttl in zip(members, scores, ttls, strict=True):
                args += [member, b"none" if score is None else repr(score), ttl]
            await self._eval(scripts.INDEX_PRUNE, (idx, exp), args)

    async def _maybe_prune(self) -> None:
        """Now and then, drop index entries whose expiry hint has passed and that are gone.

        Runs at most once per TTL period (capped at a minute) per store, and again right away
        while a pass finds a full batch, so the index keeps up with any rate of expiry.
        """
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + self._prune_every
        full = False
        now_ms = time.time_ns() // 1_000_000
        for shard in range(self._shards):
            _, exp = self._index_keys(shard)
            with self._errors("pruning the listing index"):
                due: list[bytes] = await self._cmd(
                    "ZRANGEBYSCORE", exp, "-inf", now_ms, "LIMIT", 0, _BATCH
                )
            if due:
                await self._prune(shard, due)
                full = full or len(due) == _BATCH
        if full:
            self._next_prune = 0.0

    # -- turn leases (promptstate.LeasingStore) ----------------------------------------------------

    def _lease_key(self, key: str) -> bytes:
        # In the session's slot, apart from its state keys (listing never sees it).
        return self._pkey + b"{" + _tag(key).encode() + b"}:l"

    def _fence_key(self, key: str) -> bytes:
        # One acquire attempt's, in the session's slot too: written only if the attempt is
        # abandoned (and gone after the lease's TTL), so a retry is never fenced off.
        return self._pkey + b"{" + _tag(key).encode() + b"}:f:" + os.urandom(8).hex().encode()

    async def _acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the turn lease on ``key`` for ``owner`` if it is free, expired or ``owner``'s.

        Leases keep pipelines in different processes from interleaving turns on one session;
        Redis expires a lease whose holder died. Settled when it returns, cancelled or not
        (:meth:`_abandon`).
        """
        keys = (self._lease_key(key), self._fence_key(key))
        try:
            with self._errors("taking the turn lease on key", key):
                done = await self._eval(scripts.LEASE_ACQUIRE, keys, (owner, _ms(ttl)))
        except BaseException:
            await self._abandon(key, owner, keys[1], ttl)
            raise
        return bool(done)

    async def _acquire_and_load(
        self, key: str, owner: str, ttl: float, *, last: int | None
    ) -> list[Message] | None:
        """Take the turn lease on ``key`` and read the newest ``last`` messages, in one script.

        Returns ``None`` (nothing read) when another owner holds the lease; otherwise what
        ``load(key, last=last)`` returns. One round trip, where ``acquire_lease`` and
        ``load`` take two. Settled when it returns, cancelled or not (:meth:`_abandon`).
        """
        h, m = self._keys(key)
        keys = (self._lease_key(key), h, m, self._fence_key(key))
        args = (owner, _ms(ttl), -1 if last is None else last, self._read_ttl())
        try:
            with self._errors("taking the turn lease on key", key):
                items = await self._eval(scripts.LEASE_ACQUIRE_LOAD, keys, args)
        except BaseException:
            await self._abandon(key, owner, keys[3], ttl)
            raise
        if items is None:
            return None
        return unpack_messages(items, key=key) if items else []

    async def _abandon(self, key: str, owner: str, fence: bytes, ttl: float) -> None:
        """Settle an acquire by ``owner`` that failed or was cancelled: its script may still
        reach the server (redis-py drops a cancelled call's connection, not what it sent).

        One script gives the lease back if ``owner`` holds it and writes the attempt's
        ``fence`` key for the lease's TTL, which the acquire scripts check first: if the
        attempt's script arrives after this one, it takes nothing. The lease is then nobody's
        and stays so. This costs a round trip only when an acquire fails, instead of a task
        around every acquire. Awaited to its end even if cancelled again.
        """
        keys = (self._lease_key(key), fence)
        try:
            with self._errors("giving back the turn lease on key", key):
                await settled(self._eval(scripts.LEASE_ABANDON, keys, (owner, _ms(ttl))))
        except Exception:  # the lease expires by itself; the acquire's own error is the news
            logger.warning("could not settle the lease on session %r", key, exc_info=True)

    async def _renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s lease on ``key`` to ``ttl`` from now; False when it was lost."""
        with self._errors("renewing the turn lease on key", key):
            done = await self._eval(scripts.LEASE_RENEW, (self._lease_key(key),), (owner, _ms(ttl)))
        return bool(done)

    async def _release_lease(self, key: str, owner: str) -> bool:
        """Delete the lease on ``key`` if ``owner`` holds it (compare-and-delete)."""
        with self._errors("releasing the turn lease on key", key):
            done = await self._eval(scripts.LEASE_RELEASE, (self._lease_key(key),), (owner,))
        return bool(done)


#: A write that changes nothing, in a session's slot, for ``WAIT`` to wait for.
_MARK = scripts.Script(
    "local v = redis.call('HGET', KEYS[1], 'v') "
    "if v then redis.call('HSET', KEYS[1], 'v', v) end return 1"
)


def _check_wait(replicas: object, timeout: object, socket_timeout: float | None) -> None:
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ValidationError(f"wait_replicas must be an int >= 0, got {replicas!r}")
    if (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not 0 < timeout < math.inf
    ):
        raise ValidationError(f"wait_timeout must be a number of seconds > 0, got {timeout!r}")
    if replicas and socket_timeout is not None and timeout >= socket_timeout:
        raise ValidationError(
            f"wait_timeout ({timeout:g} s) must be shorter than socket_timeout "
            f"({socket_timeout:g} s), or every write that waits for replicas times out"
        )


def _socket_timeout(client: Redis | RedisCluster) -> float | None:
    """The reply timeout a client was made with, if it says."""
    if isinstance(client, RedisCluster):
        kwargs = client.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
    value = kwargs.get("socket_timeout")
    return float(value) if isinstance(value, (int, float)) else None


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds * 1000))


async def _first_batches(
    batches: AsyncIterator[tuple[int, list[bytes]]],
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """The first batch of every shard: deleting them and listing again restarts the range."""
    seen: set[int] = set()
    async for shard, batch in batches:
        if shard not in seen:
            seen.add(shard)
            yield shard, batch


class _Errors:
    """The boundary where redis-py and socket errors become promptstate errors.

    A small class rather than a generator-based context manager: it is on every call's path.
    """

    __slots__ = ("key", "store", "what")

    def __init__(self, store: RedisStore, what: str, key: object) -> None:
        self.store = store
        self.what = what
        self.key = key

    def __enter__(self) -> None:
        self.store._in_flight += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        store = self.store
        store._in_flight -= 1
        if store._in_flight == 0 and store._drained is not None:
            store._drained.set()
        if exc is None or not isinstance(
            exc, (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)
        ):
            return
        what = self.what if self.key is None else f"{self.what} {self.key!r}"
        if isinstance(
            exc,
            (
                redis_errors.AuthenticationError,
                redis_errors.AuthorizationError,
                redis_errors.NoPermissionError,
                redis_errors.AuthenticationWrongNumberOfArgsError,
            ),
        ):
            # Refused credentials are not an outage: retrying cannot help.
            raise StoreAuthError(f"Redis refused the credentials while {what}: {exc}") from exc
        if isinstance(exc, redis_errors.MaxConnectionsError):
            # redis-py's own has no text: the client is shared with code that does not queue.
            detail = str(exc) or (
                "every connection of the client's pool to one node was in use "
                "(max_connections is per node); the client is shared with code that does "
                "not wait for a free connection"
            )
            raise StoreUnavailableError(
                f"Redis had no free connection while {what}: {detail}"
            ) from exc
        if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)):
            raise StoreUnavailableError(f"Redis is unavailable while {what}: {exc}") from exc
        if isinstance(exc, redis_errors.ResponseError):
            _raise_response_error(exc, what)
        # RedisClusterException (no node reachable, slot not covered), ClusterDownError,
        # TryAgainError, ...: the cluster can't serve the call right now.
        raise StoreUnavailableError(
            f"Redis could not serve the call while {what}: {type(exc).__name__}: {exc}"
        ) from exc


def _raise_response_error(exc: redis_errors.ResponseError, what: str) -> NoReturn:
    text = str(exc)
    # A key holding another type, or a script that stopped on a stored value it could not
    # use. Everything else (BUSY, OOM, READONLY, LOADING, CLUSTERDOWN, ...) is the server
    # refusing service for now.
    if text.startswith(("WRONGTYPE", "ERR user_script", "ERR Error running script")):
        raise CorruptStateError(
            f"Redis refused the data while {what}: {text} (a key of this session holds "
            "something promptstate did not write)"
        ) from exc
    raise StoreUnavailableError(f"Redis refused the call while {what}: {text}") from exc


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValidationError(f"{name} must be an int >= 1, got {value!r}")


def _split_address(address: str) -> tuple[str, int]:
    if not isinstance(address, str) or not address:
        raise ValidationError(f"address must be 'host:port', got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return address, 6379
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ValidationError(f"address must be 'host:port', got {address!r}") from None
    if not 0 < number < 65536:
        raise ValidationError(f"port must be 1..65535 in address {address!r}")
    return host, number


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _check_db_path(url: str, scheme: str) -> None:
    """redis-py ignores a database path that is not a number (``redis://host/x``): refuse it."""
    if scheme.startswith("unix"):
        return
    try:
        path = urlsplit(url).path
    except ValueError as exc:
        raise ValidationError(f"bad Redis URL {_redact(url)!r}: {exc}") from None
    db = unquote(path).strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValidationError(
            f"the database in a Redis URL is a number (redis://host:6379/0), got {db!r} "
            f"in {_redact(url)!r}"
        )


def _explain(exc: BaseException) -> str:
    """redis-py's complaint about a URL, saying where promptstate's own options go."""
    text = str(exc)
    match = re.search(r"unexpected keyword argument '(\w+)'", text)
    if match is None:
        return text
    name = match.group(1)
    if name in inspect.signature(RedisStore.from_url).parameters:
        return (
            f"{name!r} is a store option: pass {name}=... to RedisStore.from_url, or open the "
            "URL with open_store(), which reads store options from the query string"
        )
    return f"unknown option {name!r} (neither a store option nor one redis-py knows)"


def _make_single(
    url: str, options: dict[str, Any], max_connections: int, pool_timeout: float | None
) -> Redis:
    extra = {k: v for k, v in options.items() if v is not None}
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, retry=_no_retry(), **extra
    )
    # redis-py passes query parameters it does not know (``?prefix=x``) on to the connection
    # class, which only refuses them with a TypeError on the first call. Building one
    # connection object (no I/O: it connects lazily) makes that happen here instead.
    pool.connection_class(**pool.connection_kwargs)
    return Redis.from_pool(pool)


def _make_cluster(
    factory: Any, options: dict[str, Any], max_connections: int, **where: Any
) -> RedisCluster:
    extra = {k: v for k, v in options.items() if v is not None}
    client: RedisCluster = factory(
        max_connections=max_connections, retry=_no_retry(), **where, **extra
    )
    return client

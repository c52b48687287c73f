"""The worker-thread executor behind :class:`~promptstate.SQLiteStore`.

Threads and connections: ``sqlite3`` blocks, so every call runs in a worker thread
(``anyio.to_thread.run_sync``). Each executor keeps a small pool of connections opened with
``check_same_thread=False``; a connection is checked out by exactly one worker thread for one
trip and returned after it, so no connection is ever used by two threads at once (that
serialization is what makes ``check_same_thread=False`` safe, and a pool avoids one
connection per anyio worker thread, which nobody could close).

Calls are queued in two lanes, reads and writes. A caller that finds its lane with a free slot
(``max_readers`` for reads, one for writes) takes every call queued in the lane and runs them
in one trip to a worker thread; the others wait for their answers. Under load this turns many
thread hops into one, and writes get *group commit*: the queued writes share one ``BEGIN
IMMEDIATE`` transaction, each inside its own savepoint (a failing write rolls back to its
savepoint and leaves the others alone), and every caller is answered after the ``COMMIT``.
Writes of one store therefore never contend with each other for SQLite's write lock; other
processes sharing the file are kept apart by SQLite's locking and the busy timeout. WAL mode
lets reads proceed beside a writer.

Cancellation: a call still in the queue can be cancelled (it never ran). Once taken, the
worker thread is never abandoned (as with ``abandon_on_cancel=False``): the caller waits,
shielded, until its transaction committed or rolled back. A write is all or nothing.

The executor knows nothing of the store's tables: the store hands it ``prepare`` (run once on
the first connection, to create the schema) and ``after_writes`` (run on the write connection
after each group of writes), and translates the errors :meth:`SQLiteExecutor.run` raises.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from promptstate.exceptions import StoreUnavailableError
from promptstate.settle import settled

__all__ = ["Mode", "SQLiteExecutor"]

_T = TypeVar("_T")
Mode = Literal["read", "write", "single"]

#: At most this many queued writes share one transaction (group commit).
_GROUP = 64


class _Pool:
    """Connections to one file, each used by one thread at a time (see the module docs)."""

    def __init__(self, path: str, busy_timeout: float, synchronous: str) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if os.path.isdir(self.path):
            raise StoreUnavailableError(
                f"SQLite database path {self.path!r} is a directory, not a database file"
            )
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit: transactions are explicit BEGIN/COMMIT
            check_same_thread=False,  # safe: one thread at a time, see the module docs
            cached_statements=64,
        )
        try:
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def release(self, conn: sqlite3.Connection, *, broken: bool = False) -> None:
        with self._lock:
            if not broken and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Job:
    """One queued call: what to run and, once run, its outcome."""

    __slots__ = (
        "done_in_thread",
        "error",
        "event",
        "finished",
        "fn",
        "mode",
        "result",
        "started",
        "taken",
    )

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], mode: Mode) -> None:
        self.fn = fn
        self.mode = mode
        self.event = anyio.Event()
        self.taken = False  # a flusher has it: it runs (or ran) in a worker thread
        self.started = False  # the worker thread has begun the batch it is in
        self.done_in_thread = False
        self.finished = False  # its outcome is available to the caller
        self.result: Any = None
        self.error: BaseException | None = None


class _Lane:
    """The queued calls of one kind (reads or writes) and how many flushers run them."""

    __slots__ = ("flushers", "limit", "pending")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.flushers = 0
        self.pending: list[_Job] = []


class _BrokenConnection(Exception):
    """A transaction could not even be rolled back: drop the connection."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class SQLiteExecutor:
    """Runs functions of a ``sqlite3.Connection`` in worker threads (see the module docs).

    Args:
        path: The database file (its folder is created before the first connection).
        busy_timeout: Seconds a connection waits for another process's write lock.
        synchronous: SQLite's ``synchronous`` setting for every connection.
        max_readers: How many read trips may run at once; writes run one at a time.
        prepare: Run once, on the first connection, before any call (creates the schema).
            Until it succeeded it is tried again on the next trip.
        after_writes: Run on the write connection after each trip of writes (outside their
            transaction).
    """

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        synchronous: str,
        max_readers: int,
        *,
        prepare: Callable[[sqlite3.Connection], None],
        after_writes: Callable[[sqlite3.Connection], None],
    ) -> None:
        self._path = path
        self.pool = _Pool(path, busy_timeout, synchronous)
        self._reads = _Lane(max_readers)
        self._writes = _Lane(1)
        self._prepare = prepare
        self._after_writes = after_writes
        self._ready = False
        self._setup_lock = threading.Lock()

    def close(self) -> None:
        """Close the idle connections; the busy ones close when they come back (blocking)."""
        self.pool.close()

    async def run(self, fn: Callable[[sqlite3.Connection], _T], mode: Mode) -> _T:
        """Run ``fn`` in a worker thread and return its result or raise its error as is.

        Calls are queued per lane (reads, writes). A caller that finds a free flusher slot
        takes every queued call of its lane and runs them one after another, each in its own
        transaction, in one trip to a worker thread; the others wait for their result. Under
        load that turns many thread hops into one. A call still in the queue can be
        cancelled (it never ran); once taken, its caller waits, shielded, until it committed
        or rolled back, exactly like ``anyio.to_thread.run_sync`` without abandoning.
        """
        lane = self._writes if mode == "write" else self._reads
        job = _Job(fn, mode)
        lane.pending.append(job)
        try:
            while not job.finished:
                if not job.taken and lane.flushers < lane.limit:
                    await self._flush(lane)
                else:
                    await job.event.wait()
                    if not job.finished:
                        job.event = anyio.Event()
        except BaseException:
            with anyio.CancelScope(shield=True):  # it is running: let it finish whole
                while job.taken and not job.finished:
                    await job.event.wait()
                    if not job.finished:
                        job.event = anyio.Event()
            if not job.finished:  # it never ran: nothing to undo
                if job in lane.pending:
                    lane.pending.remove(job)
                self._wake(lane)  # hand on a takeover this job may have been given
            raise
        error = job.error
        if error is None:
            return job.result  # type: ignore[no-any-return]
        raise error

    async def _flush(self, lane: _Lane) -> None:
        lane.flushers += 1
        batch = list(lane.pending)
        lane.pending.clear()
        for job in batch:
            job.taken = True
        try:
            # settled(): a plain task.cancel() passes anyio's shield around the thread hop, and
            # a batch the worker thread had started then committed after its callers had been
            # told "cancelled" (found by the conformance suite's cancellation section). The
            # hop now runs to its end before a cancellation leaves this call.
            await settled(anyio.to_thread.run_sync(self._run_batch, batch))
        finally:
            lane.flushers -= 1
            # Cancelled before the worker thread started: nothing ran, so requeue the calls
            # (this flusher's own call is then dropped by its caller, which is cancelled).
            unstarted = [job for job in batch if not job.started]
            for job in unstarted:
                job.taken = False
                job.event.set()  # its caller looks again: flush it, or drop it if cancelled
            lane.pending[:0] = unstarted
            for job in batch:
                if not job.started:
                    continue
                if not job.done_in_thread and job.error is None:
                    job.error = StoreUnavailableError(
                        f"SQLite call on {self._path!r} was interrupted"
                    )
                job.finished = True
                job.event.set()
            self._wake(lane)

    @staticmethod
    def _wake(lane: _Lane) -> None:
        """Let the first queued caller of ``lane`` take over flushing, if a slot is free."""
        if lane.pending and lane.flushers < lane.limit:
            lane.pending[0].event.set()

    def _prepare_once(self, conn: sqlite3.Connection) -> None:
        with self._setup_lock:
            if self._ready:
                return
            self._prepare(conn)
            self._ready = True

    def _run_batch(self, batch: list[_Job]) -> None:
        """Run queued calls on one pooled connection (in a worker thread)."""
        for job in batch:
            job.started = True
        conn: sqlite3.Connection | None = None
        try:
            for index, job in enumerate(batch):
                try:
                    if conn is None:
                        if not self._ready:
                            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
                        conn = self.pool.acquire()
                    if not self._ready:
                        self._prepare_once(conn)
                except Exception as exc:  # no connection or no schema: the rest fail alike
                    for other in batch[index:]:
                        other.error = exc
                    break
                if job.mode == "write":  # a lane holds one kind: all of them are writes
                    conn = self._run_writes(conn, batch)
                    if conn is not None:
                        self._after_writes(conn)
                    break
                try:
                    job.result = self._transact(conn, job.fn, job.mode)
                except _BrokenConnection as exc:
                    job.error = exc.original
                    self.pool.release(conn, broken=True)
                    conn = None
                except Exception as exc:
                    job.error = exc
            # Only now is every outcome recorded; anything escaping above (a BaseException)
            # leaves the calls unmarked, and the flusher reports them as interrupted.
            for job in batch:
                job.done_in_thread = True
        finally:
            if conn is not None:
                self.pool.release(conn)

    def _run_writes(self, conn: sqlite3.Connection, batch: list[_Job]) -> sqlite3.Connection | None:
        """Group commit: queued writes share one transaction, each in its own savepoint.

        A write that fails rolls back to its savepoint and leaves the others alone. Its
        caller, like every caller of the group, gets its answer only after the COMMIT; if the
        COMMIT fails (or SQLite abandons the transaction), every write of the group fails and
        none is stored. Returns the connection, or ``None`` when it had to be dropped.
        """
        for start in range(0, len(batch), _GROUP):
            group = batch[start : start + _GROUP]
            done: list[_Job] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for job in group:
                    conn.execute("SAVEPOINT promptstate_call")
                    try:
                        job.result = job.fn(conn)
                    except Exception as exc:
                        job.error = exc
                        if conn.in_transaction:
                            conn.execute("ROLLBACK TO promptstate_call")
                            conn.execute("RELEASE promptstate_call")
                        else:  # SQLite rolled the whole transaction back (disk full, I/O)
                            for other in done:
                                other.error = exc
                            done = []
                            conn.execute("BEGIN IMMEDIATE")
                        continue
                    conn.execute("RELEASE promptstate_call")
                    done.append(job)
                conn.execute("COMMIT")
            except Exception as exc:
                for job in group:
                    if job.error is None or job in done:
                        job.error = exc
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self.pool.release(conn, broken=True)
                    for job in batch[start + _GROUP :]:
                        job.error = exc
                    return None
        return conn

    @staticmethod
    def _transact(
        conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any], mode: Mode
    ) -> Any:
        if mode == "single":  # one statement: its own implicit transaction
            return fn(conn)
        conn.execute("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                raise _BrokenConnection(exc) from exc
            raise
        return result

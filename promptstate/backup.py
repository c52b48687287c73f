"""Backup and restore: any store to JSON Lines and back.

The format is one state per line, each line what :func:`~promptstate.encode_state` writes (the
wire format, with its ``schema_version``, so older backups are migrated on import)::

    async with open_store("redis://localhost:6379/0") as store:
        with open("backup.jsonl", "wb") as f:
            async for line in export_states(store, prefix="alice:"):
                f.write(line)

    async with open_store("postgresql://localhost/app") as store:
        with open("backup.jsonl", "rb") as f:
            result = await import_states(store, f, on_error="skip")
        print(result.imported, result.skipped, result.failed)

Both stream: export holds one state at a time (as far as the store's ``list_by_prefix``
streams) and import a small batch, so memory stays flat for any number of sessions.

On import, a state whose id exists already is *skipped and counted* (``result.skipped``)
unless ``overwrite=True``; so an interrupted import can simply be run again. A line that does
not decode (or names an invalid key) raises :class:`~promptstate.exceptions.CorruptStateError`
naming its line number, or with ``on_error="skip"`` is counted in ``result.failed`` and
described in ``result.errors``. Imported states keep their messages, ``user_id``,
``metadata``, ``total_cost`` and ``created_at``; the store gives them a new ``version``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Literal

import anyio
import msgspec

from promptstate.exceptions import (
    ConflictError,
    CorruptStateError,
    InvalidKeyError,
    ValidationError,
)
from promptstate.serialization import decode_state, encode_state
from promptstate.stores.base import Store, validate_key, validate_prefix
from promptstate.types import State

__all__ = ["ImportIssue", "ImportResult", "export_states", "import_states"]

logger = logging.getLogger(__name__)

#: How many states an import writes concurrently.
BATCH_SIZE = 32
#: How many bad lines an import describes in ``ImportResult.errors`` (all are counted).
MAX_REPORTED_ERRORS = 1000


class ImportIssue(msgspec.Struct, frozen=True):
    """One line an import could not use.

    Attributes:
        line: Its line number (1 for the first line).
        message: What was wrong.
    """

    line: int
    message: str


class ImportResult(msgspec.Struct, kw_only=True):
    """What :func:`import_states` did.

    Attributes:
        imported: States written.
        skipped: States not written because their id exists already (``overwrite=False``).
        failed: Lines that were not a valid state (with ``on_error="skip"``).
        errors: The first 1000 failed lines, with their line numbers.
        skipped_ids: The first 1000 ids that were skipped.
    """

    imported: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[ImportIssue] = []
    skipped_ids: list[str] = []


async def export_states(store: Store, prefix: str = "") -> AsyncIterator[bytes]:
    """Every state whose id starts with ``prefix``, each as one JSON line (ending in ``\\n``).

    Raises:
        InvalidKeyError: ``prefix`` is not a valid prefix.
        StoreUnavailableError: The store could not be read.
    """
    if not isinstance(store, Store):
        raise ValidationError(f"export_states() takes a Store, got {type(store).__name__}")
    validate_prefix(prefix)
    count = 0
    async for state in store.list_by_prefix(prefix):
        yield encode_state(state) + b"\n"
        count += 1
    logger.debug("exported %d states with prefix %r", count, prefix)


async def _lines(
    lines: Iterable[bytes | str] | AsyncIterable[bytes | str],
) -> AsyncIterator[bytes | str]:
    if isinstance(lines, AsyncIterable):
        async for line in lines:
            yield line
    else:
        for line in lines:
            yield line


async def import_states(
    store: Store,
    lines: Iterable[bytes | str] | AsyncIterable[bytes | str],
    *,
    overwrite: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
) -> ImportResult:
    """Write the states of a JSON Lines backup into ``store``.

    Args:
        store: Where to write them.
        lines: The lines: a file opened in binary (or text) mode, a list, or an async
            iterable; each item one line. Blank lines are ignored.
        overwrite: Replace states whose id exists already. Without it they are left as they
            are and counted in ``skipped``.
        on_error: ``"raise"``: a line that is not a valid state stops the import with
            :class:`CorruptStateError` naming the line number (the states of earlier lines
            are written). ``"skip"``: count it in ``failed``, describe it in ``errors``, and
            go on.

    Raises:
        CorruptStateError: A bad line, with ``on_error="raise"``.
        StoreUnavailableError: The store could not be written.
    """
    if not isinstance(store, Store):
        raise ValidationError(f"import_states() takes a Store, got {type(store).__name__}")
    if on_error not in ("raise", "skip"):
        raise ValidationError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(lines, (str, bytes)):
        raise ValidationError("import_states() takes an iterable of lines, not one str or bytes")
    result = ImportResult()
    batch: list[tuple[int, State]] = []
    ids: set[str] = set()

    async def fail(lineno: int, message: str) -> None:
        if on_error == "raise":
            await flush()  # the lines before it are written, as documented
            raise CorruptStateError(
                f"line {lineno}: {message} (the import stopped there; the lines before it "
                f"wrote {result.imported} and skipped {result.skipped})"
            )
        result.failed += 1
        if len(result.errors) < MAX_REPORTED_ERRORS:
            result.errors.append(ImportIssue(lineno, message))

    async def write(lineno: int, state: State) -> None:
        key = state.conversation_id
        try:
            await store.set(key, state, expected_version=None if overwrite else 0)
        except ConflictError:
            result.skipped += 1
            if len(result.skipped_ids) < MAX_REPORTED_ERRORS:
                result.skipped_ids.append(key)
            return
        result.imported += 1

    async def flush() -> None:
        if len(batch) == 1:
            await write(*batch[0])
        elif batch:
            async with anyio.create_task_group() as tg:
                for lineno, state in batch:
                    tg.start_soon(write, lineno, state)
        batch.clear()
        ids.clear()

    lineno = 0
    async for raw in _lines(lines):
        lineno += 1
        line = raw.strip()
        if not line:
            continue
        try:
            state = decode_state(line)
        except CorruptStateError as exc:
            await fail(lineno, str(exc))
            continue
        try:
            validate_key(state.conversation_id, what="conversation_id")
        except InvalidKeyError as exc:
            await fail(lineno, str(exc))
            continue
        if state.conversation_id in ids:  # a later line for the same id wins, in order
            await flush()
        batch.append((lineno, state))
        ids.add(state.conversation_id)
        if len(batch) >= BATCH_SIZE:
            await flush()
    await flush()
    logger.info(
        "imported %d states (%d skipped, %d failed)", result.imported, result.skipped, result.failed
    )
    return result

"""The leasing section of the conformance suite can fail: stores that break a lease rule are
caught (as tests/stores/test_custom_store.py shows for prefixes and lost updates)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from promptstate import Message
from promptstate.stores.base import LeasingStore
from promptstate.testing import StoreConformance
from tests.pipeline_support import LeasingMemoryStore

pytestmark = pytest.mark.anyio


class KeepsTheLease(LeasingMemoryStore):
    """Bug: its own (so: claimed atomic) turn write stores the turn and keeps the lease."""

    async def _append_turn(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        cost: float,
        turn_id: str | None,
        expected_count: int | None,
        release_lease: str | None,
    ) -> int:
        return await LeasingStore._append_turn(
            self,
            session_id,
            messages,
            cost=cost,
            turn_id=turn_id,
            expected_count=expected_count,
            release_lease=None,
        )


class WritesWithoutTheLease(KeepsTheLease):
    """Bug: appends the turn (as KeepsTheLease does), then releases the lease, never checking
    who holds it (what the base class's default did before 0.2)."""

    async def _append_turn(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        cost: float,
        turn_id: str | None,
        expected_count: int | None,
        release_lease: str | None,
    ) -> int:
        count = await super()._append_turn(
            session_id,
            messages,
            cost=cost,
            turn_id=turn_id,
            expected_count=expected_count,
            release_lease=release_lease,
        )
        if release_lease is not None:
            await self._release_lease(session_id, release_lease)
        return count


class ReadsWithoutTheLease(LeasingMemoryStore):
    """Bug: reads the history even when another owner holds the lease."""

    async def acquire_and_load(  # type: ignore[override]
        self, key: str, owner: str, ttl: float, *, last: int | None
    ) -> list[Message] | None:
        await self.acquire_lease(key, owner, ttl)
        return await self.load(key, last=last)


async def test_the_suite_catches_a_turn_write_that_keeps_the_lease() -> None:
    with pytest.raises(AssertionError, match="kept its lease"):
        await StoreConformance().test_cancelled_lease_calls_are_settled(KeepsTheLease())


async def test_the_suite_catches_a_read_without_the_lease() -> None:
    with pytest.raises(AssertionError):
        await StoreConformance().test_acquire_and_load_reads_only_with_the_lease(
            ReadsWithoutTheLease()
        )


async def test_the_suite_catches_a_turn_written_without_the_lease() -> None:
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        await StoreConformance().test_append_turn_with_no_or_an_expired_lease_stores_nothing(
            WritesWithoutTheLease()
        )


async def test_a_correct_leasing_store_passes_what_it_can() -> None:
    # The in-process leasing store with the base class's defaults passes (so the catches
    # above are for the bugs, not the setup); the whole suite runs on it as "memory-leased".
    suite = StoreConformance()
    await suite.test_leases_exclude_renew_release_and_expire(LeasingMemoryStore())
    await suite.test_acquire_and_load_reads_only_with_the_lease(LeasingMemoryStore())
    await suite.test_cancelled_lease_calls_are_settled(LeasingMemoryStore())
    await suite.test_append_turn_with_no_or_an_expired_lease_stores_nothing(LeasingMemoryStore())

"""The turn-append rule (promptstate.stores.turns) as a pure function: its order and answers.

Every backend calls it (or, on Redis, runs it in Lua and raises its errors); the conformance
suite checks each backend's refusals read the same as these."""

from __future__ import annotations

import pytest

from promptstate import ConflictError, LeaseLostError, Message
from promptstate.stores.turns import TURN_ID_KEY, decide_turn, turn_refusal, turn_stored


def _start(turn_id: str | None) -> Message:
    return Message("user", "q", metadata={} if turn_id is None else {TURN_ID_KEY: turn_id})


def test_a_stored_turn_is_a_no_op_before_every_other_rule() -> None:
    # Stored already: no lease and a wrong count do not matter; nothing is written.
    assert not decide_turn(
        "s",
        count=4,
        size=2,
        start=_start("t"),
        turn_id="t",
        expected_count=0,
        lease_held=False,
    )


def test_the_lease_goes_before_the_count() -> None:
    with pytest.raises(LeaseLostError, match="not held by this turn: nothing stored"):
        decide_turn(
            "s",
            count=4,
            size=2,
            start=_start("other"),
            turn_id="t",
            expected_count=0,
            lease_held=False,
        )
    with pytest.raises(ConflictError, match=r"session 's' holds 4 messages, expected 0"):
        decide_turn(
            "s", count=4, size=2, start=None, turn_id="t", expected_count=0, lease_held=True
        )


def test_write_unless_empty() -> None:
    assert decide_turn("s", count=0, size=2, start=None, turn_id=None, expected_count=0)
    assert decide_turn("s", count=3, size=1, start=None, turn_id="t", expected_count=None)
    assert not decide_turn("s", count=3, size=0, start=None, turn_id="t", expected_count=3)
    # An empty turn is still refused when the lease is gone.
    with pytest.raises(LeaseLostError):
        decide_turn(
            "s", count=3, size=0, start=None, turn_id=None, expected_count=None, lease_held=False
        )


def test_turn_stored_needs_the_same_id_on_the_start_message() -> None:
    assert turn_stored(_start("t"), "t")
    assert not turn_stored(_start("t"), "u")
    assert not turn_stored(_start(None), "t")
    assert not turn_stored(None, "t")
    assert not turn_stored(_start("t"), None)


def test_refusals_name_the_session_and_the_counts() -> None:
    assert turn_refusal("s", 2, expected_count=None) is None
    assert turn_refusal("s", 2, expected_count=2, lease_held=True) is None
    conflict = turn_refusal("a{b}", 2, expected_count=5)
    assert isinstance(conflict, ConflictError)
    assert str(conflict) == "session 'a{b}' holds 2 messages, expected 5"
    lost = turn_refusal("a{b}", 2, expected_count=5, lease_held=False)
    assert isinstance(lost, LeaseLostError)
    assert str(lost) == "the lease on session 'a{b}' is not held by this turn: nothing stored"

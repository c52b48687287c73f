"""The turn-append rule, written once: every backend applies it inside its own atomic step.

:meth:`Store.append_turn <promptstate.Store.append_turn>` appends one pipeline turn. Whether
it writes is decided from the session as the backend's atomic step sees it (a transaction, a
Lua script, one step of the event loop), in this order:

1. **Stored already.** The session ends with this turn: the stored message where the turn
   would start carries ``turn_id`` under :data:`TURN_ID_KEY`. A retry whose first try was
   stored: nothing is written and the answer is the current count (a held lease is released).
2. **Lease.** With ``release_lease``, the owner must hold the session's live lease, else
   :class:`~promptstate.exceptions.LeaseLostError` and nothing is stored.
3. **Count.** With ``expected_count``, the session must hold that many messages, else
   :class:`~promptstate.exceptions.ConflictError`.
4. **Empty.** A turn of no messages writes nothing (a held lease is released).

:func:`decide_turn` is that decision, a pure function of what the step read. Redis runs the
same rules in Lua, inside the server, and raises the error :func:`turn_refusal` makes, so
the messages are the same everywhere (the conformance suite compares them on every backend).
"""

from __future__ import annotations

from promptstate.exceptions import ConflictError, LeaseLostError
from promptstate.types import Message

__all__ = ["TURN_ID_KEY", "decide_turn", "lease_lost", "turn_refusal", "turn_stored"]

#: The ``Message.metadata`` key under which :meth:`Store.append_turn` records a turn's id (on
#: the first message of the turn), so a retried append can tell it was already applied.
TURN_ID_KEY = "turn_id"


def turn_stored(start: Message | None, turn_id: str | None) -> bool:
    """Whether ``start``, the stored message where this turn would begin, opens ``turn_id``.

    ``start`` is the message at index ``count - len(turn)``, or ``None`` when the session holds
    fewer messages than the turn (or the caller did not read it because ``turn_id`` is None).
    """
    return turn_id is not None and start is not None and start.metadata.get(TURN_ID_KEY) == turn_id


def lease_lost(session_id: str) -> LeaseLostError:
    """The error that refuses a turn whose lease is not held (rule 2)."""
    return LeaseLostError(
        f"the lease on session {session_id!r} is not held by this turn: nothing stored"
    )


def turn_refusal(
    session_id: str, count: int, *, expected_count: int | None, lease_held: bool | None = None
) -> LeaseLostError | ConflictError | None:
    """The error that refuses a turn that is not stored yet (rules 2 and 3), or ``None``.

    Args:
        session_id: The session, for the message.
        count: How many messages the session holds now.
        expected_count: The count the caller expects, or ``None`` for any.
        lease_held: Whether the caller's owner holds the live lease; ``None`` when the call
            releases no lease.

    Returns:
        :class:`~promptstate.exceptions.LeaseLostError` when ``lease_held`` is False, else
        :class:`~promptstate.exceptions.ConflictError` when ``expected_count`` is given and
        differs from ``count``, else ``None``.
    """
    if lease_held is False:
        return lease_lost(session_id)
    if expected_count is not None and expected_count != count:
        return ConflictError(
            f"session {session_id!r} holds {count} messages, expected {expected_count}"
        )
    return None


def decide_turn(
    session_id: str,
    *,
    count: int,
    size: int,
    start: Message | None,
    turn_id: str | None,
    expected_count: int | None,
    lease_held: bool | None = None,
) -> bool:
    """Whether to write a turn of ``size`` messages: the four rules of the module docs.

    Returns:
        True: write it. False: write nothing and answer ``count`` (stored already, or empty);
        a backend releasing a lease releases it then too, if it is held.

    Raises:
        LeaseLostError: The lease is not held and the turn is not stored.
        ConflictError: The count is not ``expected_count`` and the turn is not stored.
    """
    # turn_stored and turn_refusal, inlined: this runs on every pipeline turn.
    if (
        size
        and turn_id is not None
        and start is not None
        and start.metadata.get(TURN_ID_KEY) == turn_id
    ):
        return False
    if lease_held is False or (expected_count is not None and expected_count != count):
        error = turn_refusal(
            session_id, count, expected_count=expected_count, lease_held=lease_held
        )
        if error is not None:  # always, by the condition above
            raise error
    return size > 0

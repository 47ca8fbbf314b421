"""The consumer group's state (`shared.stream.GroupState`): what is pending, and below which
position everything is settled (the safe point to trim the stream to)."""

from __future__ import annotations

import pytest

from shared.entries import StreamId
from shared.stream import GroupState


@pytest.mark.parametrize(("unacked", "lag", "pending"), [
    (0, 0, 0), (3, 0, 3), (0, 4, 4), (3, 4, 7), (500_000, 1, 500_001)])
def test_pending_is_unacked_plus_lag(unacked: int, lag: int, pending: int) -> None:
    assert GroupState(exists=True, unacked=unacked, lag=lag).pending == pending


@pytest.mark.parametrize("exists", [True, False])
def test_nothing_is_settled_below_any_position_before_the_first_delivery(exists: bool) -> None:
    assert GroupState(exists=exists, unacked=0, lag=12).settled_below is None


def test_with_nothing_unacked_it_is_the_position_after_the_last_delivered() -> None:
    state = GroupState(exists=True, unacked=0, lag=0, last_delivered=StreamId(1700000000000, 4))
    assert state.settled_below == StreamId(1700000000000, 5)


@pytest.mark.parametrize(("last", "after"), [
    (StreamId(0, 0), StreamId(0, 1)),
    (StreamId(1700000000000, 0), StreamId(1700000000000, 1)),
    (StreamId(5, 41), StreamId(5, 42)),
    (StreamId(2**63 - 1, 2**62), StreamId(2**63 - 1, 2**62 + 1)),
])
def test_the_position_after_is_the_same_millisecond_and_the_next_sequence(
        last: StreamId, after: StreamId) -> None:
    # Not the next millisecond: an entry added later in the same millisecond would be trimmed.
    state = GroupState(exists=True, unacked=0, lag=3, last_delivered=last)
    assert state.settled_below == after


def test_with_entries_unacked_it_is_the_oldest_unacked() -> None:
    state = GroupState(exists=True, unacked=2, lag=1, oldest_unacked=StreamId(900, 2),
                       last_delivered=StreamId(1000, 4))
    assert state.settled_below == StreamId(900, 2)


def test_the_oldest_unacked_wins_even_when_it_is_the_last_delivered() -> None:
    state = GroupState(exists=True, unacked=1, lag=0, oldest_unacked=StreamId(1000, 4),
                       last_delivered=StreamId(1000, 4))
    assert state.settled_below == StreamId(1000, 4)

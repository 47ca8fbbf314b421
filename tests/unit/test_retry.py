"""The consumer's backoff after an outage (`services.consumer.retry.backoff_s`)."""

from __future__ import annotations

import pytest

from services.consumer.retry import backoff_s


@pytest.mark.parametrize(("attempt", "pause"), [
    (1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 3.2), (7, 5.0), (8, 5.0), (50, 5.0)])
def test_the_pause_starts_at_a_tenth_of_a_second_and_doubles_up_to_five(
        attempt: int, pause: float) -> None:
    assert backoff_s(attempt) == pytest.approx(pause, rel=1e-12)


@pytest.mark.parametrize("attempt", [1024, 1025, 1100, 10**6])
def test_a_long_outage_keeps_the_pause_at_five_seconds(attempt: int) -> None:
    # At 5 s a try, attempt 1025 comes after about 85 minutes of outage: it must not overflow.
    assert backoff_s(attempt) == 5.0

"""The bench's flatness figures: settled events/s over the first and the last tenth."""

from __future__ import annotations

import pytest

from services.bench.probes import Sample
from services.bench.report import tenth_rates


def test_a_steady_run_has_the_same_rate_in_its_first_and_last_tenth() -> None:
    samples = [Sample(t / 10, 100 * t, 100 * t, 0) for t in range(1, 101)]  # 1,000/s
    first, last = tenth_rates(samples, 10_000)
    assert first == pytest.approx(1000) and last == pytest.approx(1000)


def test_a_run_that_slows_down_shows_it_in_its_last_tenth() -> None:
    # 9,000 events in 9 s, then the last 1,000 in 4 s.
    samples = [Sample(float(t), 1000 * t, 1000 * t, 0) for t in range(1, 10)]
    samples += [Sample(9.0 + t, 9000 + 250 * t, 9000 + 250 * t, 0) for t in range(1, 5)]
    first, last = tenth_rates(samples, 10_000)
    assert first == pytest.approx(1000) and last == pytest.approx(250)


def test_the_tenths_are_read_between_samples() -> None:
    samples = [Sample(2.0, 400, 400, 0), Sample(4.0, 1000, 1000, 0)]
    first, last = tenth_rates(samples, 1000)  # 100 events by 0.5 s; the last 100 in 1/3 s
    assert first == pytest.approx(200) and last == pytest.approx(300)

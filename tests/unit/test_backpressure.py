"""The backpressure decision (`services.ingest.backpressure.Backlog`), without a server: when
to read the backlog again, and whether a request fits under MAX_BACKLOG."""

from __future__ import annotations

import pytest

from services.ingest.backpressure import Backlog


def read(limit: int, value: int, at: float = 0.0, max_age_s: float = 0.25) -> Backlog:
    backlog = Backlog(limit, max_age_s=max_age_s)
    backlog.refreshed(value, at)
    return backlog


@pytest.mark.parametrize("count", [1, 1000, 10**9])
def test_without_a_limit_everything_is_admitted(count: int) -> None:
    assert read(0, 10**12).admits(count)


def test_without_a_limit_the_backlog_is_never_read() -> None:
    backlog = Backlog(0)
    assert not backlog.stale(0.0)
    assert not backlog.stale(10**9)


def test_the_default_age_is_a_tenth_of_a_second() -> None:
    backlog = Backlog(10)
    backlog.refreshed(0, 100.0)
    assert backlog.max_age_s == 0.1
    assert not backlog.stale(100.0 + 0.1)
    assert backlog.stale(100.0 + 0.1 + 1e-9)


@pytest.mark.parametrize(("value", "count"), [(0, 10), (8, 2), (10, 0), (9, 1)])
def test_a_request_that_reaches_the_limit_exactly_is_admitted(value: int, count: int) -> None:
    assert read(10, value).admits(count)


@pytest.mark.parametrize(("value", "count"), [(0, 11), (8, 3), (10, 1), (11, 0)])
def test_a_request_one_over_the_limit_or_more_is_refused(value: int, count: int) -> None:
    assert not read(10, value).admits(count)


def test_a_backlog_never_read_is_stale() -> None:
    assert Backlog(10).stale(0.0)
    assert Backlog(10).stale(-1e9)


def test_a_reading_is_fresh_up_to_max_age_and_stale_after() -> None:
    backlog = read(10, 3, at=2.0, max_age_s=0.25)  # binary fractions: exact arithmetic
    assert not backlog.stale(2.0)
    assert not backlog.stale(2.25)
    assert backlog.stale(2.5)
    backlog.refreshed(4, 2.5)
    assert not backlog.stale(2.75)


def test_a_new_reading_replaces_the_value_and_what_was_added() -> None:
    backlog = read(10, 9)
    backlog.added(5)
    assert not backlog.admits(1)
    backlog.refreshed(2, 1.0)
    assert backlog.admits(8)
    assert not backlog.admits(9)


def test_what_this_process_appends_counts_until_the_next_reading() -> None:
    backlog = read(10, 5)
    assert backlog.admits(5)
    backlog.added(3)
    assert backlog.admits(2)
    assert not backlog.admits(3)
    backlog.added(2)
    assert not backlog.admits(1)


def test_the_bytes_limit_alone_makes_the_backlog_read_and_refuses_past_it() -> None:
    backlog = Backlog(0, bytes_limit=1000)
    assert backlog.stale(0.0)
    backlog.refreshed(10**9, 0.0, size=600)
    assert backlog.admits(10**6, 400)
    assert not backlog.admits(1, 401)
    assert backlog.over_bytes(401)


def test_either_limit_refuses_and_the_bytes_appended_count_until_the_next_reading() -> None:
    backlog = Backlog(10, bytes_limit=1000)
    backlog.refreshed(5, 0.0, size=500)
    assert not backlog.admits(6, 1)  # entries
    assert not backlog.over_bytes(1)
    assert not backlog.admits(1, 501)  # bytes
    backlog.added(1, 500)
    assert not backlog.admits(1, 1)
    assert backlog.over_bytes(1)
    backlog.refreshed(0, 1.0, size=0)
    assert backlog.admits(10, 1000)

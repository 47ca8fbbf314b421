"""`logagg dlq list`, as a person reads it: one line per letter, whatever a client sent."""

from __future__ import annotations

from datetime import UTC, datetime

from services.dlq.__main__ import _line
from shared.entries import StreamId
from shared.store import DeadLetter


def test_a_letter_s_client_data_cannot_reach_the_terminal_as_escape_sequences_or_lines() -> None:
    letter = DeadLetter(
        position=StreamId(1, 0), topic="auth\x1b[2J", event_id="e-1\r\nFAKE  dead",
        event=b"{}", reason="store_rejected",
        last_error='invalid input "\x1b]0;owned\x07"\nDETAIL: more', deliveries=5,
        status="dead", dead_lettered_at=datetime(2026, 11, 26, tzinfo=UTC), replayed_at=None)
    line = _line(letter)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x07" not in line
    assert line.endswith(r'auth\x1b[2J/e-1\x0d\x0aFAKE  dead  invalid input "\x1b]0;owned\x07"')

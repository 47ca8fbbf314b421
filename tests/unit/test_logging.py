"""Log lines: JSON objects for machines, key=value text for people, the action always there."""

from __future__ import annotations

import io
import logging
import sys

import orjson
import pytest

from shared.logging import JsonFormatter, TextFormatter, configure


def record(**extra: object) -> logging.LogRecord:
    made = logging.LogRecord("services.consumer.loop", logging.INFO, __file__, 1,
                             "batch settled", None, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_carries_the_message_level_logger_and_every_extra_field() -> None:
    line = orjson.loads(JsonFormatter().format(record(action="batch_settled", unique=12)))
    assert line["message"] == "batch settled"
    assert line["level"] == "INFO"
    assert line["logger"] == "services.consumer.loop"
    assert (line["action"], line["unique"]) == ("batch_settled", 12)
    assert line["ts"].endswith("Z")


def test_a_json_line_holds_the_exception_of_a_failure() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record(action="batch_failed")
        failed.exc_info = sys.exc_info()
    line = orjson.loads(JsonFormatter().format(failed))
    assert "ValueError: boom" in line["exception"]


def test_a_text_line_reads_as_key_value_pairs_after_the_message() -> None:
    text = TextFormatter().format(record(action="batch_settled", unique=12, note="two words"))
    assert text.endswith('batch settled action=batch_settled unique=12 note="two words"')


@pytest.mark.parametrize(("value", "shown"), [
    ("plain", "plain"),
    ("ünïcødé 漢字", '"ünïcødé 漢字"'),
    ("", '""'),
    ("x level=ERROR", '"x level=ERROR"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("line\n2026-11-26 ERROR forged", '"line\\x0a2026-11-26 ERROR forged"'),
    ("\x1b[2J\x1b]0;title\x07", '"\\x1b[2J\\x1b]0;title\\x07"'),
    ("abc\u202edcba", '"abc\\u202edcba"'),
    ("a\\x1b", '"a\\\\x1b"'),
])
def test_a_text_line_escapes_what_a_terminal_acts_on_and_quotes_what_is_ambiguous(
        value: str, shown: str) -> None:
    """Values and messages carry client data: one record stays one line, writes no escape
    sequence, and each value stays one token (an escape cannot be forged: `\\` is doubled)."""
    text = TextFormatter().format(record(action="probe", value=value))
    assert text.endswith(f" action=probe value={shown}")
    assert "\n" not in text and "\x1b" not in text and "\u202e" not in text


def test_a_text_line_escapes_the_message_and_indents_each_line_of_a_traceback() -> None:
    try:
        raise ValueError("bad key\nFAKE 2026 INFO forged line")
    except ValueError:
        failed = logging.LogRecord("t", logging.ERROR, __file__, 1, "refused %s", ("a\rb",),
                                   sys.exc_info())
    lines = TextFormatter().format(failed).split("\n")
    assert lines[0].endswith("ERROR t: refused a\\x0db")
    assert lines[1:] and all(line.startswith("    ") for line in lines[1:])
    assert lines[-2:] == ["    ValueError: bad key", "    FAKE 2026 INFO forged line"]


@pytest.mark.parametrize(("log_format", "is_json"), [("json", True), ("text", False),
                                                      ("auto", True)])
def test_the_format_follows_the_setting_and_auto_is_json_off_a_terminal(
        monkeypatch: pytest.MonkeyPatch, log_format: str, is_json: bool) -> None:
    stream = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("INFO", log_format)
        logging.getLogger("t").info("hello", extra={"action": "probe"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = stream.getvalue().strip()
    assert line.startswith("{") is is_json
    assert "probe" in line

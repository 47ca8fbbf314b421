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
    assert text.endswith("batch settled action=batch_settled unique=12 note='two words'")


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

"""Logging set-up shared by every process.

Modules log through `logging.getLogger(__name__)` and put a stable action name, plus any figures,
in `extra`: `logger.info("batch settled", extra={"action": "batch_settled", "unique": 12})`.
Output is one JSON object per line (for log shippers) unless stderr is a terminal, where a
person reads `time level logger: message key=value ...` instead; LOG_FORMAT=json|text forces
one or the other.
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str, option=orjson.OPT_UTC_Z).decode()


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`, one line per record whatever the record
    holds: messages and values carry client data (topics, event ids, PostgreSQL's error text
    about them), so control characters are escaped (`printable`) and a value that could pass
    for more than one value is quoted (`_render`)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        line = printable(self.formatMessage(record))
        extra = _extra(record)
        if extra:
            line += " " + " ".join(f"{printable(k)}={_render(v)}" for k, v in extra.items())
        # A traceback keeps its lines, each indented, so that none can pass for a record.
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n    {printable(part)}" for part in trace.splitlines())
        return line


# What a terminal may act on instead of showing: C0 and C1 controls (escape sequences, carriage
# returns, new lines), format characters (bidirectional overrides, zero-width joiners) and the
# Unicode line and paragraph separators.
_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp"}


def printable(text: str) -> str:
    """`text` with every character a terminal could act on written as an escape (`\\x1b`,
    `\\u202e`), and the backslash doubled, so that an escape cannot be forged either.
    Printable text, accented letters and other scripts included, is left as it is."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, checked in C
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in _UNPRINTABLE:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


# Characters that would let one value read as several, or as another's quoting.
_AMBIGUOUS = frozenset(' ="\'\\')


def _render(value: Any) -> str:
    """A value as one token: as it is when that is unambiguous, else double-quoted with `"`
    escaped (logfmt's convention)."""
    text = printable(str(value))
    if text and not any(char in text for char in _AMBIGUOUS):
        return text
    return '"' + text.replace('"', '\\"') + '"'


def configure(level: str, log_format: str = "auto") -> None:
    """Log to stderr at `level`, in `log_format`: json, text, or auto (text on a terminal)."""
    json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request access lines would drown the per-batch summaries.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

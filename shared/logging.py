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
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extra(record)
        if extra:
            line += " " + " ".join(f"{k}={_render(v)}" for k, v in extra.items())
        return line


def _render(value: Any) -> str:
    text = str(value)
    return repr(text) if " " in text or text == "" else text


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

"""Logging set-up shared by every process.

Modules log through `logging.getLogger(__name__)` and put a stable action name, plus any figures,
in `extra`: `logger.info("batch settled", extra={"action": "batch_settled", "unique": 12})`. The
formatter prints those fields after the message, so a line stays greppable by action.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if extra:
            line += " " + " ".join(f"{k}={_render(v)}" for k, v in extra.items())
        return line


def _render(value: Any) -> str:
    text = str(value)
    return repr(text) if " " in text or text == "" else text


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

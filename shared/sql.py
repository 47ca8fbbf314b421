"""The named queries of `sql/queries.sql`, parsed once.

A block starts with `-- name: <name>` and runs to the next one; other comment lines are kept
out of the query text.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from shared.paths import SQL_DIR

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def queries(path: Path = SQL_DIR / "queries.sql") -> dict[str, str]:
    return parse(path.read_text())


def migrations(directory: Path = SQL_DIR) -> list[tuple[str, str]]:
    """`(version, sql)` of each numbered migration file, in order (`0001_init.sql`: `0001_init`)."""
    files = sorted(p for p in directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [(p.stem, p.read_text()) for p in files]

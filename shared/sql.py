"""The named queries of `sql/queries.sql`, parsed once, and the numbered migration files.

A block starts with `-- name: <name>` and runs to the next one; other comment lines are kept
out of the query text.

A migration file whose first line is `-- logagg: no-transaction` runs outside a transaction
(for `CREATE INDEX CONCURRENTLY`): one statement per `;` that ends a line, so no dollar quotes;
each statement must be idempotent (`IF NOT EXISTS`), and a `CREATE INDEX` in it must say
`CONCURRENTLY IF NOT EXISTS` and an unquoted name, which `Migration.indexes` lists (see
shared/migrations.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from shared.exceptions import MigrationError
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


NO_TRANSACTION = "-- logagg: no-transaction"
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_CREATE_INDEX = re.compile(r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\b", re.IGNORECASE)
_CONCURRENT_INDEX = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)\s",
    re.IGNORECASE)


@dataclass(frozen=True)
class Migration:
    """One numbered file: `0001_init.sql` is version `0001_init`."""

    version: str
    text: str
    transactional: bool = True
    statements: tuple[str, ...] = field(default=(), compare=False)
    # The indexes its `CREATE INDEX CONCURRENTLY IF NOT EXISTS` statements build.
    indexes: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, version: str, text: str) -> Migration:
        if text.split("\n", 1)[0].strip() != NO_TRANSACTION:
            return cls(version, text)
        if "$" in text:
            raise MigrationError(f"migration {version} runs outside a transaction, one statement "
                                 f"per `;` that ends a line: it cannot hold dollar quotes")
        statements = tuple(s for s in (_strip_comments(p) for p in _STATEMENT_END.split(text))
                           if s)
        indexes = []
        for statement in statements:
            index = index_built_by(statement)
            if index:
                indexes.append(index)
            elif _CREATE_INDEX.search(statement):
                raise MigrationError(
                    f"migration {version} runs outside a transaction: its CREATE INDEX must say "
                    f"CONCURRENTLY IF NOT EXISTS, to be safe to run again: {statement!r}")
        return cls(version, text, False, statements, tuple(indexes))


def index_built_by(statement: str) -> str | None:
    """The (unquoted) name of the index a `CREATE INDEX CONCURRENTLY IF NOT EXISTS` builds."""
    match = _CONCURRENT_INDEX.search(statement)
    return match.group(1).lower() if match else None


def _strip_comments(part: str) -> str:
    lines = [line for line in part.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """Each numbered migration file, in order (`0001_init.sql`: `0001_init`)."""
    files = sorted(p for p in directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [Migration.parse(p.stem, p.read_text()) for p in files]

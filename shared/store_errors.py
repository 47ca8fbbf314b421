"""The store's error policy: which PostgreSQL failures blame the data, and which the system.

Every call of `Store` runs under `translated()`, so the rest of logagg sees logagg's own
exceptions (`shared/exceptions.py`) and never decides on a SQLSTATE itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool

from shared.exceptions import EntryRejected, StoreConflict, StoreUnavailable

# Errors that blame the data: data exceptions (class 22, and psycopg's own refusal to send a
# NUL in text, a DataError), integrity constraint violations (23), program limits exceeded (54)
# and errors raised by PL/pgSQL (P0: a trigger that refuses a row). Only these lead an entry
# toward the dead letters.
DATA_ERROR_CLASSES = ("22", "23", "54", "P0")
# Conflicts between concurrent transactions: retrying the same transaction is the cure.
CONFLICT_STATES = ("40001", "40P01")  # serialization_failure, deadlock_detected


def classify(error: BaseException) -> type[StoreUnavailable] | type[EntryRejected]:
    """Which logagg exception a failure of the store is. Anything not the data's fault and not
    a conflict (connection lost, server shutting down, disk full, a missing table, a pool that
    found no connection in time) is `StoreUnavailable`: retried, never dead-lettered."""
    if isinstance(error, psycopg.Error):
        state = error.sqlstate or ""
        if isinstance(error, psycopg.DataError | psycopg.IntegrityError) \
                or state[:2] in DATA_ERROR_CLASSES:
            return EntryRejected
        if state in CONFLICT_STATES:
            return StoreConflict
    return StoreUnavailable


def describe(error: BaseException) -> str:
    """`[SQLSTATE] ErrorClass: message`, the form dead letters and logs keep."""
    state = getattr(error, "sqlstate", None)
    prefix = f"[{state}] " if state else ""
    return f"{prefix}{type(error).__name__}: {str(error).strip()}"


@contextmanager
def translated() -> Iterator[None]:
    """Raise the failures of the statements inside as logagg's exceptions, cause kept."""
    try:
        yield
    except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
        raise classify(error)(describe(error)) from error

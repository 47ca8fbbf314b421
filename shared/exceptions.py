"""One exception tree for logagg. Each exception's docstring is its default message.

The store (`shared/store.py`, with its SQLSTATE policy in `shared/store_errors.py`) and the
stream (`shared/stream.py`) raise only these, never their drivers' exceptions, and keep the
driver's exception as `__cause__`. Callers decide on the kind alone:

- `BrokerUnavailable`: Redis did not answer, or refused the command. Ingest answers 503;
  a consumer backs off and retries.
- `GroupMissing`: the consumer group is gone (deleted, or Redis lost it). A consumer
  recreates it and retries.
- `StoreUnavailable`: PostgreSQL did not answer, or failed for a reason that is not the data's.
  Ingest answers 503; a consumer backs off and retries, unless PostgreSQL answers right after:
  then it settles the batch entry by entry, as for `EntryRejected` (`services/consumer/retry.py`).
- `StoreConflict` (a `StoreUnavailable`): a deadlock or serialization failure between
  transactions. A consumer retries at once (a settling transaction, ten times at most).
- `EntryRejected`: PostgreSQL refuses the data itself. A consumer isolates the entry and, in
  the end, dead-letters it.
"""

from __future__ import annotations


class LogaggError(Exception):
    """logagg failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigurationError(LogaggError):
    """A setting is missing or does not parse."""


class DatabaseEncodingError(ConfigurationError):
    """The database is not in the UTF8 encoding."""


class MigrationError(LogaggError):
    """A migration file breaks the rules, or left the schema in a state it must not."""


class InvalidCursor(LogaggError):
    """The `after` cursor is not one this server handed out."""


class ServerNotInstalled(LogaggError):
    """A server binary that the local stack needs is not installed."""


class Unavailable(LogaggError):
    """A server logagg depends on did not answer."""

    what = "server"  # the word logs and API error codes use: broker, store


class BrokerUnavailable(Unavailable):
    """Redis did not answer, or failed the command for a reason not the caller's."""

    what = "broker"


class GroupMissing(LogaggError):
    """The consumer group does not exist: it was deleted, or Redis lost it (NOGROUP)."""


class StoreUnavailable(Unavailable):
    """PostgreSQL did not answer, or failed for a reason that is not the data's fault (a lost
    connection, a server shutting down, a full disk, a missing table)."""

    what = "store"


class StoreConflict(StoreUnavailable):
    """PostgreSQL aborted the transaction to resolve a conflict with another one (deadlock or
    serialization failure): the same transaction can be tried again at once."""


class EntryRejected(LogaggError):
    """PostgreSQL refused the data itself (SQLSTATE class 22, 23, 54 or P0)."""

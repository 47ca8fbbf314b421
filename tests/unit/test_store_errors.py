"""The store's error policy (`shared/store_errors.py`): which PostgreSQL failures blame the data
(`EntryRejected`: isolated, in the end dead-lettered), which are conflicts (`StoreConflict`:
retried at once) and which are the system's (`StoreUnavailable`: retried with backoff)."""

from __future__ import annotations

import psycopg
import psycopg.errors
import psycopg_pool
import pytest

from shared.exceptions import EntryRejected, StoreConflict, StoreUnavailable
from shared.store_errors import classify, describe, translated

# Written out, not imported: the classes of SQLSTATE that blame the data (data exception,
# integrity constraint violation, program limit exceeded, PL/pgSQL raise), and the two states
# that are conflicts between transactions. Every other state is the system's.
DATA_CLASSES = {"22", "23", "54", "P0"}
CONFLICTS = {"40001", "40P01"}  # serialization_failure, deadlock_detected

# Every SQLSTATE psycopg has an exception class for.
KNOWN_STATES = sorted({kind.sqlstate for kind in vars(psycopg.errors).values()
                       if isinstance(kind, type) and issubclass(kind, psycopg.Error)
                       and kind.sqlstate})


def error_of(state: str, message: str = "refused") -> psycopg.Error:
    """The exception psycopg raises for `state`: its class carries the SQLSTATE."""
    error = psycopg.errors.lookup(state)(message)
    assert error.sqlstate == state
    return error


def expected(state: str) -> type[Exception]:
    if state in CONFLICTS:
        return StoreConflict
    return EntryRejected if state[:2] in DATA_CLASSES else StoreUnavailable


@pytest.mark.parametrize(("state", "kind"), [
    ("22000", EntryRejected),  # data_exception
    ("22P05", EntryRejected),  # untranslatable_character (a NUL in text)
    ("22008", EntryRejected),  # datetime_field_overflow
    ("22P02", EntryRejected),  # invalid_text_representation
    ("23505", EntryRejected),  # unique_violation
    ("23514", EntryRejected),  # check_violation
    ("54000", EntryRejected),  # program_limit_exceeded (psycopg: an OperationalError)
    ("54001", EntryRejected),  # statement_too_complex
    ("P0001", EntryRejected),  # raise_exception, a trigger refusing a row (a ProgrammingError)
    ("40001", StoreConflict),  # serialization_failure
    ("40P01", StoreConflict),  # deadlock_detected
    ("40000", StoreUnavailable),  # transaction_rollback: not one of the two conflicts
    ("40002", StoreUnavailable),  # transaction_integrity_constraint_violation
    ("40003", StoreUnavailable),  # statement_completion_unknown
    ("08006", StoreUnavailable),  # connection_failure
    ("57P01", StoreUnavailable),  # admin_shutdown
    ("53100", StoreUnavailable),  # disk_full
    ("42P01", StoreUnavailable),  # undefined_table
    ("25P02", StoreUnavailable),  # in_failed_sql_transaction
    ("55P03", StoreUnavailable),  # lock_not_available
    ("XX000", StoreUnavailable),  # internal_error
])
def test_a_sqlstate_is_classified_by_its_class(state: str, kind: type[Exception]) -> None:
    assert classify(error_of(state)) is kind


@pytest.mark.parametrize("state", KNOWN_STATES)
def test_every_sqlstate_psycopg_knows_follows_the_policy(state: str) -> None:
    # Every class psycopg knows, so a class added to or dropped from the policy shows.
    assert classify(error_of(state)) is expected(state)


def test_a_data_error_without_a_sqlstate_blames_the_data() -> None:
    # psycopg's own refusal, before the server sees anything: a NUL in a text parameter.
    error = psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    assert error.sqlstate is None
    assert classify(error) is EntryRejected


def test_an_integrity_error_without_a_sqlstate_blames_the_data() -> None:
    assert classify(psycopg.IntegrityError("duplicate")) is EntryRejected


@pytest.mark.parametrize("error", [
    psycopg.OperationalError("connection is lost"),
    psycopg.InterfaceError("the connection is closed"),
    psycopg.Error("something"),
    psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"),
    OSError("network is unreachable"),
], ids=["OperationalError", "InterfaceError", "Error", "PoolTimeout", "OSError"])
def test_a_failure_without_a_sqlstate_that_is_not_about_data_is_the_system_s(
        error: BaseException) -> None:
    assert classify(error) is StoreUnavailable


def test_describe_gives_the_sqlstate_the_class_and_the_message() -> None:
    assert describe(error_of("23514", "new row violates check constraint \"c\"\n")) == (
        '[23514] CheckViolation: new row violates check constraint "c"')
    assert describe(psycopg_pool.PoolTimeout(" no connection ")) == (
        "PoolTimeout: no connection")


@pytest.mark.parametrize(("error", "kind"), [
    (error_of("22P05"), EntryRejected),
    (error_of("40P01"), StoreConflict),
    (error_of("57P01"), StoreUnavailable),
    (psycopg_pool.PoolTimeout("no connection"), StoreUnavailable),
], ids=["data", "conflict", "shutdown", "pool timeout"])
def test_translated_raises_the_kind_with_the_description_and_keeps_the_cause(
        error: BaseException, kind: type[Exception]) -> None:
    with pytest.raises(kind) as raised, translated():
        raise error
    assert type(raised.value) is kind
    assert str(raised.value) == describe(error)
    assert raised.value.__cause__ is error


def test_translated_lets_other_exceptions_through() -> None:
    with pytest.raises(KeyError), translated():
        raise KeyError("not the store's")

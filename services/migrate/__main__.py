"""`logagg migrate`: apply the `sql/` migrations that are missing (see shared/migrations.py)."""

from __future__ import annotations

import argparse

import psycopg

from shared.exceptions import StoreUnavailable
from shared.migrations import migrate
from shared.settings import Settings


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        applied = migrate(settings.database_url)
    except psycopg.OperationalError as error:
        # A server that cannot be reached (or refuses us) is the operator's to fix: one line
        # saying so, as every other command does, not a traceback. A migration that fails
        # on the server is another matter and keeps its traceback.
        raise StoreUnavailable(f"cannot migrate: PostgreSQL did not answer: "
                               f"{str(error).strip()}") from error
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0

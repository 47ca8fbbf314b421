"""`logagg migrate`: apply the `sql/` migrations that are missing (see shared/migrations.py)."""

from __future__ import annotations

import argparse

from shared.migrations import migrate
from shared.settings import Settings


def run(settings: Settings, args: argparse.Namespace) -> int:
    applied = migrate(settings.database_url)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0

"""Where the files that are not Python live: the JSON Schema and the SQL.

logagg runs from its source tree (an editable install, or the tree copied into the image), so
these sit beside the packages.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "schema" / "event.schema.json"
OPENAPI_FILE = ROOT / "schema" / "openapi.json"
STATIC_DIR = ROOT / "services" / "ingest" / "static"
SQL_DIR = ROOT / "sql"
LUA_DIR = ROOT / "shared" / "lua"

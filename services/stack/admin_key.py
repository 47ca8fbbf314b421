"""The admin key of a local stack (`logagg up`, `logagg demo`, `logagg bench`).

With AUTH=on every request but the health checks needs a key, so the stack makes sure one
exists before its first request. The secret is kept in the data folder, in `admin-key` (mode
0600, its owner only), and made sure of in PostgreSQL at every start (`keys create` with a
given secret changes nothing when the key exists): the same data folder gives the same key
across restarts, as its data outlives them. A missing file or one that holds no key, or a key
revoked since (`logagg keys revoke`), gives a fresh key, written over the file. PostgreSQL
holds only the key's digest; this file is the one copy of the secret.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.keys.__main__ import create
from shared.keys import ADMIN, could_be_a_key, new_secret
from shared.settings import Settings

KEY_FILE = "admin-key"
KEY_NAME = "local stack"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StackKey:
    secret: str
    path: Path | None  # where it is kept; None: the caller gave it (the tests)
    note: str  # where it comes from, for the start-up banner


def ensure(settings: Settings, folder: Path, given: str | None = None) -> StackKey:
    """The stack's admin key, live in the database of `settings`: `given`, or the one kept in
    `folder`, or a fresh one kept there from now on."""
    if given is not None:
        _run(create(settings, KEY_NAME, scopes=[ADMIN], secret=given))
        return StackKey(given, None, "given by the caller")
    path = folder / KEY_FILE
    secret, note = _read(path), f"the same as before, from {path} (mode 0600)"
    if secret is None:
        secret, note = new_secret(), f"new, kept in {path} (mode 0600) for the next starts"
        _write(path, secret)
    try:
        _run(create(settings, KEY_NAME, scopes=[ADMIN], secret=secret))
    except ValueError:  # it was revoked: the only refusal left for a well-formed secret
        secret = new_secret()
        note = f"new, the one in {path} had been revoked; kept there for the next starts"
        _write(path, secret)
        _run(create(settings, KEY_NAME, scopes=[ADMIN], secret=secret))
    return StackKey(secret, path, note)


def _read(path: Path) -> str | None:
    """The secret in `path`, or None if there is none that could be a key."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        return None
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)  # copied or restored with looser rights: its owner's only again
    return secret if could_be_a_key(secret) else None


def _write(path: Path, secret: str) -> None:
    """Replace `path` with `secret`, readable by its owner only from the first byte."""
    partial = path.with_name(path.name + ".new")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    os.replace(partial, path)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end from sync code, inside a running event loop or not (the
    bench starts its stack from one)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()

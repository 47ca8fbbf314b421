"""Acceptance fixtures: the whole stack as real processes (`LocalStack`, the code behind
`logagg up`), over its own Redis and PostgreSQL in a folder of its own, for each test.

Helpers the tests share are in `helpers.py`. Every test under tests/acceptance/ carries the
`acceptance` marker (see `pytest_collection_modifyitems`), so `pytest -m "not acceptance"`
leaves them all out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack.local import LocalStack
from tests.acceptance.helpers import local_stack, publishers

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this folder (this hook sees the whole session's items:
    only those under tests/acceptance/ are marked)."""
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.acceptance)


@pytest.fixture
def stack(scratch: Path) -> Iterator[LocalStack]:
    with local_stack(scratch) as running:
        yield running


@pytest.fixture(autouse=True)
def _reappublishers() -> Iterator[None]:
    yield
    while publishers:
        process = publishers.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()  # closes its pipes



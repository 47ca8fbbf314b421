"""Helpers of the acceptance tests: a `LocalStack` of their own, `logagg publish` as a child
process, and polls that prove a moment (a consumer holds entries, events are arriving) before a
test acts on it.

Stacks run with AUTH=on and hold the tests' ADMIN_KEY: a request of a test goes through
`stack.request` (which sends it), and a child publisher gets it as API_KEY."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from redis import Redis
from redis.exceptions import ResponseError

from services.stack.local import LocalStack
from services.stack.servers import free_port
from shared.constants import received_key
from shared.settings import Settings
from tests.helpers import ADMIN_KEY


def local_stack(scratch: Path, settings: dict[str, Any] | None = None,
                **options: Any) -> LocalStack:
    """A stack (not started) in a folder of its own; `settings` override the defaults.

    Redis runs with appendfsync `always`, as deployed, unless `options` say otherwise;
    PostgreSQL without fsync (`durable=False`): a killed PostgreSQL process loses nothing
    either way, only a crash of the machine would tell the difference."""
    defaults = {"ingest_port": free_port(), "metrics_port": 0, "claim_idle_ms": 1000,
                "batch_size": 200}
    config = Settings.from_env({}, **{**defaults, **(settings or {})})
    folder = Path(tempfile.mkdtemp(dir=scratch))
    return LocalStack(config, folder, redis_port=free_port(), postgres_port=free_port(),
                      durable=False, **{"redis_appendfsync": "always", "api_key": ADMIN_KEY,
                                        **options})


def publish(stack: LocalStack, *args: str) -> dict[str, Any]:
    """Run `logagg publish` against the stack; return its JSON report."""
    command = [sys.executable, "-m", "services.cli", "publish", "--url", stack.base_url,
               "--json", *args]
    result = subprocess.run(command, capture_output=True, check=True, timeout=300,
                            env=publisher_env(stack))
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


publishers: list[subprocess.Popen[bytes]] = []


def start_publish(stack: LocalStack, *args: str, log: Path | None = None,
                  **env: str) -> subprocess.Popen[bytes]:
    """`logagg publish` in the background; reaped after the test even if the test failed.
    `log`: a file for its stderr (its log lines) instead of a pipe; `env`: extra variables."""
    command = [sys.executable, "-m", "services.cli", "publish", "--url", stack.base_url,
               "--json", *args]

    def popen(stderr: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                env={**publisher_env(stack), **env})

    if log is None:
        process = popen(subprocess.PIPE)
    else:
        with log.open("ab") as file:
            process = popen(file)
    publishers.append(process)
    return process


def publisher_env(stack: LocalStack) -> dict[str, str]:
    """The environment of a `logagg publish` child: ours, and the stack's key as API_KEY."""
    return {**os.environ, "API_KEY": stack.api_key}


def held_publish_head(stack: LocalStack, length: int) -> bytes:
    """The head of a `POST /publish` of `length` bytes sent by hand, with the stack's key and
    `Expect: 100-continue`: ingest's `100 Continue` then proves the request is inside it, held
    there until the body comes."""
    headers = {"Host": f"127.0.0.1:{stack.settings.ingest_port}",
               "Content-Type": "application/json", "Content-Length": str(length),
               "Expect": "100-continue", **stack.headers()}
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    return ("POST /publish HTTP/1.1\r\n" + "".join(lines) + "\r\n").encode()


def actions_in(log: Path) -> list[str]:
    """The `action` of every JSON line of a log file."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [orjson.loads(line).get("action", "") for line in lines if line.startswith("{")]


def logged_actions(stack: LocalStack, process: str) -> list[str]:
    """The `action` of every line a process logged (JSON lines: its stderr is a file)."""
    return actions_in(stack.data_dir / "logs" / f"{process}.log")


def held_by(redis: Redis, stack: LocalStack, process: str) -> int:
    """Entries delivered to that consumer process and not acked yet."""
    name = stack.consumer_names[process]
    try:
        return len(redis.xpending_range(stack.settings.stream_key, stack.settings.consumer_group,
                                        min="-", max="+", count=10_000, consumername=name))
    except ResponseError as error:
        if "NOGROUP" in str(error):  # no consumer has created the group yet: none holds any
            return 0
        raise


def received(redis: Redis, stack: LocalStack) -> int:
    """The `received` counter, read straight from Redis (what /stats reports)."""
    return int(redis.get(received_key(stack.settings.stream_key)) or 0)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0,
             every_s: float = 0.002) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(every_s)


def wait_for_received(redis: Redis, stack: LocalStack, at_least: int, what: str) -> int:
    """Poll the `received` counter until it reaches `at_least`; return the value seen."""
    seen = 0

    def reached() -> bool:
        nonlocal seen
        seen = received(redis, stack)
        return seen >= at_least

    wait_for(reached, f"{at_least} events received {what}")
    return seen


def freeze(process: subprocess.Popen[bytes]) -> None:
    """SIGSTOP the process and wait until the kernel reports it stopped: from then on it can
    neither ack nor settle anything, so what it holds stays what it holds."""
    process.send_signal(signal.SIGSTOP)
    wait_for(lambda: _state(process.pid) in {"T", "t"}, f"pid {process.pid} stopped",
             timeout_s=10)


def thaw(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGCONT)


def _state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) STATE ...": the comm may hold spaces, so split after ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def signal_while_holding(redis: Redis, stack: LocalStack, process: str, signum: int,
                         timeout_s: float = 60.0) -> int:
    """Send `signum` to that consumer at a moment it provably holds entries; return how many.

    Polls until the consumer holds entries, freezes it (SIGSTOP) and counts them again: a
    frozen process cannot ack, so if it still holds some, the signal goes to it frozen and it
    is let go (SIGCONT) only then, so the signal lands while it holds exactly that many. If it
    acked in between, it is let go and the poll goes on."""
    child = stack.processes[process]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert child.poll() is None, f"{process} exited with {child.returncode}"
        if held_by(redis, stack, process) == 0:
            time.sleep(0.001)
            continue
        freeze(child)
        held = held_by(redis, stack, process)
        if held > 0:
            child.send_signal(signum)
            thaw(child)
            return held
        thaw(child)
    raise AssertionError(f"{process} held no entries at any moment within {timeout_s:.0f}s")


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (consumer i serves METRICS_PORT + i)."""
    for _ in range(100):
        first = free_port()
        probes = []
        try:
            for port in range(first, first + count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return first
    raise RuntimeError(f"no {count} consecutive free ports")

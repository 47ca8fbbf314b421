"""The Compose deployment (SPEC §6) for real: `docker-compose.yml` and `Dockerfile` unchanged,
on a Docker engine found or started by `engine.py`, one deployment for the whole module.

Every test here carries the `acceptance` marker, like the other real-process tests. The session
summary prints how long each phase took (daemon, images, up, demo, kill, restart, ...).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from _pytest.terminal import TerminalReporter

from services.stack.servers import free_port
from tests.acceptance.helpers import wait_for
from tests.compose import engine as docker
from tests.deploy.test_deployment_files import compose_env, tool

HERE = Path(__file__).resolve().parent
PHASES = docker.Phases()
# Short, so that a killed consumer's entries are claimed within seconds (default 30 s).
CLAIM_IDLE_MS = 3000
SYSTEM_CERTIFICATES = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, and Ubuntu's


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.acceptance)


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if PHASES.seconds:
        terminalreporter.write_sep("-", "Compose test phases")
        terminalreporter.write_line(PHASES.summary())


@dataclass
class Deployment:
    """One Compose project on `engine`, driven as a user would: `docker compose ...`, the
    published port, `docker kill`."""

    engine: docker.Engine
    project: str
    compose_command: list[str]
    env: dict[str, str]
    port: int

    def compose(self, *args: str, timeout: float = 300.0,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker.run([*self.compose_command, *args], env=self.env, timeout=timeout,
                          check=check)

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}-{service}-{index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as answer:
            stats: dict[str, Any] = json.load(answer)
            return stats

    def stats_or_none(self) -> dict[str, Any] | None:
        """/stats, or None while ingest does not answer (starting, or its database is)."""
        try:
            return self.stats()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def settled(self, at_least: int, timeout_s: float = 120.0) -> dict[str, Any]:
        """Wait until at least `at_least` events arrived and nothing is pending; /stats then.
        (At least: a publisher's retry of a request whose answer it lost adds a copy.)"""
        seen: dict[str, Any] = {}

        def done() -> bool:
            nonlocal seen
            seen = self.stats_or_none() or {}
            return seen.get("received", -1) >= at_least and seen.get("pending") == 0

        try:
            wait_for(done, f"{at_least} events received and settled", timeout_s, every_s=0.5)
        except AssertionError as error:
            raise AssertionError(f"{error}; last /stats: {seen}") from None
        return seen

    def group_consumers(self) -> dict[str, int]:
        """Each consumer of the group and how many entries it holds (XINFO CONSUMERS, asked
        of the deployment's Redis, which the host cannot reach)."""
        answer = self.engine("exec", self.container("redis"), "redis-cli", "--json", "XINFO",
                             "CONSUMERS", "events", "aggregator").stdout
        return {consumer["name"]: consumer["pending"] for consumer in json.loads(answer)}

    def consumer_name(self, container: str) -> str:
        """The name a consumer container has in the group: its host name, a dash, its pid."""
        hostname = self.engine("inspect", "--format", "{{.Config.Hostname}}",
                               container).stdout.strip()
        [name] = [name for name in self.group_consumers() if name.startswith(f"{hostname}-")]
        return name

    def inside(self, code: str) -> str:
        """Run Python in the ingest container, on the deployment's internal network."""
        return self.engine("exec", self.container("ingest"), "python", "-c", code).stdout

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        """A PromQL instant query to the deployment's Prometheus; its result vector."""
        url = f"http://prometheus:9090/api/v1/query?query={quote(query)}"
        answer = json.loads(self.inside(
            f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read()"
            f".decode())"))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def publish(self, *args: str) -> subprocess.Popen[bytes]:
        """`logagg publish` from the host, through the published port."""
        return subprocess.Popen([sys.executable, "-m", "services.cli", "publish", "--url",
                                 self.url, "--json", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def prepare(cleanup: ExitStack) -> Deployment:
    """The engine, the images (stand-ins or pulled, and logagg's from the Dockerfile), and the
    project's settings; what it starts is undone by `cleanup`."""
    engine = docker.reachable_engine()
    if engine is None:
        engine = cleanup.enter_context(docker.private_engine(PHASES))
    # On the machine's own engine, a project and image tag of the test's own, so that a
    # user's `logagg` deployment and image are left alone.
    project = "logagg" if engine.private else f"logagg-test-{os.getpid()}"
    tag = "local" if engine.private else f"test-{os.getpid()}"
    env_file = Path(tempfile.mkstemp(prefix="logagg-compose-", suffix=".env")[1])
    cleanup.callback(env_file.unlink)
    env = {**compose_env(), "POSTGRES_PASSWORD": secrets.token_hex(16), "LOGAGG_TAG": tag,
           "INGEST_PUBLISHED_PORT": str(free_port()), "CLAIM_IDLE_MS": str(CLAIM_IDLE_MS)}
    if engine.env.get("DOCKER_HOST"):
        env["DOCKER_HOST"] = engine.env["DOCKER_HOST"]
    # pip in the build trusts what this machine trusts: its PIP_CERT, else the system's bundle
    # (where a TLS-inspecting proxy's authority is installed; public authorities otherwise).
    authority = os.environ.get("PIP_CERT") or SYSTEM_CERTIFICATES
    if Path(authority).is_file():
        env["PIP_CERT"] = authority
    # An empty env file: a developer's own .env must not change what is tested.
    compose = [tool("docker-compose"), "--project-name", project, "--file",
               str(docker.ROOT / "docker-compose.yml"), "--env-file", str(env_file)]
    prepared = Deployment(engine, project, compose, env, int(env["INGEST_PUBLISHED_PORT"]))
    if engine.private:
        model = json.loads(prepared.compose("--profile", "observability", "config",
                                            "--format", "json").stdout)
        docker.build_standins(engine, docker.official_images(model), PHASES)
    else:
        prepared.compose("--profile", "observability", "pull", "--ignore-buildable")
    cleanup.callback(engine, "image", "rm", "--force", f"logagg:{tag}", check=False)
    docker.build_logagg(engine, compose, env, PHASES)
    return prepared


class Preparation:
    """`prepare` in a thread from the end of collection, so that the images (minutes, mostly
    downloads; the private daemon and debootstrap run at nice 19) are built while the tests
    before this module run. Undone at the end of the session."""

    def __init__(self) -> None:
        self.cleanup = ExitStack()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compose")
        self.future: Future[Deployment] | None = None

    def start(self) -> Future[Deployment]:
        if self.future is None:
            self.future = self.pool.submit(prepare, self.cleanup)
        return self.future

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.cleanup.close()


PREPARATION = Preparation()


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(HERE in Path(item.path).resolve().parents for item in session.items) and not (
            session.config.option.collectonly):
        PREPARATION.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    PREPARATION.close()


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    prepared = PREPARATION.start().result()
    try:
        yield prepared
    finally:
        prepared.compose("--profile", "observability", "down", "--volumes", "--remove-orphans",
                         "--timeout", "10", check=False)

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
from dataclasses import dataclass, field
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
# The secrets a user writes in `.env` (README, With Docker Compose), made afresh for each run.
SECRETS = ("POSTGRES_PASSWORD", "PUBLISH_KEY", "METRICS_KEY", "ADMIN_KEY")
# Every profile the test starts something of: their images are built or pulled, and removed.
PROFILES = ("--profile", "observability", "--profile", "shippers")
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
    # What the project's `.env` holds (a temporary file, never in the repository): SECRETS.
    # Out of the repr, which pytest prints when a test fails.
    secrets: dict[str, str] = field(repr=False)

    def compose(self, *args: str, timeout: float = 300.0,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker.run([*self.compose_command, *args], env=self.env, timeout=timeout,
                          check=check)

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}-{service}-{index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, key: str | None = None) -> tuple[int, bytes]:
        """GET `path` from ingest through the published port, with `key` as Bearer (the
        secret of `.env` it names, else `key` itself) or none: its status and body."""
        headers = {"Authorization": f"Bearer {self.secrets.get(key, key)}"} if key else {}
        request = urllib.request.Request(f"{self.url}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stats(self) -> dict[str, Any]:
        """/stats with the operator's key, ADMIN_KEY."""
        status, body = self.get("/stats", "ADMIN_KEY")
        assert status == 200, (status, body[:500])
        stats: dict[str, Any] = json.loads(body)
        return stats

    def stats_or_none(self) -> dict[str, Any] | None:
        """/stats, or None while ingest does not answer it (starting, or its database is: 503,
        `keys_unavailable` included)."""
        try:
            status, body = self.get("/stats", "ADMIN_KEY")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        if status == 503:
            return None
        assert status == 200, (status, body[:500])
        stats: dict[str, Any] = json.loads(body)
        return stats

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

    def prometheus_targets(self) -> list[dict[str, Any]]:
        """The active targets of the deployment's Prometheus, with their health."""
        answer = json.loads(self.inside(
            "import urllib.request; print(urllib.request.urlopen("
            "'http://prometheus:9090/api/v1/targets?state=active', timeout=5).read().decode())"))
        assert answer["status"] == "success", answer
        targets: list[dict[str, Any]] = answer["data"]["activeTargets"]
        return targets

    def publish(self, *args: str) -> subprocess.Popen[bytes]:
        """`logagg publish` from the host, through the published port, with the operator's
        key as API_KEY (README)."""
        return subprocess.Popen([sys.executable, "-m", "services.cli", "publish", "--url",
                                 self.url, "--json", *args],
                                env={**os.environ, "API_KEY": self.secrets["ADMIN_KEY"]},
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
    # The secrets, as a user writes them (`openssl rand -hex 32`), in a `.env` of the test's
    # own: a temporary file (mode 0600), outside the repository, removed at the end.
    made = {name: secrets.token_hex(32) for name in SECRETS}
    env_file = Path(tempfile.mkstemp(prefix="logagg-compose-", suffix=".env")[1])
    cleanup.callback(env_file.unlink)
    assert docker.ROOT not in env_file.resolve().parents
    env_file.write_text("".join(f"{name}={value}\n" for name, value in made.items()))
    env = {**compose_env(), "LOGAGG_TAG": tag,
           "INGEST_PUBLISHED_PORT": str(free_port()), "CLAIM_IDLE_MS": str(CLAIM_IDLE_MS)}
    if engine.env.get("DOCKER_HOST"):
        env["DOCKER_HOST"] = engine.env["DOCKER_HOST"]
    # pip in the build trusts what this machine trusts: its PIP_CERT, else the system's bundle
    # (where a TLS-inspecting proxy's authority is installed; public authorities otherwise).
    authority = os.environ.get("PIP_CERT") or SYSTEM_CERTIFICATES
    if Path(authority).is_file():
        env["PIP_CERT"] = authority
    # The test's env file, not the repository's `.env`: a developer's own must not change what
    # is tested (compose_env() drops the variables it could set from this environment too).
    compose = [tool("docker-compose"), "--project-name", project, "--file",
               str(docker.ROOT / "docker-compose.yml"), "--env-file", str(env_file)]
    prepared = Deployment(engine, project, compose, env, int(env["INGEST_PUBLISHED_PORT"]),
                          made)
    if engine.private:
        model = json.loads(prepared.compose(*PROFILES, "config", "--format", "json").stdout)
        docker.build_standins(engine, docker.official_images(model), PHASES)
    else:
        prepared.compose(*PROFILES, "pull", "--ignore-buildable")
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
        prepared.compose(*PROFILES, "down", "--volumes", "--remove-orphans",
                         "--timeout", "10", check=False)

"""A Docker engine for the Compose test, and the images it needs.

The engine is the machine's own when one answers (`docker info`): the official images are then
pulled as usual. Otherwise, as root with Debian's `docker.io` and `debootstrap` installed, this
module starts a private `dockerd` over folders of its own and builds stand-ins for the official
images, which no registry serves here (`standins/`, and README "With Docker Compose"):
`debian:bookworm-slim` from `debootstrap --variant=minbase bookworm` through `docker import`, and
on it the python, redis, postgres, prometheus and syslog-ng images from Debian's packages, under the
official tags, so that the real `docker-compose.yml` and `Dockerfile` run unchanged. Everything
it starts it stops and removes: containers, volumes, images, the daemon and its folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
INSTALL = ("a Docker engine: run it (`docker info` must answer), or as root on Debian: "
           "apt-get install -y docker.io debootstrap (the test starts its own dockerd)")
DAEMON_TIMEOUT_S = 60.0
BUILD_TIMEOUT_S = 600.0
# Debian's own mirror, which containers and debootstrap reach even where no image registry does.
DEBIAN_MIRROR = "http://deb.debian.org/debian"


@dataclass
class Phases:
    """How long each phase of the Compose test took, in order, for the session's summary."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - start

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.seconds.items())


def run(command: list[str], *, env: dict[str, str] | None = None, timeout: float = 120.0,
        check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run `command`; with `check`, fail the test with its output unless it exits 0."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"`{' '.join(command)}` exited {result.returncode}\n"
                             f"--- stdout\n{result.stdout[-4000:]}\n"
                             f"--- stderr\n{result.stderr[-4000:]}")
    return result


@dataclass
class Engine:
    """A Docker engine and the `docker` client to drive it with."""

    docker: str
    env: dict[str, str]
    private: bool

    def __call__(self, *args: str, timeout: float = 120.0,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.docker, *args], env=self.env, timeout=timeout, check=check)

    def builds_with_buildkit_alone(self) -> bool:
        """True when this client builds with BuildKit without the buildx plugin (clients before
        Docker 23, as Debian bookworm's docker.io 20.10): Compose, which needs buildx for
        BuildKit, cannot build our Dockerfile here, so the test builds it with this client."""
        if self("buildx", "version", check=False).returncode == 0:
            return False
        version = self("version", "--format", "{{.Client.Version}}").stdout.strip()
        return int(version.split(".")[0]) < 23


def reachable_engine() -> Engine | None:
    """The machine's own engine, if `docker` is installed and an engine answers."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    engine = Engine(docker, dict(os.environ), private=False)
    return engine if engine("info", check=False, timeout=30).returncode == 0 else None


@contextmanager
def private_engine(phases: Phases) -> Iterator[Engine]:
    """A `dockerd` of our own, as root, over a temporary folder; stopped and removed after."""
    if os.geteuid() != 0 or not all(map(shutil.which, ("dockerd", "debootstrap"))):
        pytest.fail(f"No Docker engine answers, and none can be started here. Install {INSTALL}",
                    pytrace=False)
    folder = Path(tempfile.mkdtemp(prefix="logagg-docker-", dir="/var/tmp"))
    socket_path = folder / "docker.sock"
    # At nice 19, with everything it runs (builds, containers): the images are built while
    # other tests run (conftest.py), and those keep the processor first.
    command = [
        "nice", "-n", "19", "dockerd",
        "--data-root", str(folder / "data"), "--exec-root", str(folder / "exec"),
        "--host", f"unix://{socket_path}", "--pidfile", str(folder / "docker.pid"),
    ]
    # Image builds run on the default bridge, docker0: removed after, unless it was there.
    had_docker0 = Path("/sys/class/net/docker0").exists()
    # `init: true` in docker-compose.yml needs docker-init; Debian ships it as tini-static.
    if Path("/usr/bin/tini-static").exists():
        command += ["--init-path", "/usr/bin/tini-static"]
    with (folder / "dockerd.log").open("wb") as log:
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True)
    engine = Engine(_client_with_builtin_buildkit(),
                    {**os.environ, "DOCKER_HOST": f"unix://{socket_path}"}, private=True)
    try:
        with phases.timed("daemon"):
            deadline = time.monotonic() + DAEMON_TIMEOUT_S
            while engine("version", check=False, timeout=10).returncode != 0:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("dockerd did not start:\n"
                                         + (folder / "dockerd.log").read_text()[-4000:])
                time.sleep(0.1)
        yield engine
    finally:
        _stop_daemon(daemon, folder)
        if not had_docker0:
            subprocess.run(["ip", "link", "delete", "docker0"], check=False, capture_output=True)


def _client_with_builtin_buildkit() -> str:
    """Debian's docker.io client (20.10, next to its dockerd): it builds with BuildKit, build
    secrets included, without the buildx plugin, which no Debian bookworm package ships."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(f"no docker client: {INSTALL}", pytrace=False)


def _stop_daemon(daemon: subprocess.Popen[bytes], folder: Path) -> None:
    """Stop dockerd (it stops its containers and its containerd), then remove its folders."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    # A daemon that died hard leaves its mounts (overlays, network namespaces) behind.
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(folder))]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


# --- images ------------------------------------------------------------------------------

def official_images(model: dict[str, Any]) -> dict[str, str]:
    """The official image each stand-in replaces, from the files the test runs: the
    Dockerfile's base, and the image of the redis, postgres, prometheus and syslog-ng services
    in the model Compose resolved (`config --format json`, observability and shippers profiles
    on)."""
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None
    images = {"python": base.group(1)}
    for service in ("redis", "postgres", "prometheus", "syslog-ng"):
        images[service] = model["services"][service]["image"]
    return images


def build_standins(engine: Engine, images: dict[str, str], phases: Phases) -> None:
    """`debian:bookworm-slim` from debootstrap, then the four stand-ins on it, at once."""
    with phases.timed("images: debian base (debootstrap)"), \
            tempfile.TemporaryDirectory(dir="/var/tmp") as rootfs:
        run(["nice", "-n", "19", "debootstrap", "--variant=minbase", "bookworm", rootfs,
             DEBIAN_MIRROR], timeout=BUILD_TIMEOUT_S)
        with subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                [engine.docker, "import", "--change", 'CMD ["bash"]', "-",
                 "debian:bookworm-slim"],
                stdin=tar.stdout, env=engine.env, capture_output=True, text=True, timeout=300,
                check=False)
        assert (tar.returncode, imported.returncode) == (0, 0), imported.stderr
    with phases.timed("images: stand-ins"), ThreadPoolExecutor() as pool:
        builds = [pool.submit(_build, engine, STANDINS / name, tag)
                  for name, tag in images.items()]
        for build in builds:
            build.result()


def build_logagg(engine: Engine, compose: list[str], env: dict[str, str],
                 phases: Phases) -> None:
    """The logagg image from the real Dockerfile, with pip's certificate authority as the
    build secret `pip_ca` when this machine has one (PIP_CERT)."""
    with phases.timed("images: logagg"):
        if not engine.builds_with_buildkit_alone():
            run([*compose, "build"], env=env, timeout=BUILD_TIMEOUT_S)
            return
        secret = ["--secret", f"id=pip_ca,src={env['PIP_CERT']}"] if env.get("PIP_CERT") else []
        tag = f"logagg:{env['LOGAGG_TAG']}"
        _build(engine, ROOT, tag, *secret)


def _build(engine: Engine, context: Path, tag: str, *options: str) -> None:
    run([engine.docker, "build", "--quiet", "--tag", tag, *options, str(context)],
        env={**engine.env, "DOCKER_BUILDKIT": "1"}, timeout=BUILD_TIMEOUT_S)


def container_state(engine: Engine, name: str) -> dict[str, object]:
    state: dict[str, object] = json.loads(
        engine("inspect", "--format", "{{json .State}}", name).stdout)
    return state

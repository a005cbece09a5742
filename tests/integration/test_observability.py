"""The Grafana dashboard and the Prometheus rules against a live server, through a real Prometheus.

Debian's Prometheus scrapes the shared puppet server every second and evaluates
``docker/prometheus/headcast-rules.yml`` while a call speaks, is interrupted and ends. Then
every query of every panel of ``docker/grafana/dashboards/headcast.json``, every recording
rule and every alert expression goes through Prometheus's HTTP API: each must parse and
evaluate, each panel query and recorded signal must return series, and every rule must be
healthy in ``/api/v1/rules``. An alert compares one signal with a number (the rules file's
convention), so the signal on the left is queried too and must return series.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml

from headcast_client import ArrayAudioTrack, HeadcastClient
from loadtests.speech import speech_like
from tests.conftest import REPO_ROOT
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer
from tests.integration.prometheus import Prometheus, run_prometheus

RULES = REPO_ROOT / "docker/prometheus/headcast-rules.yml"
DASHBOARD = REPO_ROOT / "docker/grafana/dashboards/headcast.json"
RATE_INTERVAL = "1m"
"""What Grafana's ``$__rate_interval`` stands for here (4 scrape intervals or more)."""

MIC_RATE_HZ = 48_000
SPEAK_S = 4.0
AFTER_INTERRUPT_S = 2.0
SCRAPED_TIMEOUT_S = 30.0
POLL_S = 0.5
ALERT_SHAPE = re.compile(r"^(?P<signal>.+?)\s*(?:>|<|==|!=|>=|<=)\s*-?[0-9.]+\s*$", re.DOTALL)
"""``<signal> <op> <number>``: the shape every alert in the rules file has."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, headcast_server: RunningServer
) -> Iterator[Prometheus]:
    with run_prometheus(
        tmp_path_factory.mktemp("prometheus"), headcast_server.port, RULES
    ) as server:
        yield server


async def _call_with_an_interrupt(url: str) -> None:
    async with HeadcastClient(url, host_candidates=LOOPBACK_ONLY) as client:
        session = await client.create_session()
        mic = ArrayAudioTrack(
            speech_like(SPEAK_S + AFTER_INTERRUPT_S + 2.0, MIC_RATE_HZ), MIC_RATE_HZ
        )
        connection = await client.connect_webrtc(session, mic)
        try:
            await asyncio.sleep(SPEAK_S)
            await client.interrupt(session)
            await asyncio.sleep(AFTER_INTERRUPT_S)
        finally:
            mic.stop()
            await client.delete_session(session)
            await connection.close()


def _wait_for(prometheus: Prometheus, expr: str) -> None:
    deadline = time.monotonic() + SCRAPED_TIMEOUT_S
    while not prometheus.query(expr):
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus never saw {expr!r}:\n{prometheus.log_tail()}")
        time.sleep(POLL_S)


def _evaluated_rules(prometheus: Prometheus) -> list[dict[str, Any]]:
    """Every rule as ``/api/v1/rules`` reports it, once each has been evaluated after the call."""
    deadline = time.monotonic() + SCRAPED_TIMEOUT_S
    started = time.time()
    while True:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        fresh = [r for r in rules if _unix(r["lastEvaluation"]) > started]
        if len(fresh) == len(rules):
            return rules
        if time.monotonic() > deadline:
            pytest.fail(
                f"{len(rules) - len(fresh)} rules were not evaluated within {SCRAPED_TIMEOUT_S} s"
            )
        time.sleep(POLL_S)


def _unix(rfc3339: str) -> float:
    """``2024-05-01T12:00:00.123456789Z`` (Prometheus's nanoseconds) as unix seconds."""
    whole, _, fraction = rfc3339.removesuffix("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")


async def test_every_panel_and_rule_evaluates_against_a_live_server(
    prometheus: Prometheus, headcast_server: RunningServer
) -> None:
    await _call_with_an_interrupt(headcast_server.url)
    _wait_for(prometheus, 'up{job="headcast"} == 1')
    _wait_for(prometheus, "headcast_interrupt_seconds_count > 0")
    _wait_for(prometheus, "headcast_sessions_active == 0")

    rules = _evaluated_rules(prometheus)
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    assert len(rules) == len(_rules())

    empty: list[str] = []
    for title, expr in _panel_queries():
        if not prometheus.query(expr):
            empty.append(f"panel {title!r}: {expr}")
    for rule in _rules():
        expr = rule["expr"]
        series = prometheus.query(expr)  # parses and evaluates, or QueryFailed
        if "record" in rule:
            if not series or not prometheus.query(rule["record"]):
                empty.append(f"recording rule {rule['record']}: {expr}")
            continue
        shape = ALERT_SHAPE.match(expr.strip())
        assert shape is not None, f"alert {rule['alert']} is not '<signal> <op> <number>': {expr}"
        if not prometheus.query(shape["signal"]):
            empty.append(f"alert {rule['alert']} signal: {shape['signal']}")
    assert not empty, "queries that returned no series:\n" + "\n".join(empty)


def test_dashboard_covers_every_exported_headcast_metric(headcast_server: RunningServer) -> None:
    """A metric the server exports and no panel shows is a metric nobody watches."""
    exported = {
        re.sub(r"_(bucket|count|sum|total|created)$", "", name.split("{")[0])
        for name in headcast_server.metrics()
        if name.startswith("headcast_")
    }
    shown = " ".join(expr for _, expr in _panel_queries())
    missing = sorted(name for name in exported if name not in shown)
    assert not missing, f"no dashboard panel shows {missing}"

"""Capacity: ``floor(1 / RTF)`` of the engine by default, the configured limit when set.

The rule on its own (including RTF >= 1 -> 1 and an unknown RTF -> the fallback), then the
app on a scripted engine that reports a warm-up RTF: the derived limit admits that many
sessions, the next gets 429 with Retry-After, and refusals are counted by reason
(``capacity``, ``not_ready``) in ``headcast_sessions_rejected_total``.
"""

from __future__ import annotations

import math
import threading
import time

import pytest
from fastapi.testclient import TestClient

from headcast.server.app import create_app
from headcast.server.capacity import CapacityPolicy, capacity_from_rtf, measured_rtf
from headcast.server.settings import Settings
from tests.conftest import FakeEngine

FALLBACK = 3
POLL_S = 0.02
POLL_LIMIT_S = 10.0


class MeasuredEngine(FakeEngine):
    """``FakeEngine`` that reports a warm-up real-time factor, as the diffusion engines do."""

    def __init__(self, warmup_rtf: float | None, **options: object) -> None:
        super().__init__(96, 64, **options)  # type: ignore[arg-type]
        self.warmup_rtf: float | None = None
        self._measured = warmup_rtf

    def load(self) -> None:
        super().load()
        self.warmup_rtf = self._measured  # set by load(), like DiffusionEngine


@pytest.mark.parametrize(
    ("rtf", "expected"),
    [
        (0.1, 10),
        (0.3, 3),
        (0.25, 4),
        (0.5, 2),
        (0.51, 1),
        (0.99, 1),
        (1.0, 1),  # exactly real time: one session
        (1.7, 1),  # slower than real time: still one session, never zero
        (40.0, 1),
        (None, FALLBACK),
        (0.0, FALLBACK),
        (-0.5, FALLBACK),
        (math.nan, FALLBACK),
        (math.inf, FALLBACK),
    ],
)
def test_capacity_from_rtf(rtf: float | None, expected: int) -> None:
    assert capacity_from_rtf(rtf, FALLBACK) == expected


def test_the_fallback_must_admit_a_session() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        capacity_from_rtf(None, 0)


def test_the_policy_prefers_the_configured_limit_then_the_measured_rtf() -> None:
    measured = MeasuredEngine(0.3)
    measured.load()
    unmeasured = FakeEngine(96, 64)  # warmup_rtf None, like the puppet
    assert measured_rtf(measured) == 0.3 and measured_rtf(unmeasured) is None

    assert CapacityPolicy(max_sessions=7, fallback=FALLBACK).resolve(measured).sessions == 7
    derived = CapacityPolicy(max_sessions=None, fallback=FALLBACK).resolve(measured)
    assert derived.sessions == derived.slots == 3 and "0.300" in derived.source
    fallback = CapacityPolicy(max_sessions=None, fallback=FALLBACK).resolve(unmeasured)
    assert fallback.sessions == fallback.slots == FALLBACK and "fallback" in fallback.source


def test_generation_slots_and_sessions_part_in_loop_mode_only() -> None:
    measured = MeasuredEngine(0.3)
    measured.load()
    # generate: a configured max_sessions is the slots too (each session generates always)
    generate = CapacityPolicy(max_sessions=7, fallback=FALLBACK).resolve(measured)
    assert (generate.slots, generate.sessions) == (7, 7)
    # loop: the slots stay what the engine measured, the sessions may be more
    loop = CapacityPolicy(max_sessions=7, fallback=FALLBACK, loop=True).resolve(measured)
    assert (loop.slots, loop.sessions) == (3, 7) and "0.300" in loop.source
    configured = CapacityPolicy(
        max_sessions=7, fallback=FALLBACK, generation_slots=1, loop=True
    ).resolve(measured)
    assert (configured.slots, configured.sessions) == (1, 7)
    alone = CapacityPolicy(max_sessions=None, fallback=FALLBACK, generation_slots=2)
    assert (alone.resolve(measured).slots, alone.resolve(measured).sessions) == (2, 2)
    with pytest.raises(ValueError, match="exceeds generation_slots"):
        CapacityPolicy(max_sessions=3, fallback=FALLBACK, generation_slots=2)


def _metrics(client: TestClient) -> dict[str, float]:
    series = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def _rejected(client: TestClient, reason: str) -> float:
    return _metrics(client)[f'headcast_sessions_rejected_total{{reason="{reason}"}}']


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + POLL_LIMIT_S
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(POLL_S)
    raise AssertionError("the app never became ready")


def test_a_device_too_slow_for_two_sessions_admits_one() -> None:
    gate = threading.Event()
    settings = Settings(height=96, width=64, media_threads=2)  # max_sessions unset
    assert settings.max_sessions is None
    app = create_app(settings, engine=MeasuredEngine(0.6, load_gate=gate))
    with TestClient(app) as client:
        assert _metrics(client)["headcast_sessions_capacity"] == 0  # unknown until warm
        loading = client.post("/v1/sessions", json={})
        assert loading.status_code == 503 and int(loading.headers["retry-after"]) > 0
        assert _rejected(client, "not_ready") == 1
        gate.set()
        _wait_ready(client)
        assert _metrics(client)["headcast_sessions_capacity"] == 1  # floor(1 / 0.6)

        first = client.post("/v1/sessions", json={})
        assert first.status_code == 201
        refused = client.post("/v1/sessions", json={})
        assert refused.status_code == 429
        assert refused.json()["type"].endswith(":capacity")
        assert int(refused.headers["retry-after"]) > 0
        assert "(1 of 1)" in refused.json()["detail"]
        assert _rejected(client, "capacity") == 1
        assert _rejected(client, "auth") == 0 and _rejected(client, "not_ready") == 1

        token = {"Authorization": f"Bearer {first.json()['token']}"}
        assert client.delete(f"/v1/sessions/{first.json()['id']}", headers=token).status_code == 204
        assert client.post("/v1/sessions", json={}).status_code == 201  # the slot is free again


def test_a_configured_limit_beats_the_measured_rtf() -> None:
    settings = Settings(height=96, width=64, media_threads=2, max_sessions=2)
    app = create_app(settings, engine=MeasuredEngine(0.9))
    with TestClient(app) as client:
        _wait_ready(client)
        assert _metrics(client)["headcast_sessions_capacity"] == 2
        assert [client.post("/v1/sessions", json={}).status_code for _ in range(3)] == [
            201,
            201,
            429,
        ]


def test_an_engine_without_a_measured_rtf_gets_the_fallback() -> None:
    settings = Settings(height=96, width=64, media_threads=2, max_sessions_fallback=1)
    app = create_app(settings, engine=FakeEngine(96, 64))
    with TestClient(app) as client:
        _wait_ready(client)
        assert _metrics(client)["headcast_sessions_capacity"] == 1
        assert client.post("/v1/sessions", json={}).status_code == 201
        assert client.post("/v1/sessions", json={}).status_code == 429

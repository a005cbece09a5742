"""The Prometheus side: every metric's type, unit and labels, and what each observer event adds.

Parses the real exposition text (``prometheus_client.parser``), so a wrong type, a missing
unit suffix, a session id smuggled into a label or an event that changes nothing fails here.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from headcast.server.app import create_app
from headcast.server.metrics import GroupSessionMetrics, Metrics, RejectReason
from headcast.server.settings import Settings
from headcast.streaming.observer import ChunkProblem, NullObserver, SessionObserver
from tests.conftest import FakeEngine

EXPECTED_TYPES = {
    "headcast_sessions_active": "gauge",
    "headcast_sessions_capacity": "gauge",
    "headcast_sessions_rejected": "counter",
    "headcast_chunks": "counter",
    "headcast_chunk_compute_seconds": "histogram",
    "headcast_rtf": "histogram",
    "headcast_first_frame_seconds": "histogram",
    "headcast_chunk_errors": "counter",
    "headcast_interrupt_seconds": "histogram",
    "headcast_av_skew_seconds": "histogram",
    "headcast_frames_late": "counter",
    "headcast_frames_dropped": "counter",
    "headcast_audio_queued_seconds": "histogram",
    "headcast_process_threads": "gauge",
    "headcast_process_resident_memory_bytes": "gauge",
    "headcast_process_open_fds": "gauge",
    "headcast_engine_group_ready": "gauge",
    "headcast_engine_group_sessions": "gauge",
    "headcast_engine_group_capacity": "gauge",
    "headcast_engine_group_failures": "counter",
}
"""Metric family -> type, as parsed from the exposition (counters lose their ``_total``)."""

OPENMP_THREADS = 2
"""torch's intra-op threads for the thread-count test: one native thread besides the caller."""

ALLOWED_LABELS = {"reason", "le", "group"}
"""The only labels any series may carry: never a session id."""

UNITLESS = {"headcast_rtf"}
"""Families that are ratios or counts, so carry no unit suffix."""


def _families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(metrics: Metrics, sample_name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(sample_name, labels or None)
    assert value is not None, f"{sample_name}{labels} not exported"
    return value


def test_every_metric_has_its_type_unit_and_no_session_labels() -> None:
    families = _families(Metrics().render().decode())
    for name, kind in EXPECTED_TYPES.items():
        assert name in families, f"{name} is not exported"
        assert families[name].type == kind, f"{name} is a {families[name].type}, not a {kind}"
    for name, family in families.items():
        assert name.startswith("headcast_"), name
        if family.type == "histogram" and name not in UNITLESS:
            assert name.endswith("_seconds"), f"histogram {name} has no unit"
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name


def test_the_thread_gauge_counts_os_threads_not_only_pythons() -> None:
    """Native threads (here: torch's OpenMP pool, as codecs' are in the server) count too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(OPENMP_THREADS)
    try:
        (torch.ones(256, 256) @ torch.ones(256, 256)).sum()  # starts the pool's threads
        os_threads = len(os.listdir(f"/proc/{os.getpid()}/task"))
        assert os_threads > threading.active_count(), "no native thread to count"
        assert _value(Metrics(), "headcast_process_threads") == os_threads
    finally:
        torch.set_num_threads(threads)


def test_rejections_are_exported_for_every_reason_from_the_start() -> None:
    metrics = Metrics()
    for reason in RejectReason:
        assert _value(metrics, "headcast_sessions_rejected_total", reason=reason.value) == 0
    metrics.rejected(RejectReason.CAPACITY)
    metrics.rejected(RejectReason.CAPACITY)
    metrics.rejected(RejectReason.AUTH)
    assert _value(metrics, "headcast_sessions_rejected_total", reason="capacity") == 2
    assert _value(metrics, "headcast_sessions_rejected_total", reason="auth") == 1
    assert _value(metrics, "headcast_sessions_rejected_total", reason="not_ready") == 0


def test_observer_events_land_in_their_metrics() -> None:
    metrics = Metrics()
    metrics.add_group("0")
    metrics.add_group("1")
    observer: SessionObserver = metrics.for_group("1")  # a session on engine group 1

    observer.on_interrupt(0.12)
    assert _value(metrics, "headcast_interrupt_seconds_count") == 1
    assert _value(metrics, "headcast_interrupt_seconds_sum") == pytest.approx(0.12)
    assert _value(metrics, "headcast_interrupt_seconds_bucket", le="0.1") == 0
    assert _value(metrics, "headcast_interrupt_seconds_bucket", le="0.2") == 1

    observer.on_av_skew(-0.015)  # audio 15 ms ahead of video
    observer.on_av_skew(0.003)
    assert _value(metrics, "headcast_av_skew_seconds_bucket", le="-0.02") == 0
    assert _value(metrics, "headcast_av_skew_seconds_bucket", le="-0.01") == 1
    assert _value(metrics, "headcast_av_skew_seconds_bucket", le="0.005") == 2
    assert _value(metrics, "headcast_av_skew_seconds_count") == 2
    # signed buckets: Prometheus omits _sum when observations may be negative
    assert metrics.registry.get_sample_value("headcast_av_skew_seconds_sum") is None

    observer.on_frames_late(3)
    observer.on_frames_late(0)
    observer.on_frames_dropped(28)
    observer.on_frames_dropped(2)
    assert _value(metrics, "headcast_frames_late_total") == 3
    assert _value(metrics, "headcast_frames_dropped_total") == 30

    observer.on_audio_queued(2.5)
    assert _value(metrics, "headcast_audio_queued_seconds_count") == 1
    assert _value(metrics, "headcast_audio_queued_seconds_bucket", le="2.0") == 0
    assert _value(metrics, "headcast_audio_queued_seconds_bucket", le="4.0") == 1

    observer.on_chunk(0.4, 0.4 / 1.12)
    observer.on_chunk_problem(ChunkProblem.LATE)
    observer.on_first_frame(0.8)
    observer.on_activity()  # feeds the idle timeout, not a metric: must simply not fail
    assert _value(metrics, "headcast_chunks_total", group="1") == 1
    assert _value(metrics, "headcast_rtf_count", group="1") == 1
    assert _value(metrics, "headcast_chunk_compute_seconds_sum", group="1") == pytest.approx(0.4)
    assert _value(metrics, "headcast_chunk_errors_total", reason="late", group="1") == 1
    assert _value(metrics, "headcast_chunk_errors_total", reason="late", group="0") == 0
    assert _value(metrics, "headcast_first_frame_seconds_count") == 1


def test_metrics_and_the_null_observer_implement_every_observer_method() -> None:
    protocol_methods = {
        name
        for name in vars(SessionObserver)
        if name.startswith("on_") and callable(getattr(SessionObserver, name))
    }
    assert {"on_interrupt", "on_av_skew", "on_activity"} <= protocol_methods
    for implementation in (GroupSessionMetrics, NullObserver):
        missing = {name for name in protocol_methods if not hasattr(implementation, name)}
        assert not missing, f"{implementation.__name__} lacks {missing}"


def test_the_app_exports_the_new_metrics() -> None:
    settings = Settings(height=96, width=64, max_sessions=2, media_threads=2)
    with TestClient(create_app(settings, engine=FakeEngine(96, 64))) as client:
        deadline = time.monotonic() + 10.0
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = _families(response.text)
    for name, kind in EXPECTED_TYPES.items():
        assert families[name].type == kind, name
    assert families["headcast_sessions_capacity"].samples[0].value == 2
    assert "headcast_event_loop_tasks" in families

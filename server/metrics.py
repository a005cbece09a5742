"""Every Prometheus metric the server exports, in one registry per app.

Owns ``Metrics``: a ``CollectorRegistry`` of its own (no process-global default registry, so
tests can build several apps), the metric objects (namespaced ``headcast_``, units in the
names, no session ids as labels; engine metrics carry the engine ``group``), the
``SessionObserver`` the streaming layer reports to (``GroupSessionMetrics``, one per session:
chunks, interrupts, A/V skew, late and dropped frames, queued push audio, speech waits for a
generation slot and speech dropped after one), the engine groups' gauges (ready, sessions,
session limit, generation slots and how many are busy; read from ``EngineGroups`` at scrape
time), the
session counters the registry and the auth dependencies update (active, capacity, rejected by
reason), the avatars' series (by status, preparation time, failures by code; evictions from
the engines' device caches, read at scrape time), and the process gauges read at scrape time (OS
threads, event-loop tasks, and the standard process ones as ``headcast_process_*``: resident memory,
open file descriptors, CPU).

Knows nothing about routes or sessions beyond the observer events and ``RejectReason``.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from headcast.streaming.observer import ChunkProblem

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Content type of the Prometheus text exposition format."""

CHUNK_COMPUTE_BUCKETS_S = (
    0.05,
    0.1,
    0.2,
    0.35,
    0.5,
    0.75,
    0.9,
    1.0,
    1.12,
    1.3,
    1.6,
    2.0,
    3.0,
    5.0,
    10.0,
)
"""Histogram buckets of chunk compute time, in seconds, dense around one chunk (1.12 s)."""

RTF_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)
"""Histogram buckets of the real-time factor, dense around 1.0 (keeping up)."""

FIRST_FRAME_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
"""Histogram buckets of the time from offer to first video frame, in seconds."""


INTERRUPT_BUCKETS_S = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
"""Histogram buckets of interrupt latency (command to idle output), in seconds."""

AV_SKEW_BUCKETS_S = (-0.1, -0.04, -0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.02, 0.04, 0.1)
"""Histogram buckets of the signed audio-minus-video playout skew, in seconds; lip sync is
imperceptible within about +-0.02 s (negative: audio ahead of video). With negative buckets
the exposition has no ``_sum`` (Prometheus rule); use ``histogram_quantile`` on the buckets."""

AUDIO_QUEUED_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""Histogram buckets of pushed audio waiting to be played after a push, in seconds."""

AVATAR_PREPARE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Histogram buckets of an avatar's preparation time (photo to ready), in seconds."""

AvatarCounts = Callable[[], Mapping[str, int]]
"""Reads avatars by status (or evictions by engine group) at scrape time."""


SPEECH_WAIT_BUCKETS_S = (0.1, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 30.0)
"""Histogram buckets of a speech's wait for a generation slot, in seconds (waits come in
whole chunks of 1.12 s; 0 when a slot was free)."""


class RejectReason(enum.StrEnum):
    """Why a request to create or start a session was refused (a metric label)."""

    CAPACITY = "capacity"
    """Every session slot was taken (429)."""

    AUTH = "auth"
    """Missing, invalid, expired or another session's credentials (401 / 403)."""

    NOT_READY = "not_ready"
    """The engine was still loading or failed to load (503)."""


PROC_TASKS = Path("/proc/self/task")
"""One entry per OS thread of this process (Linux)."""


def os_thread_count() -> int:
    """Threads of this process as the OS counts them: Python's and native ones (codec and
    OpenMP threads). Without ``/proc`` (not Linux), Python's threads only."""
    try:
        return sum(1 for _ in PROC_TASKS.iterdir())
    except OSError:
        return threading.active_count()


class _RuntimeCollector(Collector):
    """Threads in the process and tasks on the server's event loop, read at scrape time."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "headcast_process_threads",
            "Threads in the server process, as the OS counts them (native codec threads too).",
            value=os_thread_count(),
        )
        loop = self.loop
        if loop is not None and not loop.is_closed():
            yield GaugeMetricFamily(
                "headcast_event_loop_tasks",
                "Unfinished asyncio tasks on the server's event loop.",
                value=len(asyncio.all_tasks(loop)),
            )


class _AvatarCollector(Collector):
    """Avatars by status and the engines' avatar-cache evictions, read at scrape time."""

    def __init__(self) -> None:
        self.by_status: AvatarCounts | None = None
        self.evictions: AvatarCounts | None = None

    def collect(self) -> Iterable[Metric]:
        if self.by_status is not None:
            avatars = GaugeMetricFamily(
                "headcast_avatars", "Avatars the server offers, by status.", labels=["status"]
            )
            for status, count in self.by_status().items():
                avatars.add_metric([str(status)], count)
            yield avatars
        if self.evictions is not None:
            evictions = CounterMetricFamily(
                "headcast_avatar_cache_evictions",
                "Avatars dropped from an engine group's bounded device cache (their next "
                "session loads the stored conditioning again), by engine group; restarts "
                "with the group.",
                labels=["group"],
            )
            for group, count in self.evictions().items():
                evictions.add_metric([group], count)
            yield evictions


class Metrics:
    """The server's metrics and their registry; also the sessions' ``SessionObserver``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sessions_active = Gauge(
            "headcast_sessions_active",
            "Sessions holding a slot (created and not yet closed).",
            registry=self.registry,
        )
        self.sessions_capacity = Gauge(
            "headcast_sessions_capacity",
            "Session slots of the ready engine groups: each configured, or floor(1 / warm-up "
            "RTF) of the group (0 until one is ready).",
            registry=self.registry,
        )
        self.sessions_rejected = Counter(
            "headcast_sessions_rejected",
            "Requests to create or start a session that were refused, by reason.",
            labelnames=("reason",),
            registry=self.registry,
        )
        for reason in RejectReason:  # export every reason from the start, at 0
            self.sessions_rejected.labels(reason=reason.value)
        self.chunks = Counter(
            "headcast_chunks",
            "Chunks generated by the engine and sent, by engine group (never idle-loop chunks).",
            labelnames=("group",),
            registry=self.registry,
        )
        self.chunk_compute_seconds = Histogram(
            "headcast_chunk_compute_seconds",
            "Engine compute time of one chunk (28 frames, 1.12 s of media), by engine group.",
            labelnames=("group",),
            buckets=CHUNK_COMPUTE_BUCKETS_S,
            registry=self.registry,
        )
        self.rtf = Histogram(
            "headcast_rtf",
            "Real-time factor per chunk: compute time over 1.12 s (<= 1 keeps up), by engine "
            "group.",
            labelnames=("group",),
            buckets=RTF_BUCKETS,
            registry=self.registry,
        )
        self.first_frame_seconds = Histogram(
            "headcast_first_frame_seconds",
            "Time from a session's offer to its first video frame handed to the encoder.",
            buckets=FIRST_FRAME_BUCKETS_S,
            registry=self.registry,
        )
        self.chunk_errors = Counter(
            "headcast_chunk_errors",
            "Chunks sent idle (last frame held) instead of generated, by reason and engine group.",
            labelnames=("reason", "group"),
            registry=self.registry,
        )
        self.group_ready = Gauge(
            "headcast_engine_group_ready",
            "1 while the engine group serves sessions, 0 while it loads, restarts or failed.",
            labelnames=("group",),
            registry=self.registry,
        )
        self.group_sessions = Gauge(
            "headcast_engine_group_sessions",
            "Sessions placed on the engine group.",
            labelnames=("group",),
            registry=self.registry,
        )
        self.group_capacity = Gauge(
            "headcast_engine_group_capacity",
            "Session slots of the engine group (0 unless ready).",
            labelnames=("group",),
            registry=self.registry,
        )
        self.generation_slots = Gauge(
            "headcast_generation_slots",
            "Generation slots of the engine group: chunks it generates in real time at once "
            "(0 unless ready).",
            labelnames=("group",),
            registry=self.registry,
        )
        self.generation_slots_busy = Gauge(
            "headcast_generation_slots_busy",
            "Generation slots of the engine group held by sessions now (generating, or in "
            "idle_mode loop speaking).",
            labelnames=("group",),
            registry=self.registry,
        )
        self.speech_wait_seconds = Histogram(
            "headcast_speech_wait_seconds",
            "How long speech waited for a generation slot (idle_mode loop; 0 when one was "
            "free), by engine group.",
            labelnames=("group",),
            buckets=SPEECH_WAIT_BUCKETS_S,
            registry=self.registry,
        )
        self.speech_dropped = Counter(
            "headcast_speech_dropped",
            "Speech dropped after waiting speech_wait_max_s for a generation slot, by engine "
            "group.",
            labelnames=("group",),
            registry=self.registry,
        )
        self.group_failures = Counter(
            "headcast_engine_group_failures",
            "Worker processes of the engine group that died (each ended the group's sessions).",
            labelnames=("group",),
            registry=self.registry,
        )
        self.interrupt_seconds = Histogram(
            "headcast_interrupt_seconds",
            "Time from an interrupt command to the output being idle.",
            buckets=INTERRUPT_BUCKETS_S,
            registry=self.registry,
        )
        self.av_skew_seconds = Histogram(
            "headcast_av_skew_seconds",
            "Playout skew per chunk: first audio packet's send time minus first video frame's "
            "(positive: audio behind video).",
            buckets=AV_SKEW_BUCKETS_S,
            registry=self.registry,
        )
        self.frames_late = Counter(
            "headcast_frames_late",
            "Video frames handed to the encoder after their due time.",
            registry=self.registry,
        )
        self.frames_dropped = Counter(
            "headcast_frames_dropped",
            "Video frames never played (dropped by an interrupt or a late chunk).",
            registry=self.registry,
        )
        self.audio_queued_seconds = Histogram(
            "headcast_audio_queued_seconds",
            "Pushed audio waiting to be played, observed after each push.",
            buckets=AUDIO_QUEUED_BUCKETS_S,
            registry=self.registry,
        )
        self.avatar_prepare_seconds = Histogram(
            "headcast_avatar_prepare_seconds",
            "Time from the start of an avatar's preparation to ready (face framing and the "
            "engine's conditioning).",
            buckets=AVATAR_PREPARE_BUCKETS_S,
            registry=self.registry,
        )
        self.avatar_failures = Counter(
            "headcast_avatar_failures",
            "Avatar preparations that failed, by error code (no_face, too_small, ...).",
            labelnames=("error",),
            registry=self.registry,
        )
        self._avatars = _AvatarCollector()
        self.registry.register(self._avatars)
        self._runtime = _RuntimeCollector()
        self.registry.register(self._runtime)
        # headcast_process_resident_memory_bytes, _open_fds, ...: what a soak test watches.
        ProcessCollector(namespace="headcast", registry=self.registry)

    def add_group(self, group: str) -> None:
        """Export engine group ``group``'s series from the start, at 0."""
        self.chunks.labels(group=group)
        self.chunk_compute_seconds.labels(group=group)
        self.rtf.labels(group=group)
        for problem in ChunkProblem:
            self.chunk_errors.labels(reason=problem.value, group=group)
        self.group_failures.labels(group=group)
        self.speech_wait_seconds.labels(group=group)
        self.speech_dropped.labels(group=group)

    def for_group(self, group: str) -> GroupSessionMetrics:
        """The ``SessionObserver`` of a session placed on engine group ``group``."""
        return GroupSessionMetrics(self, group)

    def bind_avatars(self, by_status: AvatarCounts) -> None:
        """Export ``headcast_avatars{status}`` from ``by_status()`` at scrape time."""
        self._avatars.by_status = by_status

    def bind_avatar_evictions(self, by_group: AvatarCounts) -> None:
        """Export ``headcast_avatar_cache_evictions_total{group}`` from ``by_group()``."""
        self._avatars.evictions = by_group

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Report the task count of ``loop`` (the server's loop) from now on."""
        self._runtime.loop = loop

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    # -- SessionObserver events (engine events carry the group: see GroupSessionMetrics) ----

    def on_chunk(self, compute_seconds: float, rtf: float, *, group: str) -> None:
        self.chunks.labels(group=group).inc()
        self.chunk_compute_seconds.labels(group=group).observe(compute_seconds)
        self.rtf.labels(group=group).observe(rtf)

    def on_chunk_problem(self, problem: ChunkProblem, *, group: str) -> None:
        self.chunk_errors.labels(reason=problem.value, group=group).inc()

    def on_speech_wait(self, seconds: float, *, group: str) -> None:
        self.speech_wait_seconds.labels(group=group).observe(seconds)

    def on_speech_dropped(self, *, group: str) -> None:
        self.speech_dropped.labels(group=group).inc()

    def on_first_frame(self, seconds: float) -> None:
        self.first_frame_seconds.observe(seconds)

    def on_interrupt(self, latency_s: float) -> None:
        self.interrupt_seconds.observe(latency_s)

    def on_av_skew(self, skew_s: float) -> None:
        self.av_skew_seconds.observe(skew_s)

    def on_frames_late(self, count: int) -> None:
        if count > 0:
            self.frames_late.inc(count)

    def on_frames_dropped(self, count: int) -> None:
        if count > 0:
            self.frames_dropped.inc(count)

    def on_audio_queued(self, queued_s: float) -> None:
        self.audio_queued_seconds.observe(queued_s)

    def on_activity(self) -> None:
        return None  # client activity feeds the idle timeout (server.lifecycle), not a metric

    # -- sessions -----------------------------------------------------------------------------

    def rejected(self, reason: RejectReason) -> None:
        """Count a refused request to create or start a session."""
        self.sessions_rejected.labels(reason=reason.value).inc()


class GroupSessionMetrics:
    """The ``SessionObserver`` of one session: its engine metrics carry its group's label,
    the rest go to ``Metrics`` as they are. Never labels by session."""

    def __init__(self, metrics: Metrics, group: str) -> None:
        self._metrics = metrics
        self.group = group

    def on_chunk(self, compute_seconds: float, rtf: float) -> None:
        self._metrics.on_chunk(compute_seconds, rtf, group=self.group)

    def on_chunk_problem(self, problem: ChunkProblem) -> None:
        self._metrics.on_chunk_problem(problem, group=self.group)

    def on_speech_wait(self, seconds: float) -> None:
        self._metrics.on_speech_wait(seconds, group=self.group)

    def on_speech_dropped(self) -> None:
        self._metrics.on_speech_dropped(group=self.group)

    def on_first_frame(self, seconds: float) -> None:
        self._metrics.on_first_frame(seconds)

    def on_interrupt(self, latency_s: float) -> None:
        self._metrics.on_interrupt(latency_s)

    def on_av_skew(self, skew_s: float) -> None:
        self._metrics.on_av_skew(skew_s)

    def on_frames_late(self, count: int) -> None:
        self._metrics.on_frames_late(count)

    def on_frames_dropped(self, count: int) -> None:
        self._metrics.on_frames_dropped(count)

    def on_audio_queued(self, queued_s: float) -> None:
        self._metrics.on_audio_queued(queued_s)

    def on_activity(self) -> None:
        self._metrics.on_activity()

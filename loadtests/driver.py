"""The load driver: N concurrent WebRTC sessions against one headcast server, for a while.

Owns ``LoadPlan`` (what to run, with its bounds checked: loopback targets only, at most
``MAX_SESSIONS`` sessions and ``MAX_DURATION_S`` seconds), ``run_load`` (one task per
session: create, connect, speak, count frames, hang up, all under a deadline) and
``LoadReport`` (received fps per session, rejections, and the server's own figures over the
run from ``/metrics``: chunks, mean RTF, share of chunks that kept up, compute time, first
frame, speech waits). A session speaks into its microphone all the time, or, with a
``duty_cycle``, is a push (chatbot) session that speaks in bursts (``loadtests.duty_cycle``:
speech waits, chunks generated against played, the seams where the engine takes over).
Knows the server only through ``headcast_client`` and the HTTP API.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from aiortc.mediastreams import MediaStreamError

from headcast.pipeline.media import SAMPLE_RATE_HZ
from headcast.streaming.ice import HostCandidatePolicy
from headcast_client import (
    ArrayAudioTrack,
    HeadcastClient,
    HeadcastError,
    SessionInfo,
    over_groups,
)
from loadtests.duty_cycle import (
    FrameLog,
    SpeechFigures,
    Spread,
    burst_times,
    outstanding,
    played_out,
    receive_media,
    speak_in_bursts,
    watch_events,
)
from loadtests.speech import PHRASE_S, speech_like

logger = logging.getLogger(__name__)

MAX_SESSIONS = 16
"""Most sessions one run may open."""

MAX_DURATION_S = 600.0
"""Longest time one session may stream, in seconds."""

MAX_RAMP_S = 10.0
"""Longest delay between two session starts, in seconds."""

CONNECT_TIMEOUT_S = 30.0
"""Limit for creating a session and bringing its WebRTC connection up, in seconds."""

TEARDOWN_TIMEOUT_S = 10.0
"""Limit for hanging up one session (close and DELETE), in seconds."""

MIC_RATE_HZ = 48_000
"""Sample rate of the synthetic microphone, in Hz."""

SPEECH_CLIP_S = 5 * PHRASE_S
"""Length of the synthetic speech every microphone plays in a loop, in seconds: made once,
off the event loop, before any session is created, so a run's start-up costs the same for
any duration (a whole 300 s clip took 28 s on the loop and the sessions hit the no-show
timeout). Whole phrases (10 s), so the loop's seam falls in a pause."""

DEFAULT_BURST_S = 2.24
"""Speech per burst of a duty-cycle session, in seconds (two chunks)."""

BURST_RANGE_S = (0.5, 8.0)
"""Shortest and longest burst, in seconds (a burst is pushed whole: it must fit the
server's default 10 s bound on queued pushed audio, with room for the next)."""

DRAIN_S = 15.0
"""After its duration, how long a duty-cycle session waits for its bursts still queued
(waiting for a generation slot, or playing) to end, in seconds."""

LOOPBACK_HOSTNAMES = frozenset({"localhost"})

HTTP_TOO_MANY_REQUESTS = 429
HTTP_NOT_FOUND = 404
POLL_S = 0.2
"""While draining, how often a duty-cycle session checks for its unplayed bursts."""


class LoadPlanError(ValueError):
    """The plan is outside the driver's bounds; the message says which bound."""


@dataclass(frozen=True)
class LoadPlan:
    """What to run: ``sessions`` sessions against ``url``, each streaming ``duration_s``."""

    url: str
    sessions: int
    duration_s: float
    ramp_s: float = 0.5
    """Delay between two session starts, in seconds."""

    avatar: str = "default"
    api_key: str | None = field(default=None, repr=False)
    """Sent when creating sessions, for a server with ``api_keys`` configured."""

    duty_cycle: float | None = None
    """Share of the time each session speaks, in (0, 1]: push sessions that speak in bursts
    of ``burst_s``; ``None``: microphone sessions that speak all the time."""

    burst_s: float = DEFAULT_BURST_S
    """Speech per burst of a duty-cycle session, in seconds."""

    spread: Spread = Spread.RANDOM
    """How the duty-cycle sessions' bursts are placed in time."""

    seed: int = 0
    """Seed of the random burst times."""

    def validate(self) -> None:
        """Raise ``LoadPlanError`` unless the target is loopback and the counts are bounded."""
        check_target(self.url)
        if not 1 <= self.sessions <= MAX_SESSIONS:
            raise LoadPlanError(f"--sessions must be 1..{MAX_SESSIONS}, got {self.sessions}")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise LoadPlanError(
                f"--duration must be in (0, {MAX_DURATION_S:.0f}] seconds, got {self.duration_s}"
            )
        if not 0 <= self.ramp_s <= MAX_RAMP_S:
            raise LoadPlanError(f"--ramp must be 0..{MAX_RAMP_S:.0f} seconds, got {self.ramp_s}")
        if self.duty_cycle is not None and not 0 < self.duty_cycle <= 1:
            raise LoadPlanError(f"--duty-cycle must be in (0, 1], got {self.duty_cycle}")
        shortest, longest = BURST_RANGE_S
        if not shortest <= self.burst_s <= longest:
            raise LoadPlanError(
                f"--burst must be {shortest:g}..{longest:g} seconds, got {self.burst_s}"
            )

    @property
    def deadline_s(self) -> float:
        """Wall-clock bound of the whole run, in seconds."""
        ramp = self.ramp_s * (self.sessions - 1)
        drain = DRAIN_S if self.duty_cycle is not None else 0.0
        return ramp + CONNECT_TIMEOUT_S + self.duration_s + drain + TEARDOWN_TIMEOUT_S


def check_target(url: str) -> None:
    """Raise ``LoadPlanError`` unless ``url`` is http(s) on this machine (loopback)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadPlanError(f"--url must be http(s)://HOST:PORT, got {url!r}")
    if not is_loopback(parts.hostname):
        raise LoadPlanError(
            f"refusing to load {parts.hostname!r}: the load driver targets this machine "
            "only (127.0.0.0/8, ::1 or localhost)"
        )


def is_loopback(hostname: str) -> bool:
    if hostname.lower() in LOOPBACK_HOSTNAMES:
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


@dataclass
class SessionResult:
    """How one session went."""

    index: int
    outcome: str = "failed"
    """``ok``, ``rejected`` (429: the server was full) or ``failed``."""

    detail: str = ""
    connect_s: float | None = None
    """Seconds from POST /v1/sessions to a connected peer connection."""

    first_frame_s: float | None = None
    """Seconds from connected to the first video frame."""

    frames: int = 0
    fps: float | None = None
    """Received video frames per second, first to last frame."""

    max_gap_s: float | None = None
    """Longest wait between two received video frames (a stall), in seconds."""

    audio_s: float = 0.0
    """Seconds of the avatar's audio received."""

    ended_early_s: float | None = None
    """Seconds after connecting at which the server ended the video track, if before the end."""

    speech: SpeechFigures | None = None
    """A duty-cycle session's speech waits, chunks and seams."""


@dataclass
class ServerFigures:
    """The server's metrics over the run (differences of two ``/metrics`` scrapes)."""

    chunks: float = 0.0
    rtf_mean: float | None = None
    keeping_up: float | None = None
    """Share of chunks with RTF <= 1."""

    compute_mean_s: float | None = None
    first_frame_mean_s: float | None = None
    speech_waits: float = 0.0
    """Utterances that got a generation slot (``headcast_speech_wait_seconds``)."""

    speech_wait_mean_s: float | None = None
    speech_dropped: float = 0.0
    """Utterances dropped after waiting for a slot."""


@dataclass
class LoadReport:
    """The result of one run."""

    plan: LoadPlan
    sessions: list[SessionResult]
    server: ServerFigures
    wall_s: float

    @property
    def completed(self) -> list[SessionResult]:
        return [result for result in self.sessions if result.outcome == "ok"]

    def summary_lines(self) -> list[str]:
        """The report in words, one line per session and one for the server."""
        lines = [
            f"{len(self.completed)}/{self.plan.sessions} sessions streamed "
            f"{self.plan.duration_s:.0f} s against {self.plan.url} ({self.wall_s:.1f} s wall)"
        ]
        for result in self.sessions:
            if result.outcome == "ok":
                lines.append(
                    f"  session {result.index}: {result.frames} frames, "
                    f"{_fmt(result.fps, '.1f')} fps "
                    f"(longest gap {_fmt(result.max_gap_s, '.2f')} s), "
                    f"first frame {_fmt(result.first_frame_s, '.2f')} s after connect "
                    f"(connect {_fmt(result.connect_s, '.2f')} s), "
                    f"{result.audio_s:.1f} s of audio back"
                )
            else:
                lines.append(f"  session {result.index}: {result.outcome}: {result.detail}")
            if result.speech is not None and result.outcome == "ok":
                lines.append(_speech_line(result.speech))
        server = self.server
        lines.append(
            f"  server: {server.chunks:.0f} chunks, mean RTF {_fmt(server.rtf_mean, '.3f')}, "
            f"{_fmt(None if server.keeping_up is None else 100 * server.keeping_up, '.0f')} % "
            f"of chunks at RTF <= 1, mean chunk compute {_fmt(server.compute_mean_s, '.3f')} s, "
            f"mean first frame {_fmt(server.first_frame_mean_s, '.2f')} s"
        )
        if self.plan.duty_cycle is not None:
            lines.append(
                f"  server: {server.speech_waits:.0f} utterances got a slot (mean wait "
                f"{_fmt(server.speech_wait_mean_s, '.2f')} s), {server.speech_dropped:.0f} dropped"
            )
        return lines

    def duty_summary(self) -> dict[str, Any] | None:
        """A duty-cycle run over every session: speech waits (p50 / p95 / max over all
        utterances), fps (lowest and mean), chunks generated against played, the seams."""
        figures = [r.speech for r in self.completed if r.speech is not None]
        if self.plan.duty_cycle is None or not figures:
            return None
        waits = [w for f in figures for w in f.waits_ms]
        fps = [r.fps for r in self.completed if r.fps is not None]
        resume = [j for f in figures for j in f.resume_jumps]
        p99 = [f.frame_change_p99 for f in figures if f.frame_change_p99 is not None]
        return {
            "duty_cycle": self.plan.duty_cycle,
            "burst_s": self.plan.burst_s,
            "spread": self.plan.spread.value,
            "sessions": len(figures),
            "speech_wait_ms": {
                "p50": _percentile(waits, 50),
                "p95": _percentile(waits, 95),
                "max": max(waits) if waits else None,
                "utterances": len(waits),
            },
            "speech_dropped": sum(f.dropped for f in figures),
            "fps_min": round(min(fps), 2) if fps else None,
            "fps_mean": round(sum(fps) / len(fps), 2) if fps else None,
            "chunks_generated": sum(f.chunks_generated for f in figures),
            "chunks_played": sum(f.chunks_played for f in figures),
            "chunks_loop": sum(f.chunks_loop for f in figures),
            "chunks_idle_other": sum(sum(f.problems.values()) for f in figures),
            "resume_jump_max": max(resume) if resume else None,
            "frame_change_p99_min": min(p99) if p99 else None,
        }

    def as_dict(self) -> dict[str, Any]:
        sessions = []
        for result in self.sessions:
            row = asdict(result)
            row["speech"] = None if result.speech is None else result.speech.as_report()
            sessions.append(row)
        report: dict[str, Any] = {
            "plan": {key: value for key, value in asdict(self.plan).items() if key != "api_key"},
            "sessions": sessions,
            "server": asdict(self.server),
            "wall_s": self.wall_s,
        }
        summary = self.duty_summary()
        if summary is not None:
            report["duty_cycle"] = summary
        return report


def _percentile(values: list[int], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _speech_line(speech: SpeechFigures) -> str:
    return (
        f"    speech: {speech.bursts} bursts, {speech.started} started, {speech.dropped} "
        f"dropped; wait p50 {_fmt(speech.wait_p50_ms, '.0f')} ms, p95 "
        f"{_fmt(speech.wait_p95_ms, '.0f')} ms, max {_fmt(speech.wait_max_ms, '.0f')} ms; "
        f"chunks {speech.chunks_generated} generated / {speech.chunks_played} played "
        f"({speech.chunks_loop} loop, other idle {speech.problems or 'none'}); luma jump at "
        f"resume max {_fmt(max(speech.resume_jumps, default=None), '.2f')} vs ordinary p99 "
        f"{_fmt(speech.frame_change_p99, '.2f')}"
    )


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


async def run_load(plan: LoadPlan) -> LoadReport:
    """Run ``plan`` (validated first) and report; returns within ``plan.deadline_s``.

    Cancelling it stops the run early: every session hangs up (DELETE) before it returns.
    """
    plan.validate()
    started = time.monotonic()
    policy = HostCandidatePolicy(loopback_only=True)
    async with HeadcastClient(
        plan.url, timeout_s=CONNECT_TIMEOUT_S, host_candidates=policy, api_key=plan.api_key
    ) as client:
        await client.wait_ready(timeout_s=CONNECT_TIMEOUT_S)
        if plan.duty_cycle is None:
            speech = await asyncio.to_thread(speech_like, SPEECH_CLIP_S, MIC_RATE_HZ)
        else:  # one burst, pushed at the session's own rate
            speech = await asyncio.to_thread(speech_like, plan.burst_s, SAMPLE_RATE_HZ)
        before = over_groups(await client.metrics())
        results = [SessionResult(index) for index in range(plan.sessions)]
        tasks = [
            asyncio.create_task(
                _one_session(client, plan, result, speech), name=f"load-session-{result.index}"
            )
            for result in results
        ]
        try:
            _done, pending = await asyncio.wait(tasks, timeout=plan.deadline_s)
        except asyncio.CancelledError:  # the run is stopped early: every session hangs up
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if task in pending:
                result.outcome, result.detail = (
                    "failed",
                    f"did not finish within {plan.deadline_s:.0f} s",
                )
            elif task.exception() is not None:
                result.outcome, result.detail = "failed", repr(task.exception())
        after = over_groups(await client.metrics())
    return LoadReport(plan, results, _server_figures(before, after), time.monotonic() - started)


async def _one_session(
    client: HeadcastClient, plan: LoadPlan, result: SessionResult, speech: np.ndarray
) -> None:
    """Create, connect, speak (``speech`` at ``MIC_RATE_HZ``, looped) for ``plan.duration_s``
    while counting what comes back, hang up. With a duty cycle: ``_one_speaking_session``."""
    await asyncio.sleep(result.index * plan.ramp_s)
    if plan.duty_cycle is not None:
        await _one_speaking_session(client, plan, result, speech)
        return
    loop = asyncio.get_running_loop()
    began = loop.time()
    session = await _create(client, plan, result, "mic")
    if session is None:
        return
    mic = ArrayAudioTrack(speech, MIC_RATE_HZ, loop=True)
    connection = None
    try:
        connection = await client.connect_webrtc(session, mic)
        connected = loop.time()
        result.connect_s = connected - began
        deadline = connected + plan.duration_s
        frame_times = await count_media(connection.video, connection.audio, deadline, result)
        record_frames(result, frame_times, connected)
        if not frame_times:
            result.outcome, result.detail = "failed", "connected but received no video frame"
        elif result.ended_early_s is not None:
            result.outcome = "failed"
            result.detail = (
                f"the server ended the stream {result.ended_early_s:.1f} s into "
                f"{plan.duration_s:.0f} s (see its log for why)"
            )
        else:
            result.outcome = "ok"
    finally:
        mic.stop()
        try:
            async with asyncio.timeout(TEARDOWN_TIMEOUT_S):
                await client.delete_session(session)  # first: closing the peer ends it too
                if connection is not None:
                    await connection.close()
        except HeadcastError as exc:
            if not (exc.status == HTTP_NOT_FOUND and result.ended_early_s is not None):
                logger.warning("session %d: hanging up failed: %r", result.index, exc)
        except (OSError, TimeoutError) as exc:
            logger.warning("session %d: hanging up failed: %r", result.index, exc)


async def _create(
    client: HeadcastClient, plan: LoadPlan, result: SessionResult, audio_source: str
) -> SessionInfo | None:
    """A new session; ``None`` (``result`` says so) when the server is full (429)."""
    try:
        return await client.create_session(plan.avatar, audio_source=audio_source)
    except HeadcastError as exc:
        if exc.status == HTTP_TOO_MANY_REQUESTS:
            result.outcome = "rejected"
            result.detail = (
                f"server full (429, Retry-After {exc.headers.get('Retry-After', '?')} s)"
            )
            return None
        raise


async def _one_speaking_session(
    client: HeadcastClient, plan: LoadPlan, result: SessionResult, burst: np.ndarray
) -> None:
    """A push session for ``plan.duration_s``: receive its media over WebRTC and push
    ``burst`` (16 kHz) at its duty cycle over the audio WebSocket; then wait (at most
    ``DRAIN_S``) for the bursts still queued to end, and hang up."""
    assert plan.duty_cycle is not None
    loop = asyncio.get_running_loop()
    began = loop.time()
    session = await _create(client, plan, result, "push")
    if session is None:
        return
    figures, frames = SpeechFigures(), FrameLog()
    result.speech = figures
    connection = None
    try:
        connection = await client.connect_webrtc(session)
        connected = loop.time()
        result.connect_s = connected - began
        async with await client.push_socket(session) as socket:
            times = burst_times(
                result.index,
                plan.sessions,
                plan.duty_cycle,
                plan.burst_s,
                plan.duration_s,
                spread=plan.spread,
                seed=plan.seed,
            )
            helpers = [
                asyncio.create_task(watch_events(socket.events, figures)),
                asyncio.create_task(speak_in_bursts(socket, burst, times, figures)),
            ]
            try:
                done = played_out(figures, connected + plan.duration_s, DRAIN_S, POLL_S)
                await receive_media(connection.video, connection.audio, frames, done)
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
        figures.finish(frames)
        record_frames(result, frames.arrivals, connected)
        result.audio_s, result.ended_early_s = frames.audio_s, frames.ended_early_s
        if not frames.arrivals:
            result.outcome, result.detail = "failed", "connected but received no video frame"
        elif result.ended_early_s is not None:
            result.outcome = "failed"
            result.detail = f"the server ended the stream {result.ended_early_s:.1f} s in"
        elif outstanding(figures) > 0:
            result.outcome = "failed"
            result.detail = f"{outstanding(figures)} burst(s) still unplayed {DRAIN_S:.0f} s after"
        else:
            result.outcome = "ok"
    finally:
        try:
            async with asyncio.timeout(TEARDOWN_TIMEOUT_S):
                await client.delete_session(session)
                if connection is not None:
                    await connection.close()
        except (HeadcastError, OSError, TimeoutError) as exc:
            logger.warning("session %d: hanging up failed: %r", result.index, exc)


def record_frames(result: SessionResult, frame_times: list[float], connected: float) -> None:
    """Fill ``result``'s frame count, rate, longest gap and first-frame delay from the
    arrival times (loop time) of its video frames; ``connected`` is when the peer connected."""
    if frame_times:
        result.first_frame_s = frame_times[0] - connected
    if len(frame_times) > 1 and frame_times[-1] > frame_times[0]:
        result.fps = (len(frame_times) - 1) / (frame_times[-1] - frame_times[0])
        result.max_gap_s = max(b - a for a, b in zip(frame_times, frame_times[1:]))
    result.frames = len(frame_times)


async def count_media(
    video: Any, audio: Any, deadline: float, result: SessionResult
) -> list[float]:
    """Receive both tracks until ``deadline`` (loop time); return the video frames' arrival
    times."""
    loop = asyncio.get_running_loop()
    frame_times: list[float] = []

    started = loop.time()

    async def take_video() -> None:
        while True:
            try:
                await video.recv()
            except MediaStreamError:
                result.ended_early_s = loop.time() - started
                return
            frame_times.append(loop.time())

    async def take_audio() -> None:
        while True:
            try:
                frame = await audio.recv()
            except MediaStreamError:
                return
            result.audio_s += frame.samples / frame.sample_rate

    video_task = asyncio.create_task(take_video())
    tasks = [video_task, asyncio.create_task(take_audio())]
    try:  # until the deadline, or until the server ends the video
        await asyncio.wait([video_task], timeout=max(0.0, deadline - loop.time()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return frame_times


def _delta(before: dict[str, float], after: dict[str, float], series: str) -> float:
    return after.get(series, 0.0) - before.get(series, 0.0)


def _mean(before: dict[str, float], after: dict[str, float], histogram: str) -> float | None:
    count = _delta(before, after, f"{histogram}_count")
    return _delta(before, after, f"{histogram}_sum") / count if count > 0 else None


def _server_figures(before: dict[str, float], after: dict[str, float]) -> ServerFigures:
    chunks = _delta(before, after, "headcast_chunks_total")
    waits = _delta(before, after, "headcast_speech_wait_seconds_count")
    rtf_count = _delta(before, after, "headcast_rtf_count")
    kept_up = _delta(before, after, 'headcast_rtf_bucket{le="1.0"}')
    return ServerFigures(
        chunks=chunks,
        rtf_mean=_mean(before, after, "headcast_rtf"),
        keeping_up=kept_up / rtf_count if rtf_count > 0 else None,
        compute_mean_s=_mean(before, after, "headcast_chunk_compute_seconds"),
        first_frame_mean_s=_mean(before, after, "headcast_first_frame_seconds"),
        speech_waits=waits,
        speech_wait_mean_s=_mean(before, after, "headcast_speech_wait_seconds"),
        speech_dropped=_delta(before, after, "headcast_speech_dropped_total"),
    )

"""A live session end to end over real WebRTC on 127.0.0.1: puppet server, aiortc client.

The client speaks a synthesised speech-like signal (harmonic syllables at ~4 Hz with pauses)
into its microphone track and receives the avatar for 7 s of media. Asserted: >= 24 fps over
4 s, 448x768 frames, audible audio, and lip-sync: the puppet's mouth opening, measured on the
received frames, follows the received audio's energy (per 40 ms, aligned by pts) with a lag
of at most 80 ms; the ``events`` data channel announces the caller's phrases
(``speech.started`` / ``speech.ended`` from the server's voice-activity detector). The
measurements go to ``artifacts/loopback_metrics.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headcast.pipeline.puppet import mouth_open_metric
from headcast_client import ArrayAudioTrack, HeadcastClient
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 448, 768
MIC_RATE_HZ = 48_000
SPEECH_SECONDS = 10.0
RECEIVE_MEDIA_SECONDS = 7.0
VIDEO_FPS = 25
BIN_SECONDS = 0.040
"""Analysis bin: one video frame (40 ms)."""

FPS_WINDOW_FRAMES = 4 * VIDEO_FPS + 1
"""Frames spanning 4 s of received video, for the frame-rate measurement."""

MIN_FPS = 24.0
MAX_LAG_MS = 80.0
MAX_LAG_SEARCH_BINS = 12
"""Cross-correlation lags searched, in 40 ms bins each way (+-480 ms)."""

MIN_CORRELATION = 0.5
"""The mouth must follow the audio this well at the best lag, or the lag means nothing."""

SILENT_DBFS = -50.0
FULL_OPEN_DBFS = -10.0
"""The audio level range the puppet maps to a closed..fully open mouth."""

RECEIVE_TIMEOUT_S = 60.0


def speech_like_signal(seconds: float, rate: int = MIC_RATE_HZ, seed: int = 7) -> np.ndarray:
    """Syllables: a 6-harmonic voice at 110-170 Hz, ~4 per second, in phrases with pauses."""
    rng = np.random.default_rng(seed)
    out = np.zeros(round(seconds * rate), dtype=np.float64)
    t = 0.3
    while t < seconds - 0.5:
        for _ in range(int(rng.integers(4, 8))):  # one phrase
            length = rng.uniform(0.14, 0.22)
            n = round(length * rate)
            start = round(t * rate)
            if start + n >= out.size:
                break
            time_axis = np.arange(n) / rate
            f0 = rng.uniform(110, 170)
            voice = sum(np.sin(2 * np.pi * f0 * h * time_axis) / h for h in range(1, 7))
            envelope = np.sin(np.pi * np.arange(n) / n) ** 0.7
            out[start : start + n] += rng.uniform(0.25, 0.4) * envelope * voice / 1.6
            t += length + rng.uniform(0.05, 0.12)
        t += rng.uniform(0.4, 0.7)  # pause between phrases
    return out.astype(np.float32)


@dataclass
class Received:
    frame_times: list[float]
    frame_pts: list[int]
    mouth: list[float]
    sizes: set[tuple[int, int]]
    audio_pts: list[int]
    audio: list[np.ndarray]
    connect_seconds: float
    first_frame_seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)
    """What the ``events`` data channel brought."""


@dataclass
class LoopbackMetrics:
    fps: float
    lag_ms: float
    lag_ms_refined: float
    correlation: float
    audio_rms_dbfs: float
    video_frames: int
    audio_seconds: float
    width: int
    height: int
    connect_seconds: float
    first_frame_seconds: float
    mouth_open_range: tuple[float, float]


async def _receive(server_url: str) -> Received:
    async with HeadcastClient(server_url, host_candidates=LOOPBACK_ONLY) as client:
        session = await client.create_session()
        started = time.monotonic()
        mic = ArrayAudioTrack(speech_like_signal(SPEECH_SECONDS), MIC_RATE_HZ)
        connection = await client.connect_webrtc(session, mic, events=True)
        connected = time.monotonic() - started
        received = Received([], [], [], set(), [], [], connected, 0.0)
        video_frames = round(RECEIVE_MEDIA_SECONDS * VIDEO_FPS)
        audio_packets = round(RECEIVE_MEDIA_SECONDS / 0.020)

        async def video() -> None:
            for _ in range(video_frames):
                frame = await connection.video.recv()
                now = time.monotonic()
                if not received.frame_times:
                    received.first_frame_seconds = now - started
                received.frame_times.append(now)
                received.frame_pts.append(int(frame.pts))
                received.sizes.add((frame.width, frame.height))
                rgb = frame.to_ndarray(format="rgb24")
                received.mouth.append(mouth_open_metric(rgb, HEIGHT, WIDTH))

        async def audio() -> None:
            for _ in range(audio_packets):
                frame = await connection.audio.recv()
                received.audio_pts.append(int(frame.pts))
                samples = frame.to_ndarray().astype(np.float32) / 32768.0  # [1, n*channels] s16
                channels = len(frame.layout.channels)
                received.audio.append(samples.reshape(-1, channels).mean(axis=1))

        try:
            await asyncio.wait_for(asyncio.gather(video(), audio()), RECEIVE_TIMEOUT_S)
            received.events = connection.events.drain()
        finally:
            await client.delete_session(session)
            await connection.close()
    return received


def _levels_per_bin(received: Received, bins: int) -> np.ndarray:
    """Received audio level per 40 ms bin (dBFS), placed by pts relative to the first packet."""
    samples_per_bin = round(BIN_SECONDS * MIC_RATE_HZ)
    timeline = np.zeros(bins * samples_per_bin, dtype=np.float32)
    first = received.audio_pts[0]
    for pts, pcm in zip(received.audio_pts, received.audio, strict=True):
        start = pts - first
        end = min(start + pcm.size, timeline.size)
        if start < timeline.size:
            timeline[start:end] = pcm[: end - start]
    per_bin = timeline.reshape(bins, samples_per_bin)
    rms = np.sqrt(np.mean(per_bin**2, axis=1))
    return 20 * np.log10(rms + 1e-10)


def _mouth_per_bin(received: Received, bins: int) -> np.ndarray:
    mouth = np.full(bins, np.nan)
    first = received.frame_pts[0]
    for pts, value in zip(received.frame_pts, received.mouth, strict=True):
        index = round((pts - first) / (90_000 * BIN_SECONDS))
        if 0 <= index < bins:
            mouth[index] = value
    return mouth


def _best_lag(mouth: np.ndarray, drive: np.ndarray) -> tuple[int, float, float]:
    """Lag (bins; positive = mouth after audio) maximising correlation; also refined and peak."""
    scores = {}
    for lag in range(-MAX_LAG_SEARCH_BINS, MAX_LAG_SEARCH_BINS + 1):
        m = mouth[max(lag, 0) : mouth.size + min(lag, 0)]
        d = drive[max(-lag, 0) : drive.size - max(lag, 0)]
        ok = ~np.isnan(m)
        scores[lag] = float(np.corrcoef(m[ok], d[ok])[0, 1])
    best = max(scores, key=lambda lag: scores[lag])
    refined = float(best)
    if -MAX_LAG_SEARCH_BINS < best < MAX_LAG_SEARCH_BINS:  # parabola through the peak
        left, mid, right = scores[best - 1], scores[best], scores[best + 1]
        denominator = left - 2 * mid + right
        if denominator < 0:
            refined = best + 0.5 * (left - right) / denominator
    return best, refined, scores[best]


def _analyse(received: Received) -> LoopbackMetrics:
    times = received.frame_times[-FPS_WINDOW_FRAMES:]
    fps = (len(times) - 1) / (times[-1] - times[0])
    bins = min(len(received.frame_pts), round(len(received.audio) * 0.020 / BIN_SECONDS))
    levels = _levels_per_bin(received, bins)
    drive = np.clip((levels - SILENT_DBFS) / (FULL_OPEN_DBFS - SILENT_DBFS), 0.0, 1.0)
    mouth = _mouth_per_bin(received, bins)
    lag, refined, correlation = _best_lag(mouth, drive)
    all_audio = np.concatenate(received.audio)
    width, height = next(iter(received.sizes))
    return LoopbackMetrics(
        fps=round(fps, 2),
        lag_ms=lag * BIN_SECONDS * 1000,
        lag_ms_refined=round(refined * BIN_SECONDS * 1000, 1),
        correlation=round(correlation, 3),
        audio_rms_dbfs=round(float(20 * np.log10(np.sqrt(np.mean(all_audio**2)) + 1e-10)), 1),
        video_frames=len(received.frame_pts),
        audio_seconds=round(all_audio.size / MIC_RATE_HZ, 2),
        width=width,
        height=height,
        connect_seconds=round(received.connect_seconds, 3),
        first_frame_seconds=round(received.first_frame_seconds, 3),
        mouth_open_range=(round(float(np.nanmin(mouth)), 3), round(float(np.nanmax(mouth)), 3)),
    )


async def test_live_session_streams_lip_synced_video_and_audio(
    headcast_server: RunningServer, artifacts_dir: Path
) -> None:
    received = await _receive(headcast_server.url)
    metrics = _analyse(received)
    (artifacts_dir / "loopback_metrics.json").write_text(
        json.dumps(asdict(metrics), indent=2) + "\n"
    )
    logger.info("loopback metrics: %s", metrics)
    summary = f"measured: {asdict(metrics)}"

    assert received.sizes == {(WIDTH, HEIGHT)}, f"frame sizes {received.sizes}; {summary}"
    assert metrics.fps >= MIN_FPS, f"video at {metrics.fps} fps over 4 s; {summary}"
    assert metrics.audio_rms_dbfs > -40.0, f"received audio is silent; {summary}"
    assert metrics.mouth_open_range[1] - metrics.mouth_open_range[0] > 0.3, (
        f"the mouth never moved; {summary}"
    )
    assert metrics.correlation >= MIN_CORRELATION, f"mouth does not follow the audio; {summary}"
    assert abs(metrics.lag_ms) <= MAX_LAG_MS, f"A/V lag {metrics.lag_ms} ms; {summary}"
    assert headcast_server.metric("headcast_chunks_total") >= RECEIVE_MEDIA_SECONDS / 1.12 - 1
    # the caller's phrases are announced as the avatar speaks them (mic voice activity)
    speech = [e for e in received.events if str(e["type"]).startswith("speech.")]
    assert speech[:2] and speech[0] == {"type": "speech.started", "wait_ms": 0}, received.events
    ended = [e for e in speech if e["type"] == "speech.ended"]
    assert ended and all(0 < int(e["duration_ms"]) < SPEECH_SECONDS * 1000 for e in ended), speech

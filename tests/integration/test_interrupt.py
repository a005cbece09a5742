"""Interrupt latency on a loopback WebRTC client: command to idle picture and silent audio.

One push session on the shared puppet server; the client receives the avatar and measures
every frame's mouth opening (``mouth_open_metric``) and every audio packet's level. Three
times -- through the WebSocket command, the ``events`` data channel and ``POST .../interrupt``
-- it pushes a long loud utterance, waits until the received mouth is open, interrupts, and
measures until the received frames show the mouth closed (and it stays closed) and the
received audio is silent (and stays silent): by wall time (arrival after the command) and
by media time (received pts after the last one received before the command). Both must be
at most 200 ms, and the hand-back from the idle loop to the engine's chunks must be no bigger
a jump than ordinary motion (``MAX_HANDBACK_JUMP``). Then the next utterance must start
cleanly: ``speech.started``, the mouth opens again, and ``speech.ended`` has the utterance's
duration. The measurements (and the
client-side A/V arrival skew, the server's own interrupt latency and per-chunk A/V send skew
from ``/metrics``, and how big a visual jump the cut and the hand-back to the engine are)
go to ``artifacts/interrupt_metrics.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytest

from headcast.pipeline.puppet import mouth_open_metric
from headcast_client import HeadcastClient, PushSocket, SessionInfo, WebRTCConnection
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 448, 768
PUSH_RATE_HZ = 16_000
VIDEO_CLOCK_HZ = 90_000
AUDIO_CLOCK_HZ = 48_000
UTTERANCE_S = 6.0
"""A loud utterance longer than the wait for an open mouth (queued under the 10 s bound)."""

NEXT_UTTERANCE_S = 1.0
MAX_INTERRUPT_LATENCY_S = 0.200

MOUTH_OPEN = 0.3
MOUTH_CLOSED = 0.05
"""``mouth_open_metric`` above / below which the received mouth counts as open / closed."""

OPEN_FRAMES = 5
"""Consecutive open-mouth frames received before interrupting (the avatar is speaking)."""

SILENT_DBFS = -50.0

SETTLE_S = 2.4
"""Wait after session.ready, so two silent chunks have played (the idle loop is captured)."""

STEP_TIMEOUT_S = 20.0
JUMP_SCALE = 8
"""Downscale of the pictures compared for visual jumps."""

HANDBACK_WINDOW_S = 3.6
"""After a cut, the engine's own chunks take over within three chunks (3.36 s); the output
must stay idle (mouth closed, audio silent) through the hand-back."""
DURATION_TOLERANCE_MS = 40
MAX_HANDBACK_JUMP = 2.0
"""Largest mean luma change (0..255, 1/8 scale) allowed where the engine takes over from the
idle loop: about the 99th percentile of ordinary frame-to-frame change on the puppet (1.6-1.9).
Without the fade-in the hand-back measured 1.5-3.1; with it, 1.0-1.6."""


def loud_voice(seconds: float, rate: int = PUSH_RATE_HZ) -> np.ndarray:
    """A steady voiced vowel (140 Hz, 6 harmonics) at about -12 dBFS: the mouth stays open."""
    t = np.arange(round(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 7))
    return (0.35 * voice / 1.6).astype(np.float32)


@dataclass
class Reception:
    """Everything received, with arrival times (``time.monotonic()``)."""

    video: list[tuple[float, int, float]] = field(default_factory=list)
    """(arrival, pts at 90 kHz, mouth opening)"""

    change: list[float] = field(default_factory=list)
    """Per video frame: mean absolute luma change from the previous frame (0..255), on a
    1/8-scale picture: how big a visual jump each frame is."""

    audio: list[tuple[float, int, float]] = field(default_factory=list)
    """(arrival, pts at 48 kHz, level in dBFS)"""


@dataclass
class InterruptMeasurement:
    via: str
    played_ms: int
    video_wall_ms: float
    video_media_ms: float
    audio_wall_ms: float
    audio_media_ms: float
    jump_at_cut: float
    """Luma change into the first idle frame (see ``Reception.change``)."""

    jump_at_handback: float
    """Largest luma change in the 3.6 s after the cut: where the engine takes over."""

    @property
    def wall_ms(self) -> float:
        return max(self.video_wall_ms, self.audio_wall_ms)

    @property
    def media_ms(self) -> float:
        return max(self.video_media_ms, self.audio_media_ms)


async def _receive(connection: WebRTCConnection, got: Reception, stop: asyncio.Event) -> None:
    previous: list[np.ndarray] = []

    async def video() -> None:
        while not stop.is_set():
            frame = await connection.video.recv()
            mouth = mouth_open_metric(frame.to_ndarray(format="rgb24"), HEIGHT, WIDTH)
            got.video.append((time.monotonic(), int(frame.pts), mouth))
            luma = frame.to_ndarray(format="gray")[::JUMP_SCALE, ::JUMP_SCALE].astype(np.float32)
            got.change.append(float(np.mean(np.abs(luma - previous[0]))) if previous else 0.0)
            previous[:] = [luma]

    async def audio() -> None:
        while not stop.is_set():
            frame = await connection.audio.recv()
            samples = frame.to_ndarray().astype(np.float64) / 32768.0
            rms = float(np.sqrt(np.mean(samples**2)))
            got.audio.append((time.monotonic(), int(frame.pts), 20 * np.log10(rms + 1e-10)))

    await asyncio.gather(video(), audio())


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {STEP_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.01)


def _mouth_open_now(got: Reception, since: int) -> bool:
    recent = [mouth for _at, _pts, mouth in got.video[since:]][-OPEN_FRAMES:]
    return len(recent) == OPEN_FRAMES and min(recent) > MOUTH_OPEN


def _idle_from(samples: list[tuple[float, int, float]], is_idle: Callable[[float], bool]) -> int:
    """Index of the first sample from which every sample is idle."""
    index = len(samples)
    while index > 0 and is_idle(samples[index - 1][2]):
        index -= 1
    if index == len(samples):
        raise AssertionError("the output is not idle at the end of the observation")
    return index


def _measure(
    got: Reception, commanded_at: float, video_mark: int, audio_mark: int
) -> tuple[float, float, float, float, float, float]:
    """(video wall, video media, audio wall, audio media) latencies in ms; the jumps."""
    _at, last_video_pts, _mouth = got.video[video_mark - 1]
    _at, last_audio_pts, _level = got.audio[audio_mark - 1]
    video = got.video[video_mark:]
    audio = got.audio[audio_mark:]
    v = _idle_from(video, lambda mouth: mouth < MOUTH_CLOSED)
    a = _idle_from(audio, lambda level: level < SILENT_DBFS)
    cut = video_mark + v
    window = round(HANDBACK_WINDOW_S * 25)
    return (
        (video[v][0] - commanded_at) * 1000,
        (video[v][1] - last_video_pts) / VIDEO_CLOCK_HZ * 1000,
        (audio[a][0] - commanded_at) * 1000,
        (audio[a][1] - last_audio_pts) / AUDIO_CLOCK_HZ * 1000,
        round(got.change[cut], 2),
        round(max(got.change[cut + 1 : cut + window], default=0.0), 2),
    )


async def _speak_and_interrupt(
    socket: PushSocket,
    connection: WebRTCConnection,
    got: Reception,
    via: str,
    interrupt: Callable[[], Awaitable[int]],
) -> InterruptMeasurement:
    start = len(got.video)
    await socket.send_audio(loud_voice(UTTERANCE_S), PUSH_RATE_HZ)
    await socket.end()
    await _until(lambda: _mouth_open_now(got, start), f"{via}: the received mouth did not open")
    socket.events.drain()  # events of earlier steps must not answer this one
    connection.events.drain()
    video_mark, audio_mark = len(got.video), len(got.audio)
    commanded_at = time.monotonic()
    played_ms = await interrupt()
    await asyncio.sleep(HANDBACK_WINDOW_S)
    latencies = _measure(got, commanded_at, video_mark, audio_mark)
    return InterruptMeasurement(via, played_ms, *latencies)


def _av_arrival_skew_ms(got: Reception) -> float:
    """Median arrival time of audio minus video for the same media time (client side)."""
    v0, a0 = got.video[0][1], got.audio[0][1]
    video_at = {round((pts - v0) / VIDEO_CLOCK_HZ * 1000): at for at, pts, _m in got.video}
    skews = [
        at - video_at[ms]
        for at, pts, _l in got.audio
        if (ms := round((pts - a0) / AUDIO_CLOCK_HZ * 1000)) in video_at
    ]
    return float(np.median(skews) * 1000)


async def test_interrupt_takes_the_output_to_idle_within_200_ms(
    headcast_server: RunningServer, artifacts_dir: Path
) -> None:
    got = Reception()
    stop = asyncio.Event()
    before = headcast_server.metrics()
    async with HeadcastClient(headcast_server.url, host_candidates=LOOPBACK_ONLY) as client:
        session: SessionInfo = await client.create_session(audio_source="push")
        connection = await client.connect_webrtc(session, events=True)
        receiver = asyncio.ensure_future(_receive(connection, got, stop))
        try:
            await connection.events.wait_for("session.ready", STEP_TIMEOUT_S)
            await asyncio.sleep(SETTLE_S)
            async with await client.push_socket(session) as socket:

                async def over_socket() -> int:
                    await socket.interrupt()
                    return int((await socket.events.wait_for("interrupted"))["played_ms"])

                async def over_channel() -> int:
                    connection.command("interrupt")
                    return int((await connection.events.wait_for("interrupted"))["played_ms"])

                async def over_http() -> int:
                    return int((await client.interrupt(session))["played_ms"])

                measurements = [
                    await _speak_and_interrupt(socket, connection, got, via, call)
                    for via, call in (
                        ("websocket", over_socket),
                        ("data channel", over_channel),
                        ("http", over_http),
                    )
                ]
                # The next utterance starts cleanly.
                start = len(got.video)
                socket.events.drain()
                await socket.send_audio(loud_voice(NEXT_UTTERANCE_S), PUSH_RATE_HZ)
                await socket.end()
                await socket.events.wait_for("speech.started", STEP_TIMEOUT_S)
                await _until(lambda: _mouth_open_now(got, start), "the mouth did not reopen")
                ended = await socket.events.wait_for("speech.ended", STEP_TIMEOUT_S)
        finally:
            stop.set()
            await client.delete_session(session)
            await connection.close()
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)

    skew_ms = _av_arrival_skew_ms(got)
    after = headcast_server.metrics()

    def delta(series: str) -> float:
        return after[series] - before.get(series, 0.0)

    interrupts = delta("headcast_interrupt_seconds_count")
    server_interrupt_ms = delta("headcast_interrupt_seconds_sum") / max(interrupts, 1) * 1000
    skew = "headcast_av_skew_seconds_bucket"
    skew_chunks = delta("headcast_av_skew_seconds_count")
    within_20_ms = delta(f'{skew}{{le="0.02"}}') - delta(f'{skew}{{le="-0.02"}}')
    within_5_ms = delta(f'{skew}{{le="0.005"}}') - delta(f'{skew}{{le="-0.005"}}')
    changes = np.asarray(got.change[1:])
    report = {
        "interrupts": [
            {**asdict(m), "wall_ms": round(m.wall_ms, 1), "media_ms": round(m.media_ms, 1)}
            for m in measurements
        ],
        "client_av_arrival_skew_ms": round(skew_ms, 1),
        "server_interrupt_latency_ms_mean": round(server_interrupt_ms, 1),
        "server_av_skew_chunks": int(skew_chunks),
        "server_av_skew_chunks_within_5_ms": int(within_5_ms),
        "server_av_skew_chunks_within_20_ms": int(within_20_ms),
        "frame_change_median": round(float(np.median(changes)), 2),
        "frame_change_p99": round(float(np.percentile(changes, 99)), 2),
        "next_utterance_duration_ms": ended["duration_ms"],
    }
    (artifacts_dir / "interrupt_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("interrupt metrics: %s", report)

    for m in measurements:
        assert m.wall_ms <= MAX_INTERRUPT_LATENCY_S * 1000, f"{m.via}: {report}"
        assert m.media_ms <= MAX_INTERRUPT_LATENCY_S * 1000, f"{m.via}: {report}"
        assert 0 < m.played_ms < UTTERANCE_S * 1000, f"{m.via}: {report}"
        assert m.jump_at_handback <= MAX_HANDBACK_JUMP, f"{m.via}: {report}"
    assert abs(ended["duration_ms"] - NEXT_UTTERANCE_S * 1000) <= DURATION_TOLERANCE_MS, report
    assert interrupts == 3, "the server measured each interrupt"
    assert server_interrupt_ms <= MAX_INTERRUPT_LATENCY_S * 1000, report
    assert skew_chunks >= 10 and within_20_ms == skew_chunks, report

"""The session scheduler on a scripted engine: pacing, padding, pairing, failures, closing.

The engine worker thread is real; the engine is ``FakeEngine`` (grey frames whose level is
the chunk index) so failures and delays happen exactly where a test puts them, and the wall
clock runs 5x fast so a 1.12 s chunk takes 0.224 s.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from headcast.pipeline.engine import EngineWorker
from headcast.pipeline.media import CHUNK_FRAMES, CHUNK_SAMPLES, Avatar
from headcast.streaming.clock import CHUNK_AUDIO_PACKETS
from headcast.streaming.observer import ChunkProblem, NullObserver
from headcast.streaming.session import AvatarSession
from headcast.streaming.session_config import PrepareFailed, SessionConfig
from tests.conftest import FakeEngine, grey_level
from tests.unit.streaming.conftest import FastClock

HEIGHT, WIDTH = 96, 64
RECV_TIMEOUT_S = 10.0
GREY_TOLERANCE = 3
"""RGB -> yuv420p -> RGB round trip error on a flat grey frame."""


class RecordingObserver(NullObserver):
    def __init__(self) -> None:
        self.chunks: list[tuple[float, float]] = []
        self.problems: list[ChunkProblem] = []
        self.first_frame: list[float] = []

    def on_chunk(self, compute_seconds: float, rtf: float) -> None:
        self.chunks.append((compute_seconds, rtf))

    def on_chunk_problem(self, problem: ChunkProblem) -> None:
        self.problems.append(problem)

    def on_first_frame(self, seconds: float) -> None:
        self.first_frame.append(seconds)


def _avatar() -> Avatar:
    return Avatar("test", np.full((HEIGHT, WIDTH, 3), 200, dtype=np.uint8))


async def _make_session(
    worker: EngineWorker, observer: RecordingObserver, **config: object
) -> AvatarSession:
    session = AvatarSession(
        worker,
        _avatar(),
        SessionConfig(height=HEIGHT, width=WIDTH, **config),  # type: ignore[arg-type]
        observer=observer,
        clock=FastClock(),
    )
    await session.wait_prepared(timeout=RECV_TIMEOUT_S)
    return session


async def _recv_chunks(
    session: AvatarSession, chunks: int
) -> tuple[list[av.VideoFrame], list[av.AudioFrame]]:
    async def take(track: object, count: int) -> list:
        return [await asyncio.wait_for(track.recv(), RECV_TIMEOUT_S) for _ in range(count)]  # type: ignore[attr-defined]

    video, audio = await asyncio.gather(
        take(session.video_track, chunks * CHUNK_FRAMES),
        take(session.audio_track, chunks * CHUNK_AUDIO_PACKETS),
    )
    return video, audio


def _grey_of_chunk(video: list[av.VideoFrame], index: int) -> list[int]:
    frames = video[index * CHUNK_FRAMES : (index + 1) * CHUNK_FRAMES]
    return [int(np.median(f.to_ndarray(format="rgb24"))) for f in frames]


def _pcm(audio: list[av.AudioFrame]) -> np.ndarray:
    return np.concatenate([f.to_ndarray().reshape(-1) for f in audio]).astype(np.float32) / 32767


async def test_idle_session_streams_silence_padded_chunks_in_order(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    engine = FakeEngine(HEIGHT, WIDTH)
    observer = RecordingObserver()
    session = await _make_session(start_worker(engine), observer)
    session.start()
    video, audio = await _recv_chunks(session, 3)
    await session.close("test over")

    assert [f.pts for f in video] == [3600 * n for n in range(3 * CHUNK_FRAMES)]
    assert [f.pts for f in audio] == [960 * m for m in range(3 * CHUNK_AUDIO_PACKETS)]
    assert all((f.width, f.height, f.format.name) == (WIDTH, HEIGHT, "yuv420p") for f in video)
    assert all(
        (f.samples, f.sample_rate, f.format.name, f.layout.name) == (960, 48_000, "s16", "mono")
        for f in audio
    )
    for k in range(3):
        assert all(abs(g - grey_level(k)) <= GREY_TOLERANCE for g in _grey_of_chunk(video, k)), k
    assert not np.any(_pcm(audio)), "no audio was sent in, so silence must come out"
    jobs = engine.sessions[0].jobs
    assert [j.index for j in jobs[:3]] == [0, 1, 2]
    assert all(j.audio.shape == (CHUNK_SAMPLES,) and not np.any(j.audio) for j in jobs)
    assert observer.problems == []
    assert len(observer.chunks) >= 3 and len(observer.first_frame) == 1


async def test_chunk_audio_drives_the_engine_and_goes_out_with_its_frames(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    engine = FakeEngine(HEIGHT, WIDTH)
    session = await _make_session(start_worker(engine), RecordingObserver())
    t = np.arange(CHUNK_SAMPLES) / 16_000
    tone = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    session.push_audio(tone)  # exactly chunk 0's worth, before the first take
    session.start()
    video, audio = await _recv_chunks(session, 2)
    await session.close("test over")

    np.testing.assert_array_equal(engine.sessions[0].jobs[0].audio, tone)
    assert not np.any(engine.sessions[0].jobs[1].audio)
    out = _pcm(audio)
    chunk0, chunk1 = out[: 56 * 960], out[56 * 960 :]
    assert abs(np.sqrt(np.mean(chunk0[100:-100] ** 2)) - 0.5 / np.sqrt(2)) < 0.01
    # chunk 1 is silent apart from the upsampler's 25-sample (0.5 ms) tail of chunk 0
    assert np.max(np.abs(chunk1[50:])) == 0.0
    assert all(abs(g - grey_level(0)) <= GREY_TOLERANCE for g in _grey_of_chunk(video, 0))


async def test_a_failed_chunk_goes_out_idle_and_the_session_keeps_going(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    engine = FakeEngine(HEIGHT, WIDTH, fail_on={1})
    observer = RecordingObserver()
    session = await _make_session(start_worker(engine), observer)
    session.start()
    video, audio = await _recv_chunks(session, 3)
    assert not session.closed
    await session.close("test over")

    assert all(abs(g - grey_level(0)) <= GREY_TOLERANCE for g in _grey_of_chunk(video, 1)), (
        "a failed chunk holds the last good frame"
    )
    assert all(abs(g - grey_level(2)) <= GREY_TOLERANCE for g in _grey_of_chunk(video, 2))
    assert len(audio) == 3 * CHUNK_AUDIO_PACKETS
    assert observer.problems == [ChunkProblem.ENGINE_ERROR]


async def _wait_for_problem(observer: RecordingObserver, count: int) -> None:
    for _ in range(round(RECV_TIMEOUT_S / 0.01)):
        if len(observer.problems) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} chunk problems, saw {observer.problems}")


async def test_a_late_chunk_goes_out_idle_on_time_and_its_result_is_dropped(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    gate = threading.Event()
    engine = FakeEngine(HEIGHT, WIDTH, gates={1: gate})
    observer = RecordingObserver()
    session = await _make_session(start_worker(engine), observer)
    session.start()
    try:
        await _wait_for_problem(observer, 1)  # chunk 1 missed its deadline: sent idle
    finally:
        gate.set()
    video, _ = await _recv_chunks(session, 3)
    await session.close("test over")

    assert observer.problems == [ChunkProblem.LATE]
    assert all(abs(g - grey_level(0)) <= GREY_TOLERANCE for g in _grey_of_chunk(video, 1))
    assert all(abs(g - grey_level(2)) <= GREY_TOLERANCE for g in _grey_of_chunk(video, 2))
    assert [f.pts for f in video] == [3600 * n for n in range(84)]
    assert len(observer.chunks) >= 2
    assert session.chunks_generated == len(observer.chunks)


async def test_a_full_mailbox_skips_the_chunk_instead_of_blocking(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    gate = threading.Event()
    engine = FakeEngine(HEIGHT, WIDTH, gates={0: gate})
    observer = RecordingObserver()
    session = await _make_session(start_worker(engine), observer, mailbox_size=1)
    session.start()
    try:
        await _wait_for_problem(observer, 2)
        # chunk 0 is stuck in the engine; chunk 1 could not even be submitted
        assert observer.problems[:2] == [ChunkProblem.LATE, ChunkProblem.ENGINE_BUSY]
    finally:
        gate.set()
    video, _ = await _recv_chunks(session, 5)  # the session kept its pace throughout
    await session.close("test over")
    assert [f.pts for f in video] == [3600 * n for n in range(5 * CHUNK_FRAMES)]
    assert observer.chunks, "no chunk was generated after the engine freed up"


async def test_close_is_idempotent_and_releases_everything(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    engine = FakeEngine(HEIGHT, WIDTH)
    worker = start_worker(engine)
    closed: list[str] = []
    session = AvatarSession(
        worker,
        _avatar(),
        SessionConfig(height=HEIGHT, width=WIDTH),
        clock=FastClock(),
        on_closed=lambda _s, reason: closed.append(reason),
    )
    await session.wait_prepared(timeout=RECV_TIMEOUT_S)
    session.start()
    await _recv_chunks(session, 1)
    await asyncio.gather(session.close("first"), session.close("second"))
    await session.close("third")

    assert closed == ["first"]
    assert session.close_reason == "first"
    with pytest.raises(MediaStreamError):
        await session.video_track.recv()
    with pytest.raises(MediaStreamError):
        await session.audio_track.recv()
    # the engine state is released on the device thread
    for _ in range(100):
        if engine.closed:
            break
        await asyncio.sleep(0.02)
    assert engine.closed == engine.sessions
    pending = [t for t in asyncio.all_tasks() if t.get_name().startswith("session-")]
    assert pending == []


async def test_a_failed_preparation_is_reported(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    engine = FakeEngine(HEIGHT, WIDTH, prepare_error=ValueError("no face found"))
    session = AvatarSession(
        start_worker(engine), _avatar(), SessionConfig(height=HEIGHT, width=WIDTH)
    )
    with pytest.raises(PrepareFailed, match="no face found"):
        await session.wait_prepared(timeout=RECV_TIMEOUT_S)
    await session.close("prepare failed")


def test_config_rejects_a_budget_that_leaves_no_compute_time() -> None:
    with pytest.raises(ValueError, match="latency_budget_s"):
        SessionConfig(height=HEIGHT, width=WIDTH, latency_budget_s=0.2)


async def test_a_mic_sessions_speech_is_announced_when_it_plays(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    session = await _make_session(start_worker(FakeEngine(HEIGHT, WIDTH)), RecordingObserver())
    events: list[dict[str, object]] = []
    session.subscribe_events(lambda event: events.append(event.to_dict()))
    speech_s = 0.8
    t = np.arange(round(speech_s * 16_000)) / 16_000
    session.push_audio((0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32))  # the mic
    session.start()
    await _recv_chunks(session, 2)  # both marks fall in chunk 0, played by now
    await session.close("test over")

    speech = [e for e in events if str(e["type"]).startswith("speech.")]
    assert speech == [
        {"type": "speech.started", "wait_ms": 0},
        {"type": "speech.ended", "duration_ms": 800},
    ]

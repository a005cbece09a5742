"""``idle_mode: loop`` in a whole session: engine time only for speech.

Push sessions on the real engine worker around ``FakeEngine`` (flat grey frames whose level
encodes the chunk index), the wall clock 5x fast, and a real one-slot pool
(``server.generation_slots``): a silent session generates its two rest chunks and then plays
chunk 1 as its loop with no engine job; speech takes the slot, re-seeds the engine from the
loop frames on screen with the silence that played, goes out as generated, and gives the
slot back; speech waits while another session holds the slot (``speech.started`` says how
long) and is dropped with a ``speech_wait_timeout`` error past the bound, the session going
on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from headcast.pipeline.engine import EngineWorker
from headcast.pipeline.media import CHUNK_FRAMES, CHUNK_SAMPLES, RESEED_FRAMES, Avatar
from headcast.server.generation_slots import SessionSlot, SlotPool
from headcast.streaming.generation_gate import LOOP_CHUNKS, IdleMode
from headcast.streaming.observer import NullObserver
from headcast.streaming.session import AvatarSession
from headcast.streaming.session_config import AudioSource, SessionConfig
from tests.conftest import FakeEngine, FakeState, grey_level
from tests.unit.streaming.conftest import FastClock

HEIGHT, WIDTH = 96, 64
WAIT_S = 15.0
GREY_TOLERANCE = 3
WAIT_MAX_S = 2.5
"""Media seconds speech may wait for the slot in these tests (0.5 s of wall time)."""


class WaitRecorder(NullObserver):
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.dropped = 0
        self.chunks = 0

    def on_chunk(self, compute_seconds: float, rtf: float) -> None:
        self.chunks += 1

    def on_speech_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def on_speech_dropped(self) -> None:
        self.dropped += 1


class LoopSession:
    """A push session in loop mode, its events, and the grey of every frame it sent."""

    def __init__(self, session: AvatarSession, engine: FakeEngine) -> None:
        self.session = session
        self.engine = engine
        self.events: list[dict[str, Any]] = []
        self.greys: list[int] = []
        session.subscribe_events(lambda event: self.events.append(event.to_dict()))
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        # Each track from its own task, as aiortc's senders pull them: the tracks wait for
        # each other when one falls behind, so one task pulling both in turn would stall.
        async def video() -> None:
            while True:
                frame = await self.session.video_track.recv()
                self.greys.append(int(np.median(frame.to_ndarray(format="rgb24"))))

        async def audio() -> None:
            while True:
                await self.session.audio_track.recv()

        await asyncio.gather(video(), audio())

    @property
    def state(self) -> FakeState:
        return self.engine.sessions[0]

    def stats(self) -> dict[int, dict[str, Any]]:
        return {e["index"]: e for e in self.events if e["type"] == "chunk.stats"}

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def until(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what} within {WAIT_S} s; events: {self.events}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.session.close("test over")


async def _started(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> tuple[LoopSession, SlotPool, WaitRecorder]:
    """A started loop session on a fake engine with a one-slot pool of its own."""
    pool = SlotPool(1)
    engine = FakeEngine(HEIGHT, WIDTH)
    observer = WaitRecorder()
    loop = await _loop_session(start_worker(engine), engine, pool.slot(), observer)
    loop.session.start()
    return loop, pool, observer


async def _loop_session(
    worker: EngineWorker, engine: FakeEngine, slot: SessionSlot, observer: WaitRecorder
) -> LoopSession:
    session = AvatarSession(
        worker,
        Avatar("test", np.full((HEIGHT, WIDTH, 3), 200, dtype=np.uint8)),
        SessionConfig(
            height=HEIGHT, width=WIDTH, idle_mode=IdleMode.LOOP, speech_wait_max_s=WAIT_MAX_S
        ),
        audio_source=AudioSource.PUSH,
        observer=observer,
        slot=slot,
        clock=FastClock(),
    )
    await session.wait_prepared(timeout=WAIT_S)
    return LoopSession(session, engine)


def _speech(chunks: int) -> np.ndarray:
    t = np.arange(chunks * CHUNK_SAMPLES) / 16_000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def test_a_silent_session_plays_its_rest_chunk_and_takes_no_engine_time(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    loop, pool, _observer = await _started(start_worker)
    await loop.until("six chunks out", lambda: len(loop.stats()) >= 6)
    busy = pool.busy
    await loop.until("five chunks sent", lambda: len(loop.greys) >= 5 * CHUNK_FRAMES)
    await loop.close()

    assert [job.index for job in loop.state.jobs] == list(range(LOOP_CHUNKS))
    assert busy == 0, "the slot went back after the rest chunks"
    stats = loop.stats()
    assert all(stats[k]["compute_ms"] is not None for k in range(LOOP_CHUNKS))
    assert all(stats[k]["problem"] == "loop" and stats[k]["compute_ms"] is None for k in (2, 3, 4))
    loop_frames = loop.greys[LOOP_CHUNKS * CHUNK_FRAMES : 5 * CHUNK_FRAMES]
    assert all(abs(g - grey_level(LOOP_CHUNKS - 1)) <= GREY_TOLERANCE for g in loop_frames)


async def test_speech_takes_the_slot_re_seeds_from_the_loop_and_gives_it_back(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    loop, pool, observer = await _started(start_worker)
    await loop.until("chunk 3 out", lambda: 3 in loop.stats())
    loop.session.push_audio(_speech(2))
    loop.session.end_of_speech()
    await loop.until("speech over", lambda: loop.of_type("speech.ended"))
    speech_chunks = [job.index for job in loop.state.jobs if np.any(job.audio)]
    last = speech_chunks[-1]
    await loop.until("the loop again", lambda: last + 2 in loop.stats())
    busy = pool.busy
    await loop.close()

    first = speech_chunks[0]
    assert len(speech_chunks) == 2 and speech_chunks == [first, first + 1]
    assert [j.index for j in loop.state.jobs] == [*range(LOOP_CHUNKS), first, first + 1]
    ((before, reseed),) = loop.state.reseeds
    assert before == LOOP_CHUNKS, "the re-seed came right before the first speech chunk"
    assert reseed.frames.shape == (RESEED_FRAMES, HEIGHT, WIDTH, 3)
    loop_grey = grey_level(LOOP_CHUNKS - 1)
    assert np.all(np.abs(reseed.frames.astype(int) - loop_grey) <= GREY_TOLERANCE), (
        "the engine re-seeds from the loop frames on screen"
    )
    assert reseed.silent_samples == (first - LOOP_CHUNKS) * CHUNK_SAMPLES
    stats = loop.stats()
    assert stats[first]["compute_ms"] is not None and stats[first + 1]["compute_ms"] is not None
    assert stats[last + 1]["problem"] == "loop"
    started = loop.of_type("speech.started")
    assert started == [{"type": "speech.started", "wait_ms": 0}]
    assert observer.waits == [0.0]
    assert busy == 0, "silent again: the slot went back"


async def test_speech_waits_for_a_busy_slot_and_is_dropped_past_the_bound(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    loop, pool, observer = await _started(start_worker)
    await loop.until("rest chunks made", lambda: LOOP_CHUNKS in loop.stats())
    other = pool.slot()
    assert other.request(), "another session speaks: the only slot is busy"
    # 1. speech that gets the slot after a wait
    loop.session.push_audio(_speech(1))
    loop.session.end_of_speech()
    await loop.until("waiting", lambda: pool.waiting == 1)
    await asyncio.sleep(0.3)  # 1.5 media seconds: inside the bound
    other.release()
    await loop.until("speech started", lambda: loop.of_type("speech.started"))
    (started,) = loop.of_type("speech.started")
    # 2. speech that waits past the bound
    await loop.until("slot back", lambda: pool.busy == 0)
    assert other.request()
    loop.session.push_audio(_speech(1))
    loop.session.end_of_speech()
    await loop.until("dropped", lambda: loop.of_type("error"))
    dropped_at = len(loop.state.jobs)
    queued_after_drop = loop.session.queued_ms
    other.release()
    # 3. the session goes on: the next speech plays
    loop.session.push_audio(_speech(1))
    loop.session.end_of_speech()
    await loop.until("next speech", lambda: len(loop.of_type("speech.started")) == 2)
    await loop.close()

    assert 1000 <= started["wait_ms"] <= WAIT_MAX_S * 1000, started
    assert observer.waits[0] * 1000 == pytest.approx(started["wait_ms"], abs=1)
    (error,) = loop.of_type("error")
    assert error["code"] == "speech_wait_timeout" and "dropped" in error["message"]
    assert observer.dropped == 1 and queued_after_drop == 0
    speech_jobs = [job for job in loop.state.jobs if np.any(job.audio)]
    assert len(speech_jobs) == 2, "the dropped speech never reached the engine"
    assert dropped_at == LOOP_CHUNKS + 1
    assert loop.of_type("speech.started")[1]["wait_ms"] == 0

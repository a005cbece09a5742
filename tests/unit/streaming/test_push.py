"""Push intake and interrupt: PCM16 decoding, the utterance ledger, and a push session on a
scripted engine (events in played order, the queue bound, the cut to idle-loop filler).

The session tests run the real engine worker around ``FakeEngine`` (flat grey frames whose
level encodes the chunk index) with the wall clock 5x fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from headcast.pipeline.engine import EngineWorker
from headcast.pipeline.media import CHUNK_FRAMES, CHUNK_SAMPLES, Avatar
from headcast.streaming.clock import (
    AUDIO_PACKET_SAMPLES,
    CHUNK_AUDIO_PACKETS,
    VIDEO_TICKS_PER_FRAME,
)
from headcast.streaming.events import ErrorCode, Event, ProtocolError
from headcast.streaming.idle import EASE_IN_FRAMES
from headcast.streaming.observer import NullObserver
from headcast.streaming.push import PushDecoder, PushFormat, UtteranceLedger
from headcast.streaming.session import AvatarSession
from headcast.streaming.session_config import AudioSource, SessionConfig
from tests.conftest import FakeEngine, grey_level
from tests.unit.streaming.conftest import FastClock

HEIGHT, WIDTH = 96, 64
RATE_16K = 16_000
RECV_TIMEOUT_S = 10.0
GREY_TOLERANCE = 3
LOUD = 0.3


def _pcm16(samples: np.ndarray) -> bytes:
    return np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (LOUD * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# -- PushFormat and PushDecoder --------------------------------------------------------------


def test_push_format_accepts_16_24_48_khz_only() -> None:
    for rate in (16_000, 24_000, 48_000):
        assert PushFormat(sample_rate=rate).sample_rate == rate
    with pytest.raises(ValueError, match="16000, 24000, 48000"):
        PushFormat(sample_rate=44_100)
    with pytest.raises(ValueError, match="one chunk"):
        PushFormat(max_queued_s=0.5)


def test_16_khz_frames_decode_exactly() -> None:
    decoder = PushDecoder(PushFormat())
    samples = np.array([0, 16384, -32768, 32767], dtype="<i2")
    decoded = decoder.decode(samples.tobytes())
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, [0.0, 0.5, -1.0, 32767 / 32768])


@pytest.mark.parametrize("rate", [24_000, 48_000])
def test_24_and_48_khz_frames_are_resampled_without_losing_samples(rate: int) -> None:
    decoder = PushDecoder(PushFormat(sample_rate=rate))
    pcm = _pcm16(_tone(1.0, rate))
    frame_bytes = rate // 50 * 2  # 20 ms frames
    parts = [decoder.decode(pcm[i : i + frame_bytes]) for i in range(0, len(pcm), frame_bytes)]
    out = np.concatenate([*parts, decoder.flush()])
    assert out.size == RATE_16K, "1 s in, 16,000 samples out once the resampler is flushed"
    crossings = np.count_nonzero(np.diff(np.signbit(out[800:-800])))
    assert abs(crossings / 2 / (out.size - 1600) * RATE_16K - 440) < 5, "the tone keeps its pitch"
    assert abs(float(np.sqrt(np.mean(out[800:-800] ** 2))) - LOUD / np.sqrt(2)) < 0.01


def test_bad_frames_are_refused_with_their_codes() -> None:
    decoder = PushDecoder(PushFormat(max_frame_bytes=1000))
    with pytest.raises(ProtocolError) as odd:
        decoder.check(b"\x00" * 321)
    assert odd.value.code is ErrorCode.BAD_AUDIO_FRAME and "321 bytes" in odd.value.message
    with pytest.raises(ProtocolError) as large:
        decoder.check(b"\x00" * 1002)
    assert large.value.code is ErrorCode.FRAME_TOO_LARGE and "split" in large.value.message
    decoder.check(b"\x00" * 1000)
    with pytest.raises(ProtocolError) as empty:
        decoder.check(b"")
    assert empty.value.code is ErrorCode.BAD_AUDIO_FRAME and "at least one" in empty.value.message
    decoder.check(b"\x00\x00")


# -- UtteranceLedger ---------------------------------------------------------------------------


def test_an_utterance_split_across_chunks_lands_where_its_samples_are_played() -> None:
    ledger = UtteranceLedger()
    ledger.pushed_samples(CHUNK_SAMPLES + 5_000)  # opens an utterance at intake position 0
    assert ledger.take_limit(CHUNK_SAMPLES + 5_000) == CHUNK_SAMPLES
    start = ledger.on_take(2, CHUNK_SAMPLES)
    assert [(m.started, m.media_sample) for m in start] == [(True, 2 * CHUNK_SAMPLES)]
    assert ledger.take_limit(5_000) == 0, "an open utterance's partial chunk waits"
    assert ledger.on_take(3, 0) == []
    ledger.pushed_samples(1_000)
    assert ledger.end()
    assert not ledger.end(), "nothing open to end"
    assert ledger.take_limit(6_000) == 6_000, "an ended utterance is taken to its last sample"
    (end,) = ledger.on_take(4, 6_000)
    assert (end.started, end.media_sample) == (False, 4 * CHUNK_SAMPLES + 6_000)
    # 17,920 samples in chunk 2, a chunk of silence (3), then 6,000 in chunk 4.
    assert end.duration_ms == round((2 * CHUNK_SAMPLES + 6_000) / 16)


def test_an_end_after_all_audio_was_taken_ends_at_the_last_sample_played() -> None:
    ledger = UtteranceLedger()
    ledger.pushed_samples(CHUNK_SAMPLES)
    (start,) = ledger.on_take(1, CHUNK_SAMPLES)
    assert start.started and start.media_sample == CHUNK_SAMPLES
    assert ledger.on_take(2, 0) == []
    ledger.end()
    assert ledger.take_limit(0) == 0
    (end,) = ledger.on_take(3, 0)
    assert end.media_sample == 2 * CHUNK_SAMPLES and end.duration_ms == 1120


def test_a_new_utterance_starts_on_a_chunk_boundary_after_an_ended_one() -> None:
    ledger = UtteranceLedger()
    ledger.pushed_samples(1_000)
    ledger.end()
    ledger.pushed_samples(CHUNK_SAMPLES)  # the next utterance, already queued
    assert ledger.take_limit(CHUNK_SAMPLES + 1_000) == 1_000
    marks = ledger.on_take(0, 1_000)
    assert [(m.started, m.media_sample) for m in marks] == [(True, 0), (False, 1_000)]
    assert ledger.take_limit(CHUNK_SAMPLES) == CHUNK_SAMPLES
    (start,) = ledger.on_take(1, CHUNK_SAMPLES)
    assert (start.started, start.media_sample) == (True, CHUNK_SAMPLES)
    ledger.clear()
    assert not ledger.in_utterance and ledger.pushed == ledger.taken


# -- a push session on the scripted engine -------------------------------------------------------


@dataclass
class Recorder(NullObserver):
    interrupts: list[float] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    skews: list[float] = field(default_factory=list)
    queued: list[float] = field(default_factory=list)
    activity: int = 0

    def on_interrupt(self, latency_s: float) -> None:
        self.interrupts.append(latency_s)

    def on_frames_dropped(self, count: int) -> None:
        self.dropped.append(count)

    def on_av_skew(self, skew_s: float) -> None:
        self.skews.append(skew_s)

    def on_audio_queued(self, queued_s: float) -> None:
        self.queued.append(queued_s)

    def on_activity(self) -> None:
        self.activity += 1


@dataclass
class Received:
    video: list[tuple[int, int]] = field(default_factory=list)
    """(frame index, median grey)"""

    audio: list[tuple[int, float]] = field(default_factory=list)
    """(packet index, peak level)"""

    events: list[dict[str, object]] = field(default_factory=list)


async def _push_session(
    worker: EngineWorker, observer: Recorder, **push: object
) -> tuple[AvatarSession, Received]:
    session = AvatarSession(
        worker,
        Avatar("test", np.full((HEIGHT, WIDTH, 3), 200, dtype=np.uint8)),
        SessionConfig(height=HEIGHT, width=WIDTH),
        audio_source=AudioSource.PUSH,
        push_format=PushFormat(**push),  # type: ignore[arg-type]
        observer=observer,
        clock=FastClock(),
    )
    await session.wait_prepared(timeout=RECV_TIMEOUT_S)
    got = Received()
    session.subscribe_events(lambda event: got.events.append(_as_dict(event)))
    return session, got


def _as_dict(event: Event) -> dict[str, object]:
    return event.to_dict()


async def _receive(session: AvatarSession, got: Received, frames: int) -> None:
    async def video() -> None:
        while len(got.video) < frames:
            frame = await asyncio.wait_for(session.video_track.recv(), RECV_TIMEOUT_S)
            grey = int(np.median(frame.to_ndarray(format="rgb24")))
            got.video.append((int(frame.pts) // VIDEO_TICKS_PER_FRAME, grey))

    async def audio() -> None:
        while len(got.audio) < frames * CHUNK_AUDIO_PACKETS // CHUNK_FRAMES:
            packet = await asyncio.wait_for(session.audio_track.recv(), RECV_TIMEOUT_S)
            peak = float(np.abs(packet.to_ndarray()).max()) / 32767
            got.audio.append((int(packet.pts) // AUDIO_PACKET_SAMPLES, peak))

    await asyncio.gather(video(), audio())


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(2_000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("condition not met within 10 s")


async def test_pushed_speech_plays_with_events_in_played_order(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    observer = Recorder()
    session, got = await _push_session(
        start_worker(FakeEngine(HEIGHT, WIDTH)), observer, sample_rate=24_000
    )
    pcm = _pcm16(_tone(2.0, 24_000))
    queued = [session.push_pcm16(pcm[i : i + 4_800]) for i in range(0, len(pcm), 4_800)]
    session.end_of_speech()
    assert queued[0] == 99 and queued[1] == 199, "queued_ms grows by 100 ms a frame"
    assert queued[-1] == 1999, "the last millisecond waits in the resampler until audio.end"
    session.start()
    await _receive(session, got, 4 * CHUNK_FRAMES)
    await session.close("test over")

    kinds = [e["type"] for e in got.events]
    assert (
        kinds.index("session.ready") < kinds.index("speech.started") < kinds.index("speech.ended")
    )
    (ended,) = [e for e in got.events if e["type"] == "speech.ended"]
    assert abs(int(ended["duration_ms"]) - 2000) <= 1  # type: ignore[call-overload]
    stats = [e for e in got.events if e["type"] == "chunk.stats"]
    assert [e["index"] for e in stats][:4] == [0, 1, 2, 3]
    assert stats[0]["queued_ms"] == 2000 - 1120, "chunk 0 took 1.12 s of the 2 s queued"
    assert all(e["problem"] is None and e["rtf"] is not None for e in stats)
    loud = [index for index, peak in got.audio if peak > 0.1]
    # 2 s from media time 0; the resamplers' ~1.5 ms delay reaches into packet 100.
    assert loud[0] == 0 and loud[-1] in (99, 100) and len(loud) == loud[-1] + 1
    assert observer.activity >= len(queued) and len(observer.queued) == len(queued) + 1
    assert len(observer.skews) >= 3 and all(abs(s) < 0.1 for s in observer.skews)


async def test_the_queue_bound_refuses_whole_frames_and_interrupt_empties_it(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    session, got = await _push_session(
        start_worker(FakeEngine(HEIGHT, WIDTH)), Recorder(), max_queued_s=1.5
    )
    frame = _pcm16(_tone(0.5, RATE_16K))
    assert [session.push_pcm16(frame) for _ in range(3)] == [500, 1000, 1500]
    with pytest.raises(ProtocolError) as full:
        session.push_pcm16(frame)
    assert full.value.code is ErrorCode.AUDIO_BUFFER_FULL
    assert "1500 ms" in full.value.message and session.queued_ms == 1500
    session.handle_text('{"type": "interrupt"}')
    assert session.queued_ms == 0
    assert got.events[-1] == {"type": "interrupted", "played_ms": 0}
    assert session.push_pcm16(frame) == 500
    await session.close("test over")


async def test_a_mic_session_refuses_pushed_audio(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    session = AvatarSession(
        start_worker(FakeEngine(HEIGHT, WIDTH)),
        Avatar("test", np.full((HEIGHT, WIDTH, 3), 200, dtype=np.uint8)),
        SessionConfig(height=HEIGHT, width=WIDTH),
    )
    for push in (lambda: session.push_pcm16(b"\x00\x00"), session.end_of_speech):
        with pytest.raises(ProtocolError) as refused:
            push()
        assert refused.value.code is ErrorCode.NOT_PUSH_SESSION
        assert '"audio_source": "push"' in refused.value.message
    session.handle_text('{"type": "keep_alive"}')
    await session.close("test over")


async def test_interrupt_cuts_to_the_idle_loop_at_once_and_the_timeline_stays_whole(
    start_worker: Callable[[FakeEngine], EngineWorker],
) -> None:
    observer = Recorder()
    session, got = await _push_session(start_worker(FakeEngine(HEIGHT, WIDTH)), observer)
    session.start()
    receiver = asyncio.ensure_future(_receive(session, got, 8 * CHUNK_FRAMES))
    # Chunks 0 and 1 are silent (chunk 1, silence after silence, becomes the idle loop);
    # pushed while chunk 0 plays, the speech lands in chunks 2 to 4.
    await _until(lambda: len(got.video) > 10)
    session.push_pcm16(_pcm16(_tone(3.0, RATE_16K)))
    session.end_of_speech()
    await _until(lambda: len(got.video) > 3 * CHUNK_FRAMES + 10)
    last_played = got.video[-1][0]
    event = session.interrupt()
    await receiver
    await session.close("test over")

    frames = [index for index, _grey in got.video]
    packets = [index for index, _peak in got.audio]
    assert frames == list(range(len(frames))) and packets == list(range(len(packets))), (
        "no frame or packet is lost or repeated across the cut"
    )
    greys = dict(got.video)
    cut = next(n for n in range(last_played + 1, len(frames)) if greys[n] != grey_level(3))
    assert cut - last_played <= 2, "the first idle frame follows the command within two frames"
    idle = [n for n in range(cut, 5 * CHUNK_FRAMES)]
    assert all(abs(greys[n] - grey_level(1)) <= GREY_TOLERANCE for n in idle), (
        "from the cut to the chunks taken after the interrupt: the idle loop (chunk 1)"
    )
    # The hand-back: the engine's first chunk after the filler fades in from the loop frame
    # on screen over EASE_IN_FRAMES frames, then plays as generated.
    handback = next(
        n
        for n in range(5 * CHUNK_FRAMES, len(frames))
        if abs(greys[n] - grey_level(1)) > GREY_TOLERANCE
    )
    assert handback % CHUNK_FRAMES == 0, "the engine takes over at a chunk boundary"
    start, target = grey_level(1), grey_level(handback // CHUNK_FRAMES)
    for i in range(EASE_IN_FRAMES):
        expected = start + (i + 1) / (EASE_IN_FRAMES + 1) * (target - start)
        assert abs(greys[handback + i] - expected) <= GREY_TOLERANCE, (i, greys[handback + i])
    assert abs(greys[handback + EASE_IN_FRAMES] - target) <= GREY_TOLERANCE
    peaks = dict(got.audio)
    audio_cut = cut * CHUNK_AUDIO_PACKETS // CHUNK_FRAMES
    assert all(peaks[m] > 0.1 for m in range(2 * CHUNK_AUDIO_PACKETS, audio_cut - 2))
    assert all(peaks[m] == 0.0 for m in range(audio_cut + 1, len(packets))), "silent after"
    assert abs(event.played_ms - (cut - 2 * CHUNK_FRAMES) * 40) <= 80
    kinds = [e["type"] for e in got.events]
    assert "speech.started" in kinds and "speech.ended" not in kinds
    assert {"type": "interrupted", "played_ms": event.played_ms} in got.events
    assert len(observer.interrupts) == 1 and observer.interrupts[0] < 0.2
    assert sum(observer.dropped) >= CHUNK_FRAMES - 10
    filler = [e for e in got.events if e["type"] == "chunk.stats" and e["problem"]]
    assert filler and {e["problem"] for e in filler} == {"interrupted"}

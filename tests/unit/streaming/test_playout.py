"""``ChunkPlayout`` alone: chunks fed on the media clock, stale conversions dropped, the cut
and the filler that continues the timeline from it, with no engine and no scheduler."""

from __future__ import annotations

import asyncio

import numpy as np

from headcast.pipeline.media import CHUNK_FRAMES, CHUNK_SAMPLES, SAMPLES_PER_FRAME
from headcast.streaming.clock import (
    AUDIO_PACKET_SAMPLES,
    CHUNK_AUDIO_PACKETS,
    VIDEO_TICKS_PER_FRAME,
)
from headcast.streaming.interrupt_state import InterruptState
from headcast.streaming.observer import NullObserver
from headcast.streaming.playout import INTERRUPT_HEAD_FRAMES, INTERRUPT_HEAD_PACKETS, ChunkPlayout
from headcast.streaming.session_config import SessionConfig
from tests.unit.streaming.conftest import FastClock

HEIGHT, WIDTH = 32, 48
CONFIG = SessionConfig(height=HEIGHT, width=WIDTH)
PAST_S = 10.0
"""How far in the past media time 0 is set, so every frame is due at once."""
RECV_TIMEOUT_S = 5.0


def _frames(level: int) -> np.ndarray:
    return np.full((CHUNK_FRAMES, HEIGHT, WIDTH, 3), level, dtype=np.uint8)  # [28, H, W, 3]


def _playout(state: InterruptState, sent: list[int]) -> ChunkPlayout:
    clock = FastClock()
    playout = ChunkPlayout(
        np.full((HEIGHT, WIDTH, 3), 200, dtype=np.uint8),
        CONFIG,
        state,
        clock=clock,
        observer=NullObserver(),
        on_frame_sent=lambda frame_index, _at: sent.append(frame_index),
    )
    playout.start(clock.now() - PAST_S)
    return playout


async def _video(playout: ChunkPlayout, count: int) -> list[int]:
    frames = [
        await asyncio.wait_for(playout.video_track.recv(), RECV_TIMEOUT_S) for _ in range(count)
    ]
    return [int(frame.pts) // VIDEO_TICKS_PER_FRAME for frame in frames]


async def _audio(playout: ChunkPlayout, count: int) -> list[int]:
    packets = [
        await asyncio.wait_for(playout.audio_track.recv(), RECV_TIMEOUT_S) for _ in range(count)
    ]
    return [int(packet.pts) // AUDIO_PACKET_SAMPLES for packet in packets]


async def test_a_chunk_goes_out_whole_and_moves_the_cursor() -> None:
    state, sent = InterruptState(), []
    playout = _playout(state, sent)
    assert await playout.play(0, _frames(50), np.zeros(CHUNK_SAMPLES, np.float32))
    assert state.next_out == 1 and not state.ease_next
    assert playout.video_track.queued == CHUNK_FRAMES
    assert playout.audio_track.queued == CHUNK_AUDIO_PACKETS
    assert await _video(playout, CHUNK_FRAMES) == list(range(CHUNK_FRAMES))
    assert sent == list(range(CHUNK_FRAMES)), "every frame sent is reported"
    playout.stop()


async def test_a_conversion_an_interrupt_overtook_is_not_queued() -> None:
    state = InterruptState()
    playout = _playout(state, [])
    converting = asyncio.ensure_future(
        playout.play(0, _frames(50), np.zeros(CHUNK_SAMPLES, np.float32))
    )
    await asyncio.sleep(0)  # the conversion is in the executor
    state.interrupt()
    assert not await converting
    assert playout.video_track.queued == 0 and playout.audio_track.queued == 0
    assert state.next_out == 0
    playout.stop()


async def test_the_cut_drops_what_is_unsent_and_filler_continues_the_timeline() -> None:
    state = InterruptState()
    playout = _playout(state, [])
    silence = np.zeros(CHUNK_SAMPLES, np.float32)
    for index in (0, 1):
        assert await playout.play(index, _frames(50 + index), silence)
    played_video, played_audio = 5, 10
    assert await _video(playout, played_video) == list(range(played_video))
    assert await _audio(playout, played_audio) == list(range(played_audio))

    state.interrupt()
    cut = playout.cut(commanded_at=0.0)
    assert cut.first_chunk == 0
    assert cut.cut_sample == played_video * SAMPLES_PER_FRAME
    assert cut.frames_dropped == 2 * CHUNK_FRAMES - played_video
    assert playout.video_track.queued == 0 and playout.audio_track.queued == 0

    state.cut(cut.first_chunk, next_take=2)
    playout.queue_idle_head(cut.first_chunk)
    assert playout.video_track.queued == INTERRUPT_HEAD_FRAMES
    assert playout.audio_track.queued == INTERRUPT_HEAD_PACKETS
    for index in (0, 1):
        assert await playout.play_filler(index)
    assert state.next_out == 2 and state.ease_next, "the engine's next chunk fades in"
    video = await _video(playout, 2 * CHUNK_FRAMES - played_video)
    audio = await _audio(playout, 2 * CHUNK_AUDIO_PACKETS - played_audio)
    assert video == list(range(played_video, 2 * CHUNK_FRAMES)), "no frame lost or repeated"
    assert audio == list(range(played_audio, 2 * CHUNK_AUDIO_PACKETS))
    playout.stop()

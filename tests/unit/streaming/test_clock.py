"""The media clock: chunk k <-> samples, frames, packets and pts; Playout pairs the tracks;
Signal wakes a waiter in one loop step or at its deadline."""

from __future__ import annotations

import asyncio

from headcast.pipeline.media import CHUNK_FRAMES, CHUNK_SAMPLES, CHUNK_SECONDS
from headcast.streaming.clock import (
    AUDIO_CLOCK_RATE,
    AUDIO_PACKET_SAMPLES,
    CHUNK_AUDIO_PACKETS,
    CHUNK_OUT_SAMPLES,
    VIDEO_CLOCK_RATE,
    VIDEO_TICKS_PER_FRAME,
    LoopClock,
    Playout,
    Signal,
    audio_pts,
    chunk_frame_range,
    chunk_packet_range,
    chunk_sample_range,
    video_pts,
)


def test_constants_tie_one_chunk_together() -> None:
    assert VIDEO_TICKS_PER_FRAME == 3600
    assert AUDIO_PACKET_SAMPLES == 960
    assert CHUNK_OUT_SAMPLES == 53_760
    assert CHUNK_AUDIO_PACKETS == 56
    # 28 frames, 17,920 input samples and 56 packets all last exactly 1.12 s
    assert CHUNK_FRAMES * VIDEO_TICKS_PER_FRAME / VIDEO_CLOCK_RATE == CHUNK_SECONDS
    assert CHUNK_AUDIO_PACKETS * AUDIO_PACKET_SAMPLES / AUDIO_CLOCK_RATE == CHUNK_SECONDS
    assert CHUNK_SAMPLES / 16_000 == CHUNK_SECONDS


def test_chunk_ranges_tile_the_timeline() -> None:
    for k in (0, 1, 7, 1000):
        assert chunk_sample_range(k) == range(17_920 * k, 17_920 * (k + 1))
        assert chunk_frame_range(k) == range(28 * k, 28 * (k + 1))
        assert chunk_packet_range(k) == range(56 * k, 56 * (k + 1))
        assert chunk_frame_range(k).stop == chunk_frame_range(k + 1).start


def test_pts_of_a_chunk_start_agree_in_seconds() -> None:
    for k in (0, 3, 12_345):  # ~3.8 h in: integer arithmetic, no drift
        first_frame = chunk_frame_range(k).start
        first_packet = chunk_packet_range(k).start
        assert video_pts(first_frame) == 3600 * 28 * k
        assert audio_pts(first_packet) == 960 * 56 * k
        assert (
            video_pts(first_frame) * AUDIO_CLOCK_RATE == audio_pts(first_packet) * VIDEO_CLOCK_RATE
        )


def test_playout_gives_paired_media_the_same_wall_time() -> None:
    playout = Playout(origin=100.0)
    for k in (0, 1, 50):
        due = playout.chunk_due(k)
        assert due == 100.0 + k * CHUNK_SECONDS
        assert playout.video_due(video_pts(chunk_frame_range(k).start)) == due
        assert abs(playout.audio_due(audio_pts(chunk_packet_range(k).start)) - due) < 1e-9
    # frame n and packet 2n start together (40 ms = 2 x 20 ms)
    assert abs(playout.video_due(video_pts(5)) - playout.audio_due(audio_pts(10))) < 1e-9


async def test_signal_wakes_its_waiters_in_one_loop_step_or_at_the_deadline() -> None:
    clock = LoopClock()
    signal = Signal()
    waiters = [asyncio.ensure_future(signal.wait(clock, clock.now() + 5.0)) for _ in range(2)]
    await asyncio.sleep(0)  # both are waiting
    signal.notify()
    await asyncio.sleep(0)  # one loop step
    assert all(waiter.done() for waiter in waiters)

    signal.notify()  # nobody waits: nothing is remembered for a later wait
    started = clock.now()
    await asyncio.wait_for(signal.wait(clock, started + 0.05), 1.0)
    assert 0.045 <= clock.now() - started < 0.5

    cancelled = asyncio.ensure_future(signal.wait(clock, clock.now() + 5.0))
    waiting = asyncio.ensure_future(signal.wait(clock, clock.now() + 5.0))
    await asyncio.sleep(0)
    cancelled.cancel()  # a session ending mid-wait
    await asyncio.gather(cancelled, return_exceptions=True)
    assert cancelled.cancelled() and not waiting.done()
    signal.notify()
    await asyncio.wait_for(waiting, 0.05)

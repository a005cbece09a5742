"""Chunk conversion and paced tracks: frame formats, pts from the clock, pacing, stop."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from headcast.pipeline.media import CHUNK_FRAMES
from headcast.streaming.clock import CHUNK_OUT_SAMPLES, LoopClock
from headcast.streaming.tracks import AvatarAudioTrack, AvatarVideoTrack, TimedFrame, chunk_to_media


def test_chunk_to_media_makes_28_frames_and_56_packets_on_the_clock() -> None:
    frames = np.zeros((CHUNK_FRAMES, 64, 48, 3), dtype=np.uint8)
    frames[:, :, :, 0] = 255  # red
    audio = np.full(CHUNK_OUT_SAMPLES, 0.25, dtype=np.float32)
    media = chunk_to_media(2, frames, audio, height=64, width=48)
    assert [f.pts for f in media.video] == [3600 * n for n in range(56, 84)]
    assert [f.pts for f in media.audio] == [960 * m for m in range(112, 168)]
    assert {(f.width, f.height, f.format.name) for f in media.video} == {(48, 64, "yuv420p")}
    rgb = media.video[0].to_ndarray(format="rgb24")
    assert rgb[..., 0].mean() > 240 and rgb[..., 1].mean() < 15
    assert {(f.samples, f.sample_rate, f.format.name, f.layout.name) for f in media.audio} == {
        (960, 48_000, "s16", "mono")
    }
    assert int(media.audio[0].to_ndarray()[0, 0]) == round(0.25 * 32767)


def test_chunk_to_media_scales_other_sizes_and_rejects_bad_shapes() -> None:
    frames = np.zeros((CHUNK_FRAMES, 32, 24, 3), dtype=np.uint8)
    media = chunk_to_media(0, frames, np.zeros(CHUNK_OUT_SAMPLES, np.float32), height=64, width=48)
    assert (media.video[0].width, media.video[0].height) == (48, 64)
    with pytest.raises(ValueError, match="frames"):
        chunk_to_media(0, frames[:5], np.zeros(CHUNK_OUT_SAMPLES, np.float32), 64, 48)
    with pytest.raises(ValueError, match="outgoing samples"):
        chunk_to_media(0, frames, np.zeros(100, np.float32), 64, 48)


async def test_tracks_release_frames_at_their_due_time_and_end_on_stop() -> None:
    clock = LoopClock()
    media = chunk_to_media(
        0,
        np.zeros((CHUNK_FRAMES, 16, 16, 3), np.uint8),
        np.zeros(CHUNK_OUT_SAMPLES, np.float32),
        16,
        16,
    )
    video = AvatarVideoTrack(clock)
    audio = AvatarAudioTrack(clock)
    start = clock.now() + 0.2
    video.feed([TimedFrame(f, start + f.pts / 90_000) for f in media.video[:3]])
    audio.feed([TimedFrame(f, start + f.pts / 48_000) for f in media.audio[:2]])
    for expected_due, track in (
        (start, video),
        (start, audio),
        (start + 0.02, audio),
        (start + 0.04, video),
    ):
        await track.recv()
        assert clock.now() >= expected_due - 0.002
    assert clock.now() < start + 0.2, "frames must not be held back past their due time"

    waiter = asyncio.ensure_future(video.recv())
    await asyncio.sleep(0)
    video.stop()
    video.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiter, 1.0)

"""Chunk conversion and paced tracks: frame formats, pts from the clock, pacing, stop."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from headcast.pipeline.media import CHUNK_FRAMES
from headcast.streaming.clock import CHUNK_OUT_SAMPLES, LoopClock, audio_pts, video_pts
from headcast.streaming.tracks import (
    PARTNER_WAIT_MAX_S,
    AvatarAudioTrack,
    AvatarVideoTrack,
    SentCallback,
    TimedFrame,
    chunk_to_media,
)


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


def _paired_tracks(clock: LoopClock) -> tuple[AvatarVideoTrack, AvatarAudioTrack]:
    video = AvatarVideoTrack(clock)
    audio = AvatarAudioTrack(clock)
    video.sync_with(audio)
    audio.sync_with(video)
    return video, audio


def _feed_media(video: AvatarVideoTrack, audio: AvatarAudioTrack, start: float) -> None:
    media = chunk_to_media(
        0,
        np.zeros((CHUNK_FRAMES, 16, 16, 3), np.uint8),
        np.zeros(CHUNK_OUT_SAMPLES, np.float32),
        16,
        16,
    )
    video.feed([TimedFrame(f, start + f.pts / 90_000) for f in media.video])
    audio.feed([TimedFrame(f, start + f.pts / 48_000) for f in media.audio])


async def test_a_track_waits_for_its_lagging_partner_so_both_leave_together() -> None:
    clock = LoopClock()
    video, audio = _paired_tracks(clock)
    start = clock.now() + 0.05
    _feed_media(video, audio, start)
    await video.recv()  # frame 0 (due at start): its sender pulls the video
    for _ in range(3):  # packets 0-2 (0, 20, 40 ms) leave on time: frame 1 (40 ms) is due,
        await audio.recv()  # not late yet
    assert clock.now() - (start + 0.04) < 0.01
    # The video sender stalls (its encoder starved of CPU) until 150 ms.
    stalled_until = start + 0.15
    packet_at_60_ms = asyncio.ensure_future(audio.recv())
    await clock.sleep_until(stalled_until)
    assert not packet_at_60_ms.done(), "frame 1 is 20 ms overdue: the packet waits for it"
    await video.recv()  # frame 1: the audio is waiting, so it goes at once ...
    await asyncio.wait_for(packet_at_60_ms, 0.05)  # ... and the packet with it
    assert clock.now() - stalled_until < 0.02

    # Both are behind now: frame 2 (80 ms) waits until the audio sender comes for packet 4
    # (80 ms), then both go at once.
    frame_at_80_ms = asyncio.ensure_future(video.recv())
    await asyncio.sleep(0.01)
    assert not frame_at_80_ms.done(), "packet 4 (80 ms) is overdue and not sent"
    await audio.recv()
    await asyncio.wait_for(frame_at_80_ms, 0.05)
    assert video.partner_waits_cut_short == 0 and audio.partner_waits_cut_short == 0


async def test_an_unpulled_or_stalled_partner_holds_a_track_back_only_so_long() -> None:
    clock = LoopClock()
    video, audio = _paired_tracks(clock)
    start = clock.now() + 0.02
    _feed_media(video, audio, start)
    # Nobody pulls the video (an audio-only peer): the audio is never held.
    for _ in range(4):
        await audio.recv()
    assert clock.now() - (start + 0.06) < 0.02
    assert audio.partner_waits_cut_short == 0

    # Pulled once, then stalled for good: the audio waits at most PARTNER_WAIT_MAX_S.
    await video.recv()  # frame 0, overdue ... and then nothing
    await audio.recv()  # packet 4 (80 ms): frames 1 and 2 (40, 80 ms) are not sent
    waited = clock.now() - (start + 0.08)
    assert PARTNER_WAIT_MAX_S - 0.01 <= waited < PARTNER_WAIT_MAX_S + 0.05
    assert audio.partner_waits_cut_short == 1


async def test_dropping_the_partners_frames_releases_a_waiting_track() -> None:
    clock = LoopClock()
    video, audio = _paired_tracks(clock)
    start = clock.now() + 0.02
    _feed_media(video, audio, start)
    await video.recv()
    await audio.recv()
    await audio.recv()
    await clock.sleep_until(start + 0.06)  # frame 1 (40 ms) is overdue, not pulled
    waiting = asyncio.ensure_future(audio.recv())  # packet 2 (40 ms) waits for frame 1
    await asyncio.sleep(0.01)
    assert not waiting.done()
    video.drop_queued()  # an interrupt cut the video
    await asyncio.wait_for(waiting, 0.05)
    assert audio.partner_waits_cut_short == 0


async def test_a_partner_parked_on_an_earlier_frame_is_still_waited_for() -> None:
    """After a stall both senders are behind. The video sender parks frame 1 (40 ms) for the
    audio; the audio sender then pulls packets 2-4 (40-80 ms) without a pause. Packet 4 must
    still wait for frame 2 (80 ms), which the video sender comes for only after encoding
    frame 1, instead of taking the parked frame 1 for "ready"."""
    clock = LoopClock()
    sent: dict[str, dict[int, float]] = {"video": {}, "audio": {}}

    def recorder(kind: str) -> SentCallback:
        return lambda pts, due, sent_at: sent[kind].__setitem__(pts, sent_at)

    video = AvatarVideoTrack(clock, on_sent=recorder("video"))
    audio = AvatarAudioTrack(clock, on_sent=recorder("audio"))
    video.sync_with(audio)
    audio.sync_with(video)
    start = clock.now() + 0.02
    _feed_media(video, audio, start)
    await video.recv()  # frame 0
    await audio.recv()  # packets 0-1 (0, 20 ms)
    await audio.recv()
    await clock.sleep_until(start + 0.15)  # both senders stalled

    async def video_sender() -> None:
        await video.recv()  # frame 1 (40 ms) parks until the audio reaches 40 ms
        await asyncio.sleep(0.03)  # encoding frame 1
        await video.recv()  # frame 2 (80 ms)

    async def audio_sender() -> None:
        for _ in range(3):  # packets 2-4 (40, 60, 80 ms), pulled back to back
            await audio.recv()

    video_task = asyncio.ensure_future(video_sender())
    await asyncio.sleep(0)  # the video sender parks frame 1
    assert video.parked
    await asyncio.wait_for(asyncio.gather(video_task, audio_sender()), 0.5)
    frame_2 = sent["video"][video_pts(2)]
    packet_4 = sent["audio"][audio_pts(4)]
    skew = packet_4 - frame_2
    assert abs(skew) < 0.005, f"frame 2 and packet 4 left {skew:+.3f} s apart"
    assert sent["video"][video_pts(1)] <= sent["audio"][audio_pts(3)]
    assert video.partner_waits_cut_short == 0 and audio.partner_waits_cut_short == 0


async def test_a_parked_partner_leaves_in_the_same_loop_step() -> None:
    """The video holds frame 1 for the audio. When the audio sender comes for packet 2, both
    must leave in one loop step: the video's turn must not wait behind what the audio
    sender's task does right after ``recv`` (here 30 ms of work in that same step)."""
    clock = LoopClock()
    sent: dict[str, dict[int, float]] = {"video": {}, "audio": {}}

    def on_video(pts: int, due: float, sent_at: float) -> None:
        sent["video"][pts] = sent_at

    def on_audio(pts: int, due: float, sent_at: float) -> None:
        sent["audio"][pts] = sent_at

    video = AvatarVideoTrack(clock, on_sent=on_video)
    audio = AvatarAudioTrack(clock, on_sent=on_audio)
    video.sync_with(audio)
    audio.sync_with(video)
    start = clock.now() + 0.02
    _feed_media(video, audio, start)
    await video.recv()  # frame 0
    await audio.recv()  # packets 0-1
    await audio.recv()
    await clock.sleep_until(start + 0.1)  # both behind: frame 1 and packet 2 (40 ms) overdue
    frame_1 = asyncio.ensure_future(video.recv())
    await asyncio.sleep(0)
    assert video.parked  # it waits for packet 2

    async def audio_sender() -> None:
        await audio.recv()  # packet 2
        time.sleep(0.03)  # noqa: ASYNC251 - the sender's own work right after recv, blocking

    await asyncio.wait_for(asyncio.gather(frame_1, audio_sender()), 0.5)
    skew = sent["audio"][audio_pts(2)] - sent["video"][video_pts(1)]
    assert abs(skew) < 0.005, f"packet 2 and frame 1 left {skew:+.3f} s apart"

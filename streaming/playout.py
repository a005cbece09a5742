"""How a session's chunks go out: conversion, the two tracks, their feed cursors, the cut.

Owns ``ChunkPlayout``: the outgoing ``AvatarVideoTrack`` and ``AvatarAudioTrack``, the
``Playout`` that gives every frame and packet its due time, and the feed cursors (the next
video frame and audio packet the tracks take). It plays a chunk three ways, each converted
off the event loop and queued on both tracks at or after the cursors:

- ``play``: the engine's frames with the 16 kHz audio that drove them (upsampled to 48 kHz;
  a silent chunk after a silent one becomes the ``IdleLoop``'s rest chunk), faded in from
  the loop when filler went out just before (``InterruptState.ease_next``);
- ``play_held``: the last frame on screen held, with the chunk's audio;
- ``play_filler``: idle-loop frames and silence, faded in from the engine's last frame when
  it follows an engine chunk (``idle_mode: loop``: a session falling silent).

A conversion an interrupt made stale (``InterruptState.epoch``) is not queued. ``cut``
takes every unsent frame and packet off the tracks and rewinds the cursors to the first of
them; ``queue_idle_head`` then puts the first idle frames out at once, on the loop. It also
reports what the tracks send: late frames, the send timing (``SendTiming``), and each video
frame to ``on_frame_sent`` (the session announces readiness and speech from it); and it
hands back the last frames it fed (``shown_frames``), what an engine re-seeds from.

Knows nothing about engines, mailboxes, audio sources or transports: it is told what to play.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import av
import numpy as np

from headcast.pipeline.media import CHUNK_FRAMES, RESEED_FRAMES, SAMPLES_PER_FRAME
from headcast.streaming.clock import (
    AUDIO_PACKET_SAMPLES,
    CHUNK_AUDIO_PACKETS,
    VIDEO_TICKS_PER_FRAME,
    Playout,
    WallClock,
    audio_pts,
    video_pts,
)
from headcast.streaming.idle import IdleLoop, fade_from, is_rest_audio
from headcast.streaming.interrupt_state import InterruptState
from headcast.streaming.observer import SessionObserver
from headcast.streaming.resample import Upsampler
from headcast.streaming.send_timing import SendTiming
from headcast.streaming.session_config import SessionConfig
from headcast.streaming.tracks import (
    AvatarAudioTrack,
    AvatarVideoTrack,
    ChunkMedia,
    TimedFrame,
    chunk_to_media,
    frame_pts,
)

logger = logging.getLogger(__name__)

LATE_FRAME_S = 0.040
"""A video frame handed to the encoder more than this after its due time counts as late
(one frame period)."""

INTERRUPT_HEAD_FRAMES = 3
INTERRUPT_HEAD_PACKETS = 6
"""Idle video frames / audio packets (120 ms each) an interrupt queues at once, on the event
loop, so the output is idle before the emit loop builds the rest of the filler."""

FrameSent = Callable[[int, float], None]
"""``on_frame_sent(frame_index, sent_at)``: a video frame went to the encoder."""


@dataclass(frozen=True)
class CutPoint:
    """Where an interrupt cut the output."""

    first_chunk: int
    """The chunk the first unsent frame or packet belongs to: the output resumes there."""

    cut_sample: int
    """Media position of the first video frame not sent, in 16 kHz samples."""

    frames_dropped: int
    """Video frames taken off the track unsent."""


class ChunkPlayout:
    """One session's outgoing media, fed a chunk at a time. Create it on the event loop."""

    def __init__(
        self,
        avatar_image: np.ndarray,
        config: SessionConfig,
        state: InterruptState,
        *,
        clock: WallClock,
        observer: SessionObserver,
        on_frame_sent: FrameSent,
        executor: Executor | None = None,
        label: str = "session",
    ) -> None:
        self._avatar_image = avatar_image  # [H, W, 3] uint8
        self._height, self._width = config.height, config.width
        self._state = state
        self._observer = observer
        self._on_frame_sent = on_frame_sent
        self._executor = executor
        self._label = label
        self._loop = asyncio.get_running_loop()
        self.video_track = AvatarVideoTrack(clock, on_sent=self._video_sent)
        self.audio_track = AvatarAudioTrack(clock, on_sent=self._audio_sent)
        # One media clock, two senders: each holds a due frame until the other is ready with
        # its own of the same time, so picture and sound leave together after a CPU stall.
        self.video_track.sync_with(self.audio_track)
        self.audio_track.sync_with(self.video_track)
        self.idle_loop = IdleLoop(avatar_image, config.height, config.width)
        self.send_timing = SendTiming(observer, label)
        """Per-chunk A/V skew and interrupt latency, from what the tracks report sending."""
        self.frames_late = 0
        self._timeline: Playout | None = None
        self._video_next = 0
        self._audio_next = 0
        """Feed cursors: the next video frame and audio packet index the tracks take."""
        self._upsampler = Upsampler()
        self._upsampler_epoch = 0
        """The interrupt epoch the upsampler's filter history belongs to."""
        self._previous_silent = True
        """The chunk before was silent or filler: rest (a session starts at rest)."""
        self._last_frame: np.ndarray | None = None  # [H, W, 3] uint8: the last frame queued
        self._fed_tail: deque[av.VideoFrame] = deque(maxlen=RESEED_FRAMES)
        """The last video frames fed to the track, oldest first (what a re-seed starts from)."""
        self._fed_filler = True
        """The last media fed was idle-loop filler (else an engine or held chunk)."""

    def start(self, origin: float) -> None:
        """Media time 0 is due at wall time ``origin``."""
        self._timeline = Playout(origin=origin)

    def chunk_due(self, index: int) -> float:
        """Wall time at which chunk ``index`` starts playing."""
        assert self._timeline is not None, "the playout is not started"
        return self._timeline.chunk_due(index)

    # -- playing a chunk ------------------------------------------------------------------------

    async def play(
        self, index: int, frames: np.ndarray, audio: np.ndarray, *, generated: bool = True
    ) -> bool:
        """Queue chunk ``index``: ``frames`` ``[28, H, W, 3]`` uint8 and the ``[17920]``
        samples that go with them (``generated``: the engine made the frames from that
        audio). Returns False if an interrupt made it stale before it was queued."""
        state = self._state
        epoch, ease = state.epoch, state.ease_next
        media = await self._loop.run_in_executor(
            self._executor, self._convert, index, frames, audio, generated, epoch, ease
        )
        if not state.is_current(epoch):
            logger.debug("%s: chunk %d converted after an interrupt; not sent", self._label, index)
            return False
        self._feed(media)
        state.went_out(index, filler=False)
        self._last_frame = frames[-1]
        return True

    async def play_held(self, index: int, audio: np.ndarray) -> bool:
        """Queue chunk ``index`` as the last frame on screen (the avatar image before any)
        held for 28 frames, with ``audio``. Returns False if it went stale."""
        held = self._last_frame if self._last_frame is not None else self._avatar_image
        frames = np.broadcast_to(held, (CHUNK_FRAMES, *held.shape))  # [28, H, W, 3]
        return await self.play(index, frames, audio, generated=False)

    async def play_filler(self, index: int) -> bool:
        """Queue chunk ``index`` as idle-loop frames and silence, from the feed cursors on.
        Returns False if an interrupt made it stale while it was built."""
        state = self._state
        epoch = state.epoch
        tail = self._fed_tail
        fade = None if self._fed_filler or not tail else tail[-1]
        media = await self._loop.run_in_executor(
            self._executor, self._filler, index, self._video_next, self._audio_next, fade
        )
        if not state.is_current(epoch):
            return False  # interrupted again while building: the emit loop starts over
        self._feed(media, filler=True)
        state.went_out(index, filler=True)
        self._previous_silent = True  # the loop is at rest
        return True

    def _filler(
        self, index: int, video_from: int, audio_from: int, fade: av.VideoFrame | None
    ) -> ChunkMedia:
        # Runs in the executor: the loop's frames, faded in from the engine's last frame.
        media = self.idle_loop.filler(index, video_from, audio_from)
        return media if fade is None else fade_from(fade.to_ndarray(), media)

    async def shown_frames(self) -> np.ndarray:
        """The last ``RESEED_FRAMES`` video frames fed, oldest first, as ``[5, H, W, 3]``
        uint8 RGB (converted off the loop); fewer fed so far repeat the oldest, none is the
        avatar held."""
        tail = list(self._fed_tail)
        return await self._loop.run_in_executor(self._executor, self._to_rgb, tail)

    def _to_rgb(self, tail: list[av.VideoFrame]) -> np.ndarray:
        if not tail:
            tail = self.idle_loop.video([0])  # the avatar image, or the loop's first frame
        rgb = [frame.to_ndarray(format="rgb24") for frame in tail]  # each [H, W, 3]
        rgb = [rgb[0]] * (RESEED_FRAMES - len(rgb)) + rgb
        return np.stack(rgb)  # [5, H, W, 3]

    def _convert(
        self,
        index: int,
        frames: np.ndarray,
        audio: np.ndarray,
        rest_candidate: bool,
        epoch: int,
        ease: bool,
    ) -> ChunkMedia:
        # Runs in the executor, one chunk at a time per session (the upsampler keeps state).
        if epoch > self._upsampler_epoch:  # after an interrupt: no tail of the cut speech
            self._upsampler, self._upsampler_epoch = Upsampler(), epoch
        # A chunk converted for an earlier epoch is stale: keep its audio out of the history.
        upsampler = self._upsampler if epoch == self._upsampler_epoch else Upsampler()
        media = chunk_to_media(index, frames, upsampler.process(audio), self._height, self._width)
        self.idle_loop.prepare()
        silent = is_rest_audio(audio)
        if rest_candidate and silent and self._previous_silent:
            self.idle_loop.capture(media)  # silence after rest: the mouth is at rest
        self._previous_silent = silent
        if ease:  # the first chunk after filler: no pose jump from the loop to the engine
            media = self.idle_loop.ease_in(media)
        return media

    def _feed(self, media: ChunkMedia, *, filler: bool = False) -> None:
        """Queue the frames and packets at or after the feed cursors; advance the cursors.
        ``filler``: the media comes from the idle loop."""
        timeline = self._timeline
        assert timeline is not None, "the playout is not started"
        first_video, first_audio = video_pts(self._video_next), audio_pts(self._audio_next)
        video = [f for f in media.video if frame_pts(f) >= first_video]
        audio = [f for f in media.audio if frame_pts(f) >= first_audio]
        self.video_track.feed([TimedFrame(f, timeline.video_due(frame_pts(f))) for f in video])
        self.audio_track.feed([TimedFrame(f, timeline.audio_due(frame_pts(f))) for f in audio])
        if video:
            self._video_next = frame_pts(video[-1]) // VIDEO_TICKS_PER_FRAME + 1
            self._fed_tail.extend(video[-RESEED_FRAMES:])
            self._fed_filler = filler
        if audio:
            self._audio_next = frame_pts(audio[-1]) // AUDIO_PACKET_SAMPLES + 1

    # -- the interrupt cut ----------------------------------------------------------------------

    def cut(self, commanded_at: float) -> CutPoint:
        """Take every unsent frame and packet off the tracks and rewind the feed cursors to
        the first of them; the next filler starts the loop over. ``commanded_at``: when the
        interrupt arrived (the send timing measures the latency from it)."""
        dropped_video = self.video_track.drop_queued()
        dropped_audio = self.audio_track.drop_queued()
        if dropped_video:
            self._video_next = frame_pts(dropped_video[0].frame) // VIDEO_TICKS_PER_FRAME
        if dropped_audio:
            self._audio_next = frame_pts(dropped_audio[0].frame) // AUDIO_PACKET_SAMPLES
        self.idle_loop.restart()
        self.send_timing.interrupted(commanded_at, self._video_next, self._audio_next)
        return CutPoint(
            first_chunk=min(
                self._video_next // CHUNK_FRAMES, self._audio_next // CHUNK_AUDIO_PACKETS
            ),
            cut_sample=self._video_next * SAMPLES_PER_FRAME,
            frames_dropped=len(dropped_video),
        )

    def queue_idle_head(self, index: int) -> None:
        """Queue the first idle frames and packets of chunk ``index`` now, on the loop: a
        few plane copies (about 1 ms a frame), so the output is idle before the emit loop's
        current conversion ends; ``play_filler`` builds the rest of the chunk off the loop."""
        frames = range(self._video_next, self._video_next + INTERRUPT_HEAD_FRAMES)
        packets = range(self._audio_next, self._audio_next + INTERRUPT_HEAD_PACKETS)
        self._feed(
            ChunkMedia(
                index=index,
                video=self.idle_loop.video(list(frames)),
                audio=self.idle_loop.silence(list(packets)),
            ),
            filler=True,
        )

    def stop(self) -> None:
        """End both tracks and let go of the frames held (close).

        A closed session's objects wait for the cycle collector (callbacks refer back to
        it); its frames must not: the last frame is a view of a whole chunk, and the idle
        loop holds a chunk of planes.
        """
        self.video_track.stop()
        self.audio_track.stop()
        self._last_frame = None
        self._fed_tail.clear()
        self.idle_loop.release()

    # -- what the tracks report (on the event loop) ---------------------------------------------

    def _video_sent(self, pts: int, due: float, sent_at: float) -> None:
        frame_index = pts // VIDEO_TICKS_PER_FRAME
        self._on_frame_sent(frame_index, sent_at)
        if sent_at - due > LATE_FRAME_S:
            self.frames_late += 1
            self._observer.on_frames_late(1)
        self.send_timing.video_sent(frame_index, due, sent_at)

    def _audio_sent(self, pts: int, due: float, sent_at: float) -> None:
        self.send_timing.audio_sent(pts // AUDIO_PACKET_SAMPLES, due, sent_at)

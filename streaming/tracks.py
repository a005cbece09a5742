"""The two outgoing WebRTC tracks of a session and the per-chunk frame conversion feeding them.

Owns ``AvatarVideoTrack`` (25 fps ``av.VideoFrame``s, yuv420p, pts at 90 kHz) and
``AvatarAudioTrack`` (20 ms ``av.AudioFrame``s of 960 s16 mono samples at 48 kHz), both
paced to wall time by the due time their feeder attached to each frame (unsent frames can be
dropped for an interrupt, and each sent frame reported through ``on_sent``), and
``chunk_to_media`` which turns one chunk's 28 RGB frames and 53,760 outgoing samples into
exactly those frames (the heavy part; run it in an executor).

The tracks compute no timestamps themselves: the session hands them frames whose pts come
from the one media clock (``streaming.clock``) and due times from one ``Playout``.
Knows nothing about engines, peer connections or the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from headcast.pipeline.media import CHUNK_FRAMES
from headcast.streaming.clock import (
    AUDIO_CLOCK_RATE,
    AUDIO_PACKET_SAMPLES,
    AUDIO_TIME_BASE,
    CHUNK_AUDIO_PACKETS,
    CHUNK_OUT_SAMPLES,
    VIDEO_TIME_BASE,
    WallClock,
    audio_pts,
    chunk_frame_range,
    chunk_packet_range,
    video_pts,
)

logger = logging.getLogger(__name__)

ENCODER_PIXEL_FORMAT = "yuv420p"
"""Pixel format aiortc's VP8 and H.264 encoders consume (converted here, off the loop)."""

INT16_FULL_SCALE = 32767
"""Peak value of s16 audio samples."""

FrameT = TypeVar("FrameT", av.VideoFrame, av.AudioFrame)


def frame_pts(frame: av.VideoFrame | av.AudioFrame) -> int:
    """The pts of a frame made here (``chunk_to_media`` and the idle loop always set one)."""
    if frame.pts is None:
        raise ValueError("an outgoing frame has no pts; frames must come from the media clock")
    return int(frame.pts)


@dataclass(frozen=True)
class TimedFrame(Generic[FrameT]):
    """A frame and the wall time (``WallClock.now()`` units) at which it is due."""

    frame: FrameT
    due: float


@dataclass(frozen=True)
class ChunkMedia:
    """One chunk, ready to send: 28 video frames and the 56 audio packets that drove them."""

    index: int
    video: list[av.VideoFrame]
    audio: list[av.AudioFrame]


def chunk_to_media(
    index: int, frames: np.ndarray, audio_48k: np.ndarray, height: int, width: int
) -> ChunkMedia:
    """Convert chunk ``index`` into encoder-ready frames with media-clock timestamps.

    ``frames`` is ``[28, H, W, 3]`` uint8 RGB (resized to ``height`` x ``width`` if it is
    another size); ``audio_48k`` is ``[53760]`` float32 in [-1, 1]. CPU-heavy (colour
    conversion of 28 frames): call it from an executor, not the event loop.
    """
    if frames.shape[0] != CHUNK_FRAMES or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"a chunk has [{CHUNK_FRAMES}, H, W, 3] frames, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"chunk frames must be uint8 RGB, got {frames.dtype}")
    if audio_48k.shape != (CHUNK_OUT_SAMPLES,):
        raise ValueError(f"a chunk has {CHUNK_OUT_SAMPLES} outgoing samples, got {audio_48k.shape}")

    video: list[av.VideoFrame] = []
    for frame_index, rgb in zip(chunk_frame_range(index), frames, strict=True):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(width=width, height=height, format=ENCODER_PIXEL_FORMAT)
        frame.pts = video_pts(frame_index)
        frame.time_base = VIDEO_TIME_BASE
        video.append(frame)

    pcm = np.round(np.clip(audio_48k, -1.0, 1.0) * INT16_FULL_SCALE).astype(np.int16)
    packets = pcm.reshape(CHUNK_AUDIO_PACKETS, AUDIO_PACKET_SAMPLES)  # [56, 960]
    audio: list[av.AudioFrame] = []
    for packet_index, samples in zip(chunk_packet_range(index), packets, strict=True):
        audio_frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        audio_frame.sample_rate = AUDIO_CLOCK_RATE
        audio_frame.pts = audio_pts(packet_index)
        audio_frame.time_base = AUDIO_TIME_BASE
        audio.append(audio_frame)
    return ChunkMedia(index=index, video=video, audio=audio)


SentCallback = Callable[[int, float, float], None]
"""``on_sent(pts, due, sent_at)``: a frame left the track (wall times in ``WallClock`` units)."""


class _PacedTrack(MediaStreamTrack, Generic[FrameT]):
    """A track that returns queued frames no earlier than their due time.

    ``on_sent`` (optional) hears of every frame as it is handed to the encoder.
    """

    def __init__(self, clock: WallClock, *, on_sent: SentCallback | None = None) -> None:
        super().__init__()
        self._clock = clock
        self._on_sent = on_sent
        self._queue: asyncio.Queue[TimedFrame[FrameT] | None] = asyncio.Queue()
        self._pacing: TimedFrame[FrameT] | None = None
        """The frame ``recv`` took and waits to send (until its due time)."""
        self._pacing_dropped = False
        self.frames_sent = 0

    def feed(self, frames: list[TimedFrame[FrameT]]) -> None:
        """Queue frames in pts order (the session feeds whole chunks)."""
        if self.readyState != "live":
            return
        for item in frames:
            self._queue.put_nowait(item)

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return self._queue.qsize()

    def drop_queued(self) -> list[TimedFrame[FrameT]]:
        """Drop every frame not yet sent (interrupt); returns them in order.

        That includes the frame ``recv`` is holding until its due time: ``recv`` then sends
        the next frame fed instead.
        """
        dropped: list[TimedFrame[FrameT]] = []
        if self._pacing is not None and not self._pacing_dropped:
            dropped.append(self._pacing)
            self._pacing_dropped = True
        stopped = False
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                stopped = True
            else:
                dropped.append(item)
        if stopped:  # keep the wake-up of a stopped track
            self._queue.put_nowait(None)
        return dropped

    async def recv(self) -> FrameT:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            item = await self._queue.get()
            if item is None:  # stop() woke us up
                raise MediaStreamError
            self._pacing, self._pacing_dropped = item, False
            try:
                await self._clock.sleep_until(item.due)
            finally:
                self._pacing = None
            if not self._pacing_dropped:
                break
        if self.readyState != "live":
            raise MediaStreamError
        self.frames_sent += 1
        if self._on_sent is not None:
            self._on_sent(frame_pts(item.frame), item.due, self._clock.now())
        return item.frame

    def stop(self) -> None:
        if self.readyState == "live":
            self.drop_queued()  # unsent frames (up to a chunk: 14 MB of video) go now
            self._queue.put_nowait(None)
        super().stop()


class AvatarVideoTrack(_PacedTrack[av.VideoFrame]):
    """The avatar's outgoing video: 25 fps, pts in 90 kHz ticks from the media clock."""

    kind = "video"


class AvatarAudioTrack(_PacedTrack[av.AudioFrame]):
    """The avatar's outgoing audio: 20 ms packets of 960 s16 mono samples at 48 kHz."""

    kind = "audio"

"""The two outgoing WebRTC tracks of a session and the per-chunk frame conversion feeding them.

Owns ``AvatarVideoTrack`` (25 fps ``av.VideoFrame``s, yuv420p, pts at 90 kHz) and
``AvatarAudioTrack`` (20 ms ``av.AudioFrame``s of 960 s16 mono samples at 48 kHz), both
paced to wall time by the due time their feeder attached to each frame (unsent frames can be
dropped for an interrupt, and each sent frame reported through ``on_sent``) and paired
(``sync_with``) so that a track whose sender fell behind is waited for, and
``chunk_to_media`` which turns one chunk's 28 RGB frames and 53,760 outgoing samples into
exactly those frames (the heavy part; run it in an executor).

The tracks compute no timestamps themselves: the session hands them frames whose pts come
from the one media clock (``streaming.clock``) and due times from one ``Playout``.
Knows nothing about engines, peer connections or the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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
    Signal,
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


PARTNER_TOLERANCE_S = 0.010
"""A due frame waits for the partner's frames due up to this much later than itself."""

PARTNER_LAG_S = 0.010
"""The partner is waited for only when its oldest unsent frame is overdue by more than this
(on time, both leave at their due time anyway)."""

PARTNER_WAIT_MAX_S = 0.200
"""Longest a due frame waits for a lagging partner track, in seconds."""

PARTNER_IDLE_S = 0.500
"""A partner track that sent nothing for this long is not waited for (not pulled)."""

SentCallback = Callable[[int, float, float], None]
"""``on_sent(pts, due, sent_at)``: a frame left the track (wall times in ``WallClock`` units)."""


class _PacedTrack(MediaStreamTrack, Generic[FrameT]):
    """A track that returns queued frames no earlier than their due time.

    ``on_sent`` (optional) hears of every frame as it is handed to the encoder. Paired with
    the session's other track (``sync_with``), a due frame also waits until that track is
    ready to send its own frames of the same time, so the two leave together even when one
    sender fell behind (its encoder thread starved of CPU for a moment).
    """

    def __init__(self, clock: WallClock, *, on_sent: SentCallback | None = None) -> None:
        super().__init__()
        self._clock = clock
        self._on_sent = on_sent
        self._pending: deque[TimedFrame[FrameT]] = deque()
        self._fed = asyncio.Event()
        """Set when frames are fed or the track stops (wakes ``recv``)."""
        self._pacing: TimedFrame[FrameT] | None = None
        """The frame ``recv`` took and waits to send (until its due time)."""
        self._pacing_dropped = False
        self._partner: _PacedTrack[Any] | None = None
        self.parked = False
        """``recv`` holds a due frame (``next_due``) while it waits for the partner."""
        self.progress = Signal()
        """Notified whenever this track sends, drops or parks frames, or stops (wakes the
        partner's wait)."""
        self.last_sent_at: float | None = None
        """When the last frame was handed to the encoder (``WallClock`` units)."""
        self.partner_waits_cut_short = 0
        """Frames sent without the partner after ``PARTNER_WAIT_MAX_S`` (it stayed behind)."""

    def sync_with(self, partner: _PacedTrack[Any]) -> None:
        """Hold each due frame while ``partner`` is behind: it has a frame due no later than
        ``PARTNER_TOLERANCE_S`` after this one, overdue by more than ``PARTNER_LAG_S``, that
        its sender has not come for yet (it is busy encoding an earlier one), or that it
        holds while it waits for an earlier frame of this track. When the partner's sender
        comes, it sees this track waiting and goes at once, and this frame with it. A
        partner nobody pulls frames from is not waited for. Pull each track from its own
        task, as aiortc's senders do."""
        self._partner = partner

    def feed(self, frames: list[TimedFrame[FrameT]]) -> None:
        """Queue frames in pts order (the session feeds whole chunks)."""
        if self.readyState != "live":
            return
        self._pending.extend(frames)
        self._fed.set()

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return len(self._pending)

    @property
    def next_due(self) -> float | None:
        """Due time of the oldest frame not sent yet (held by ``recv`` or queued)."""
        if self._pacing is not None and not self._pacing_dropped:
            return self._pacing.due
        return self._pending[0].due if self._pending else None

    def lags_behind(self, due: float, now: float) -> bool:
        """True while this track's sender, which does pull frames, is behind: it has not
        come for a frame due by ``due + PARTNER_TOLERANCE_S`` and overdue by more than
        ``PARTNER_LAG_S``."""
        if self.readyState != "live" or self.last_sent_at is None:
            return False  # ended, or no sender pulls it (an audio-only peer)
        if now - self.last_sent_at > PARTNER_IDLE_S:
            return False  # its sender stopped pulling: waiting would only add delay
        next_due = self.next_due
        if next_due is None or next_due >= now - PARTNER_LAG_S:
            return False  # on time: the two leave together without waiting
        if self.parked and next_due >= due - PARTNER_TOLERANCE_S:
            return False  # it holds its frame of the same time: both go now
        # Parked on an earlier frame, it still has that one (and the rest up to ``due``) to
        # send: it goes as soon as it sees this track waiting.
        return next_due <= due + PARTNER_TOLERANCE_S

    def drop_queued(self) -> list[TimedFrame[FrameT]]:
        """Drop every frame not yet sent (interrupt); returns them in order.

        That includes the frame ``recv`` is holding until its due time: ``recv`` then sends
        the next frame fed instead.
        """
        dropped: list[TimedFrame[FrameT]] = []
        if self._pacing is not None and not self._pacing_dropped:
            dropped.append(self._pacing)
            self._pacing_dropped = True
        dropped.extend(self._pending)
        self._pending.clear()
        self.progress.notify()
        return dropped

    async def recv(self) -> FrameT:
        while True:
            item = await self._next_fed()
            self._pacing, self._pacing_dropped = item, False
            try:
                await self._clock.sleep_until(item.due)
                await self._wait_for_partner(item.due)
            finally:
                self._pacing = None
            if not self._pacing_dropped:
                break
        if self.readyState != "live":
            raise MediaStreamError
        sent_at = self._clock.now()
        self.last_sent_at = sent_at
        self.progress.notify()
        if self._on_sent is not None:
            self._on_sent(frame_pts(item.frame), item.due, sent_at)
        return item.frame

    async def _next_fed(self) -> TimedFrame[FrameT]:
        """The oldest queued frame, once there is one; ``MediaStreamError`` once stopped."""
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._pending:
                return self._pending.popleft()
            self._fed.clear()
            await self._fed.wait()

    async def _wait_for_partner(self, due: float) -> None:
        """Wait (at most ``PARTNER_WAIT_MAX_S``) while the partner lags behind ``due``, or
        until this frame is dropped."""
        partner = self._partner
        if partner is None:
            return
        deadline = self._clock.now() + PARTNER_WAIT_MAX_S
        self.parked = True
        self.progress.notify()  # a partner waiting for this frame re-checks: it may go now
        try:
            if partner.parked:
                # It holds its frame for this one: let it go first, in this same loop step.
                # Going at once would leave it to run after whatever this task does next
                # (the sender's own work, a backlog after a stall): 40 ms apart once an hour.
                await asyncio.sleep(0)
            while not self._pacing_dropped and partner.lags_behind(due, self._clock.now()):
                if self._clock.now() >= deadline:
                    self.partner_waits_cut_short += 1
                    return
                await partner.progress.wait(self._clock, deadline)
        finally:
            self.parked = False

    def stop(self) -> None:
        if self.readyState == "live":
            self.drop_queued()  # unsent frames (up to a chunk: 14 MB of video) go now
        super().stop()
        self._fed.set()  # wake recv: it raises MediaStreamError
        self.progress.notify()


class AvatarVideoTrack(_PacedTrack[av.VideoFrame]):
    """The avatar's outgoing video: 25 fps, pts in 90 kHz ticks from the media clock."""

    kind = "video"


class AvatarAudioTrack(_PacedTrack[av.AudioFrame]):
    """The avatar's outgoing audio: 20 ms packets of 960 s16 mono samples at 48 kHz."""

    kind = "audio"

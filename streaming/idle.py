"""The session's cached idle loop: what plays after an interrupt, and while a session in
``idle_mode: loop`` is silent.

Owns ``IdleLoop``: it keeps the latest *rest chunk* -- 28 frames the engine generated from
silence after silence (or from silence at the session's start), so the mouth rests and the
head still moves -- as encoder-ready
yuv420p planes, and builds filler chunks from it (the frames played forwards then backwards,
so the loop has no seam, with silent audio) in microseconds per frame, with no engine work,
and fades the engine's next chunk in from the loop frame on screen (``ease_in``). Until a
rest chunk exists the avatar image is held. ``is_rest_audio`` says whether a chunk's
driving audio is silent enough to count; ``fade_from`` fades a chunk in from a given picture.

In ``idle_mode: generate`` steady-state idle is not made here: silent chunks go through the
engine like speech; in ``loop`` mode the loop plays whenever the session is silent
(docs/idle.md says what each costs). Knows nothing about sessions, engines or tracks.
``capture``, ``prepare`` and ``filler`` run in the session's conversion executor, one at a
time; an interrupt takes its first few ``video`` frames on the event loop. What they share
is a list swapped whole and a position counter, so a race costs at most a frame out of
order in the loop.
"""

from __future__ import annotations

import av
import numpy as np

from headcast.pipeline.media import frame_levels_dbfs
from headcast.streaming.clock import (
    AUDIO_CLOCK_RATE,
    AUDIO_PACKET_SAMPLES,
    AUDIO_TIME_BASE,
    VIDEO_TIME_BASE,
    audio_pts,
    chunk_frame_range,
    chunk_packet_range,
    video_pts,
)
from headcast.streaming.tracks import ENCODER_PIXEL_FORMAT, ChunkMedia

EASE_IN_FRAMES = 4
"""Frames (160 ms) over which the engine's first chunk after filler fades in from the last
loop frame played, so the hand-back from the loop to the engine shows no pose jump."""

REST_LEVEL_DBFS = -50.0
"""A chunk counts as silent when every 40 ms frame of its audio is below this RMS level
(the puppet's closed-mouth level)."""


def is_rest_audio(audio_16k: np.ndarray) -> bool:
    """True if every 40 ms frame of ``audio_16k`` (``[n]`` float32) is below the rest level."""
    return bool(np.all(frame_levels_dbfs(audio_16k) < REST_LEVEL_DBFS))


class IdleLoop:
    """The latest rest chunk of one session, and filler chunks made from it."""

    def __init__(self, fallback_rgb: np.ndarray, height: int, width: int) -> None:
        self.height = height
        self.width = width
        self._fallback_rgb = fallback_rgb
        self._planes: list[np.ndarray] = []
        """The loop: yuv420p planes ``[H*3/2, W]`` of the rest chunk's frames, in order."""
        self._position = 0
        self._last_played: np.ndarray | None = None
        """The planes of the loop frame handed out last (what is on screen when filler ends)."""
        self.captured_index: int | None = None
        """Media index of the chunk the loop was taken from (None: the avatar is held)."""

    @property
    def has_rest_chunk(self) -> bool:
        """True once a rest chunk was captured (else filler holds the avatar image)."""
        return bool(self._planes)

    def capture(self, media: ChunkMedia) -> None:
        """Keep ``media``'s 28 converted frames as the loop (a copy of their planes)."""
        self._planes = [frame.to_ndarray() for frame in media.video]
        self.captured_index = media.index

    def restart(self) -> None:
        """The next filler starts from the loop's first frame (an interrupt)."""
        self._position = 0

    def release(self) -> None:
        """Drop the loop's frames (14 MB at 448x768) when the session closes, so they go at once
        rather than whenever the closed session's objects are garbage-collected."""
        self._planes = []
        self._last_played = None
        self.captured_index = None

    def prepare(self) -> None:
        """Convert the held avatar image once, so filler never converts colour (executor)."""
        if not self._planes:
            self._planes = [self._fallback_planes()]

    def filler(self, index: int, video_from: int, audio_from: int) -> ChunkMedia:
        """Chunk ``index`` as idle media: loop frames and silence, on the media clock.

        Only video frames with index >= ``video_from`` and audio packets with index >=
        ``audio_from`` are built (the rest of a chunk cut by an interrupt was already sent).
        """
        frames = [n for n in chunk_frame_range(index) if n >= video_from]
        packets = [m for m in chunk_packet_range(index) if m >= audio_from]
        return ChunkMedia(index=index, video=self.video(frames), audio=self.silence(packets))

    def video(self, frame_indices: list[int]) -> list[av.VideoFrame]:
        """Loop frames with the pts of ``frame_indices`` (about 1 ms each: a plane copy)."""
        self.prepare()
        video: list[av.VideoFrame] = []
        for frame_index in frame_indices:
            frame = av.VideoFrame.from_ndarray(self._next_plane(), format=ENCODER_PIXEL_FORMAT)
            frame.pts = video_pts(frame_index)
            frame.time_base = VIDEO_TIME_BASE
            video.append(frame)
        return video

    @staticmethod
    def silence(packet_indices: list[int]) -> list[av.AudioFrame]:
        """Silent outgoing audio packets with the pts of ``packet_indices``."""
        samples = np.zeros((1, AUDIO_PACKET_SAMPLES), dtype=np.int16)
        audio: list[av.AudioFrame] = []
        for packet_index in packet_indices:
            packet = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            packet.sample_rate = AUDIO_CLOCK_RATE
            packet.pts = audio_pts(packet_index)
            packet.time_base = AUDIO_TIME_BASE
            audio.append(packet)
        return audio

    def ease_in(self, media: ChunkMedia, frames: int = EASE_IN_FRAMES) -> ChunkMedia:
        """``media`` with its first ``frames`` video frames faded in from the loop frame
        played last: frame ``i`` is ``(i + 1) / (frames + 1)`` of its own picture (executor)."""
        start = self._last_played
        if start is None:
            return media
        return fade_from(start, media, frames)

    def _next_plane(self) -> np.ndarray:
        count = len(self._planes)
        if count == 1:
            plane = self._planes[0]
        else:
            period = 2 * (count - 1)
            step = self._position % period
            self._position += 1
            plane = self._planes[step if step < count else period - step]
        self._last_played = plane
        return plane

    def _fallback_planes(self) -> np.ndarray:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(self._fallback_rgb), format="rgb24")
        frame = frame.reformat(width=self.width, height=self.height, format=ENCODER_PIXEL_FORMAT)
        return frame.to_ndarray()


def fade_from(start: np.ndarray, media: ChunkMedia, frames: int = EASE_IN_FRAMES) -> ChunkMedia:
    """``media`` with its first ``frames`` video frames faded in from ``start`` (yuv420p
    planes ``[H*3/2, W]``): frame ``i`` is ``(i + 1) / (frames + 1)`` of its own picture.
    Used both ways: from the loop into the engine's chunk, and from the engine's last frame
    into the loop (``idle_mode: loop``). A ``start`` of another size fades nothing."""
    video = list(media.video)
    for i, frame in enumerate(video[:frames]):
        planes = frame.to_ndarray()  # [H*3/2, W] yuv420p
        if planes.shape != start.shape:
            return media  # another size (the loop predates a reconfiguration): no fade
        weight = (i + 1) / (frames + 1)
        mixed = start + weight * (planes.astype(np.float32) - start)
        eased = av.VideoFrame.from_ndarray(
            np.rint(mixed).astype(np.uint8), format=ENCODER_PIXEL_FORMAT
        )
        eased.pts, eased.time_base = frame.pts, frame.time_base
        video[i] = eased
    return ChunkMedia(index=media.index, video=video, audio=media.audio)

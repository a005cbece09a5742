"""The session's audio intake: received speech, resampled to 16 kHz mono float32, buffered.

Owns ``AudioIntake`` (a bounded FIFO the scheduler takes 17,920-sample chunks from, padding
with silence when less has arrived) and ``receive_track`` (reads a WebRTC audio track --
48 kHz Opus decoded by aiortc into ``av.AudioFrame``s -- until it ends, feeding the intake).

Knows nothing about engines, the outgoing tracks or the server.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from headcast.pipeline.media import SAMPLE_RATE_HZ
from headcast.streaming.resample import Downsampler

logger = logging.getLogger(__name__)

ACTIVITY_EVERY_FRAMES = 50
"""Received audio frames (20 ms each) per activity report: about one report a second."""


class AudioIntake:
    """A FIFO of 16 kHz mono float32 samples, bounded to ``max_samples``.

    When more than ``max_samples`` are buffered (the client sends faster than the chunks
    are taken, e.g. a burst after a network stall), the oldest samples are dropped so
    latency cannot grow without bound; ``dropped_samples`` counts them.
    """

    def __init__(self, max_samples: int) -> None:
        if max_samples < 1:
            raise ValueError(f"the intake must hold at least 1 sample, got {max_samples}")
        self.max_samples = max_samples
        self._blocks: deque[np.ndarray] = deque()
        self._buffered = 0
        self.dropped_samples = 0
        self.received_samples = 0

    @property
    def buffered(self) -> int:
        """Samples waiting to be taken."""
        return self._buffered

    def push(self, samples: np.ndarray) -> None:
        """Append ``[n]`` samples (float32 in [-1, 1] at 16 kHz)."""
        if samples.ndim != 1:
            raise ValueError(f"the intake takes mono [n] samples, got shape {samples.shape}")
        if samples.size == 0:
            return
        self._blocks.append(samples.astype(np.float32, copy=False))
        self._buffered += samples.size
        self.received_samples += samples.size
        overflow = self._buffered - self.max_samples
        if overflow > 0:
            self._discard(overflow)
            self.dropped_samples += overflow
            logger.debug(
                "audio intake over %.2f s: dropped the oldest %d samples",
                self.max_samples / SAMPLE_RATE_HZ,
                overflow,
            )

    def take(self, count: int) -> tuple[np.ndarray, int]:
        """Take ``count`` samples, padded with trailing silence if fewer are buffered.

        Returns ``(samples [count] float32, how many of them were received audio)``.
        """
        out = self.peek(count)
        filled = min(count, self._buffered)
        self._discard(filled)
        return out, filled

    def peek(self, count: int) -> np.ndarray:
        """The next ``count`` samples ``take`` would return (padded with silence), left in
        the intake. ``[count]`` float32."""
        out = np.zeros(count, dtype=np.float32)
        filled = 0
        for block in self._blocks:
            if filled >= count:
                break
            n = min(count - filled, block.size)
            out[filled : filled + n] = block[:n]
            filled += n
        return out

    def clear(self) -> None:
        """Drop everything buffered (interrupt, close)."""
        self._blocks.clear()
        self._buffered = 0

    def _discard(self, count: int) -> None:
        while count > 0:
            block = self._blocks[0]
            if block.size <= count:
                self._blocks.popleft()
                count -= block.size
                self._buffered -= block.size
            else:
                self._blocks[0] = block[count:]
                self._buffered -= count
                count = 0


async def receive_track(
    track: MediaStreamTrack,
    intake: AudioIntake,
    on_activity: Callable[[], None] | None = None,
) -> None:
    """Read ``track`` until it ends, resampling every frame into ``intake``.

    ``on_activity()`` is called on the first frame and then every ``ACTIVITY_EVERY_FRAMES``
    frames: a caller streaming its microphone is an active client. Returns when the track
    ends (the peer stopped sending or the connection closed).
    """
    downsampler = Downsampler()
    frames = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            logger.debug("inbound audio track ended after %d frames", frames)
            return
        if not isinstance(frame, av.AudioFrame):
            raise TypeError(f"an audio track gave a {type(frame).__name__}, not an audio frame")
        if on_activity is not None and frames % ACTIVITY_EVERY_FRAMES == 0:
            on_activity()
        frames += 1
        intake.push(downsampler.process(frame))

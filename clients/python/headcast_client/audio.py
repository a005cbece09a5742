"""Audio sources for the client: a WebRTC audio track that plays a numpy array in real time.

Owns ``ArrayAudioTrack`` (20 ms s16 mono frames at 48 kHz from a float32 signal, paced to
wall time, then the signal again, silence or the end of the track) -- used by tests and load drivers
to act as a microphone. Knows nothing about sessions or the server.
"""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

TRACK_SAMPLE_RATE_HZ = 48_000
"""Sample rate of the frames the track produces, in Hz."""

FRAME_SAMPLES = 960
"""Samples per frame (20 ms at 48 kHz)."""

INT16_FULL_SCALE = 32767


class ArrayAudioTrack(MediaStreamTrack):
    """Plays ``samples`` (float32 in [-1, 1] at ``sample_rate``) as a live microphone would.

    Frames are released at wall-clock pace from the first ``recv``. After the signal, the
    track plays it again from the start when ``loop`` (a speaker who goes on for as long as
    the track is read, from a clip of bounded size), else sends silence when
    ``then_silence`` (a mic that stays open), else it ends.
    """

    kind = "audio"

    def __init__(
        self,
        samples: np.ndarray,
        sample_rate: int = TRACK_SAMPLE_RATE_HZ,
        *,
        then_silence: bool = True,
        loop: bool = False,
    ) -> None:
        super().__init__()
        if samples.ndim != 1:
            raise ValueError(f"ArrayAudioTrack plays mono [n] samples, got shape {samples.shape}")
        if sample_rate != TRACK_SAMPLE_RATE_HZ:
            samples = _resample_linear(samples, sample_rate, TRACK_SAMPLE_RATE_HZ)
        self._pcm = (np.clip(samples, -1.0, 1.0) * INT16_FULL_SCALE).astype(np.int16)
        self._then_silence = then_silence
        self._loop = loop and samples.size > 0
        self._index = 0
        self._start: float | None = None
        self._time_base = fractions.Fraction(1, TRACK_SAMPLE_RATE_HZ)

    @property
    def seconds_played(self) -> float:
        return self._index * FRAME_SAMPLES / TRACK_SAMPLE_RATE_HZ

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._index * FRAME_SAMPLES / TRACK_SAMPLE_RATE_HZ
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        begin = self._index * FRAME_SAMPLES
        if self._loop:
            positions = np.arange(begin, begin + FRAME_SAMPLES) % self._pcm.size
            chunk = self._pcm[positions]
        else:
            chunk = self._pcm[begin : begin + FRAME_SAMPLES]
        if chunk.size < FRAME_SAMPLES:
            if not self._then_silence and chunk.size == 0:
                self.stop()
                raise MediaStreamError
            chunk = np.concatenate([chunk, np.zeros(FRAME_SAMPLES - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = TRACK_SAMPLE_RATE_HZ
        frame.pts = begin
        frame.time_base = self._time_base
        self._index += 1
        return frame


def _resample_linear(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Linear-interpolation resampling (test signals only; not for listening quality)."""
    duration = samples.size / rate_in
    t_out = np.arange(round(duration * rate_out)) / rate_out
    t_in = np.arange(samples.size) / rate_in
    return np.interp(t_out, t_in, samples).astype(np.float32)

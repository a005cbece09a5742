"""Sample-rate conversion between the WebRTC side (48 kHz) and the engines (16 kHz mono).

Owns ``Downsampler`` (any decoded ``av.AudioFrame`` -> 16 kHz mono float32, via
libswresample) and ``Upsampler`` (16 kHz float32 -> 48 kHz float32, an exact x3 polyphase
FIR with carried state: ``n`` samples in always give ``3n`` samples out, so each chunk's
17,920 samples become exactly 53,760 outgoing samples and the two tracks cannot drift).

Knows nothing about sessions, tracks or peer connections.
"""

from __future__ import annotations

import av
import numpy as np

from headcast.pipeline.media import SAMPLE_RATE_HZ
from headcast.streaming.clock import UPSAMPLE_FACTOR

UPSAMPLER_TAPS_PER_PHASE = 17
"""FIR taps per polyphase branch (51 taps in all; odd, so the delay is whole samples)."""

UPSAMPLER_KAISER_BETA = 8.0
"""Kaiser window shape of the interpolation filter (about 80 dB stop-band attenuation)."""

UPSAMPLER_CUTOFF = 0.92
"""Pass-band edge as a fraction of the 16 kHz input's Nyquist frequency (8 kHz)."""

UPSAMPLER_DELAY_OUT_SAMPLES = (UPSAMPLE_FACTOR * UPSAMPLER_TAPS_PER_PHASE - 1) // 2  # 25
"""Group delay of the upsampler, in 48 kHz samples (about 0.5 ms)."""


class Downsampler:
    """Decoded WebRTC audio (any rate, layout, format) -> 16 kHz mono float32 samples.

    Channels are averaged (aiortc decodes even a mono Opus stream to identical stereo
    channels; libswresample's own stereo->mono mix would add 3 dB to them). libswresample
    keeps a few samples of filter history: the output lags the input by about 1 ms, and
    ``flush`` returns the remainder, so no samples are lost over a stream.
    """

    def __init__(self) -> None:
        # layout=None keeps the input's channels; they are averaged in _collect.
        self._resampler = av.AudioResampler(format="fltp", layout=None, rate=SAMPLE_RATE_HZ)

    def process(self, frame: av.AudioFrame) -> np.ndarray:
        """Resample one frame; returns ``[n]`` float32 (``n`` may be 0 while priming)."""
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """Return the samples still held in the filter at the end of a stream."""
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        planes = [f.to_ndarray() for f in frames]  # each [channels, n] float32 (planar)
        mono: np.ndarray = np.concatenate(planes, axis=1).mean(axis=0, dtype=np.float32)  # [n]
        return mono


def _interpolation_filter() -> np.ndarray:
    """The x3 low-pass prototype, split into ``[UPSAMPLE_FACTOR, taps_per_phase]`` phases."""
    length = UPSAMPLE_FACTOR * UPSAMPLER_TAPS_PER_PHASE
    centre = (length - 1) / 2
    n = np.arange(length) - centre
    cutoff = UPSAMPLER_CUTOFF / UPSAMPLE_FACTOR  # fraction of the 48 kHz Nyquist frequency
    taps = cutoff * np.sinc(cutoff * n) * np.kaiser(length, UPSAMPLER_KAISER_BETA)
    taps *= UPSAMPLE_FACTOR / taps.sum()  # unity DC gain after zero-stuffing
    # phase r produces output samples 3i + r from taps r, r+3, r+6, ...
    return np.stack([taps[r::UPSAMPLE_FACTOR] for r in range(UPSAMPLE_FACTOR)])


class Upsampler:
    """16 kHz float32 -> 48 kHz float32, exactly ``UPSAMPLE_FACTOR`` samples out per sample in.

    Streaming: the filter history is carried between calls, so processing a signal in blocks
    gives the same samples as processing it at once. The output lags the input by
    ``UPSAMPLER_DELAY_OUT_SAMPLES`` (about 0.5 ms), equally for every chunk.
    """

    def __init__(self) -> None:
        self._phases = _interpolation_filter()  # [3, taps_per_phase]
        self._history = np.zeros(UPSAMPLER_TAPS_PER_PHASE - 1, dtype=np.float64)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Upsample ``[n]`` samples to ``[3n]`` float32 samples."""
        if samples.ndim != 1:
            raise ValueError(f"the upsampler takes mono [n] samples, got shape {samples.shape}")
        if samples.size == 0:
            return np.zeros(0, dtype=np.float32)
        extended = np.concatenate([self._history, samples.astype(np.float64)])
        out = np.empty((samples.size, UPSAMPLE_FACTOR), dtype=np.float64)  # [n, 3]
        for phase in range(UPSAMPLE_FACTOR):
            out[:, phase] = np.convolve(extended, self._phases[phase], mode="valid")
        self._history = extended[-(UPSAMPLER_TAPS_PER_PHASE - 1) :]
        return out.reshape(-1).astype(np.float32)

"""Reading an audio file from disk for offline generation.

Owns ``read_audio_file``: decode the first audio stream of any file PyAV (FFmpeg) can read
and return it twice: as the 16 kHz mono float32 samples the engines consume, and as the
original sound at the file's own sample rate (mono, or stereo with more channels downmixed)
for muxing the input audio back. Owns the typed errors for a missing, undecodable or empty
file, each worded so the user knows what to pass instead.

The engine's mono signal is the mean of the channels (identical channels keep their level;
FFmpeg's own stereo-to-mono matrix would add 3 dB).

Knows nothing about engines, video, the container being written, sessions or the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from streaming.resample import Downsampler

PLANAR_FLOAT_FORMAT = "fltp"
"""PyAV sample format of the kept original: 32-bit float, one plane per channel."""

MONO_LAYOUT = "mono"
STEREO_LAYOUT = "stereo"

DOWNMIX_OPTIONS = {"rematrix_maxval": "1.0"}
"""libswresample options for downmixing more than two channels to stereo: normalise the
matrix so a full-scale input stays within [-1, 1]."""

SUPPORTED_FORMATS_HINT = "WAV, MP3, FLAC, M4A, OGG, ..."


class AudioFileError(ValueError):
    """An audio file is missing, cannot be decoded, or has no audio stream."""


class EmptyAudioError(AudioFileError):
    """An audio file decodes to no samples at all."""


@dataclass(frozen=True)
class AudioClip:
    """A decoded audio file: engine-ready samples plus the original sound for muxing.

    ``samples`` is ``[n]`` float32 in [-1, 1] at 16 kHz mono. ``original`` is
    ``[channels, m]`` float32 (1 or 2 channels, ``layout`` "mono" or "stereo") at the file's
    own rate ``original_rate_hz``.
    """

    samples: np.ndarray  # [n] float32, 16 kHz mono
    original: np.ndarray  # [C, m] float32, planar, C in {1, 2}
    original_rate_hz: int

    @property
    def layout(self) -> str:
        """FFmpeg channel layout name of ``original``."""
        return MONO_LAYOUT if self.original.shape[0] == 1 else STEREO_LAYOUT

    @property
    def duration_s(self) -> float:
        """Duration of the original audio, in seconds."""
        return self.original.shape[1] / self.original_rate_hz


def read_audio_file(path: str | Path) -> AudioClip:
    """Decode the first audio stream of ``path`` (any rate, layout and codec FFmpeg reads).

    Raises AudioFileError when the file is missing, not decodable or has no audio stream,
    and EmptyAudioError when it decodes to no samples.
    """
    file = Path(path)
    if not file.is_file():
        raise AudioFileError(
            f"audio file not found: {file}. "
            f"Pass the path of an existing audio file ({SUPPORTED_FORMATS_HINT})."
        )
    try:
        with av.open(str(file), mode="r") as container:
            if not container.streams.audio:
                raise AudioFileError(
                    f"{file} has no audio stream. Pass an audio file ({SUPPORTED_FORMATS_HINT})."
                )
            return _decode(file, container.decode(container.streams.audio[0]))
    except AudioFileError:
        raise
    except (av.error.FFmpegError, ValueError) as exc:  # ValueError: format changes mid-stream
        raise AudioFileError(
            f"cannot decode audio file {file}: {exc}. "
            f"Pass a valid audio file ({SUPPORTED_FORMATS_HINT})."
        ) from exc


def _decode(file: Path, frames: Iterator[av.AudioFrame]) -> AudioClip:
    """Convert every decoded frame to planar float (mono/stereo) and to 16 kHz mono."""
    to_planar: av.AudioResampler | None = None
    to_engine: _MeanDownmixer | None = None
    original_parts: list[np.ndarray] = []
    for frame in frames:
        if frame.samples == 0:
            continue
        if to_planar is None or to_engine is None:  # the first frame fixes rate and layout
            layout = MONO_LAYOUT if len(frame.layout.channels) == 1 else STEREO_LAYOUT
            to_planar = av.AudioResampler(
                format=PLANAR_FLOAT_FORMAT,
                layout=layout,
                rate=frame.sample_rate,
                options=DOWNMIX_OPTIONS,
            )
            to_engine = _MeanDownmixer(frame.sample_rate)
        for planar in to_planar.resample(frame):
            original_parts.append(to_engine.feed(planar.to_ndarray()))  # [C, k]
    if to_planar is None or to_engine is None:
        raise EmptyAudioError(
            f"audio file {file} contains no samples. Pass a file with some sound in it."
        )
    for planar in to_planar.resample(None):
        original_parts.append(to_engine.feed(planar.to_ndarray()))
    return AudioClip(
        samples=to_engine.finish(),  # [n]
        original=np.concatenate(original_parts, axis=1),  # [C, m]
        original_rate_hz=to_engine.rate_hz,
    )


class _MeanDownmixer:
    """Planar float blocks ``[C, k]`` at one rate -> 16 kHz mono, the channels averaged."""

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz = rate_hz
        self._downsampler = Downsampler()
        self._pts = 0
        self._parts: list[np.ndarray] = []

    def feed(self, planar: np.ndarray) -> np.ndarray:
        """Take one block ``[C, k]``; returns it unchanged for the caller to keep."""
        mono = planar.mean(axis=0, keepdims=True, dtype=np.float32)  # [1, k]
        frame = av.AudioFrame.from_ndarray(mono, format=PLANAR_FLOAT_FORMAT, layout=MONO_LAYOUT)
        frame.sample_rate = self.rate_hz
        frame.pts = self._pts
        self._pts += mono.shape[1]
        self._parts.append(self._downsampler.process(frame))
        return planar

    def finish(self) -> np.ndarray:
        """Flush the resampler; all 16 kHz samples so far as ``[n]`` float32."""
        self._parts.append(self._downsampler.flush())
        return np.concatenate(self._parts).astype(np.float32, copy=False)

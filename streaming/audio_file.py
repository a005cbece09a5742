"""Reading an audio file from disk for offline generation.

Owns ``read_audio_file``: decode the first audio stream of any file PyAV (FFmpeg) can read
and return it twice: as the 16 kHz mono float32 samples the engines consume, and as the
original sound at the file's own sample rate (mono, or stereo with more channels downmixed)
for muxing the input audio back. Owns the typed errors for a missing, undecodable or empty
file, each worded so the user knows what to pass instead.

The engine's mono signal is the mean of the (at most two) channels, as
``streaming.resample.Downsampler`` mixes it: identical channels keep their level.

Knows nothing about engines, video, the container being written, sessions or the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from headcast.streaming.resample import Downsampler

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
        samples: int = self.original.shape[1]
        return samples / self.original_rate_hz


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
    to_engine = Downsampler()  # averages the channels
    rate_hz = 0
    original_parts: list[np.ndarray] = []
    engine_parts: list[np.ndarray] = []
    for frame in frames:
        if frame.samples == 0:
            continue
        if to_planar is None:  # the first frame fixes the original rate and layout
            rate_hz = frame.sample_rate
            layout = MONO_LAYOUT if len(frame.layout.channels) == 1 else STEREO_LAYOUT
            to_planar = av.AudioResampler(
                format=PLANAR_FLOAT_FORMAT, layout=layout, rate=rate_hz, options=DOWNMIX_OPTIONS
            )
        for planar in to_planar.resample(frame):
            original_parts.append(planar.to_ndarray())  # [C, k]
            engine_parts.append(to_engine.process(planar))  # [k * 16000 / rate]
    if to_planar is None:
        raise EmptyAudioError(
            f"audio file {file} contains no samples. Pass a file with some sound in it."
        )
    for planar in to_planar.resample(None):
        original_parts.append(planar.to_ndarray())
        engine_parts.append(to_engine.process(planar))
    engine_parts.append(to_engine.flush())
    return AudioClip(
        samples=np.concatenate(engine_parts).astype(np.float32, copy=False),  # [n]
        original=np.concatenate(original_parts, axis=1),  # [C, m]
        original_rate_hz=rate_hz,
    )

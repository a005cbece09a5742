"""Media constants and the values that cross the engine boundary.

Owns the one media clock's units (16 kHz audio, 25 fps video, 17,920 samples = 28 frames per
chunk), the plain data types a chunk job and its result are made of, and the per-frame audio
level (``frame_levels_dbfs``) that the puppet's mouth and the session's speech and rest
detection share. Knows nothing about
models, threads, asyncio or codecs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

SAMPLE_RATE_HZ: Final = 16_000
"""Sample rate of the audio the engines consume, in Hz (``Final``: it also types as
``Literal[16000]`` where a literal rate is expected)."""

VIDEO_FPS = 25
"""Frame rate of the generated video, in frames per second."""

SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // VIDEO_FPS  # 640 samples = 40 ms
"""Audio samples that drive one video frame."""

CHUNK_FRAMES = 28
"""New video frames per chunk (33 generated minus 5 motion frames carried over)."""

CHUNK_SAMPLES = CHUNK_FRAMES * SAMPLES_PER_FRAME  # 17,920 samples
"""Audio samples per chunk job."""

CHUNK_SECONDS = CHUNK_SAMPLES / SAMPLE_RATE_HZ  # 1.12 s
"""Media time covered by one chunk, in seconds."""

DEFAULT_HEIGHT = 768
"""Default output frame height in pixels."""

DEFAULT_WIDTH = 448
"""Default output frame width in pixels."""

RESEED_FRAMES = 5
"""Frames on screen a re-seed carries: FlashTalk's motion frames (the last 5 frames of a
chunk condition the next one)."""

RGB_CHANNELS = 3

MS_PER_S = 1000
"""Milliseconds per second (events and the API report media durations in whole ms)."""

RMS_FLOOR = 1e-10
"""Added to an RMS before taking the log, so digital silence maps to a finite level."""


def frame_levels_dbfs(audio: np.ndarray) -> np.ndarray:
    """RMS level of each 640-sample (40 ms) frame, in dB re full scale.

    Frame i covers samples ``[640*i, 640*(i+1))``. ``audio`` is [F*640] float32.
    Returns [F] float32.
    """
    if audio.ndim != 1 or audio.shape[0] % SAMPLES_PER_FRAME:
        raise ValueError(
            f"expected a 1-D multiple of {SAMPLES_PER_FRAME} samples, got {audio.shape}"
        )
    frames = audio.reshape(-1, SAMPLES_PER_FRAME).astype(np.float32)  # [F, 640]
    rms = np.sqrt(np.mean(frames * frames, axis=1))  # [F]
    levels: np.ndarray = (20.0 * np.log10(rms + RMS_FLOOR)).astype(np.float32)  # [F]
    return levels


AvatarAssets = dict[str, np.ndarray]
"""What an engine computed once for an avatar (the diffusion engines' conditioning, the
puppet's prepared art), as named host arrays: the server stores them and hands them back
with the avatar (``Avatar.assets``); only the engine that made them knows what they mean."""


@dataclass(frozen=True)
class Avatar:
    """What a session asks the engine to animate.

    ``image`` is an RGB uint8 array ``[H, W, 3]`` of any size (the engine resizes and
    crops it); ``name`` keys the per-avatar conditioning cache. ``assets``, when given, are
    what the same engine's ``prepare_avatar`` made for this avatar: the engine uses them
    instead of computing them again.
    """

    name: str
    image: np.ndarray  # [H, W, 3] uint8
    prompt: str | None = None
    assets: AvatarAssets | None = None


@dataclass(frozen=True)
class PreparationStep:
    """One step of an avatar's preparation on the device thread (``Engine.prepare_avatar``):
    how far it got, in (0, 1], and on the last step the avatar's assets."""

    progress: float
    assets: AvatarAssets | None = None


@dataclass(frozen=True)
class Reseed:
    """What a session showed while the engine was not generating for it (``idle_mode:
    loop``): the engine re-seeds its motion state from it before the next chunk, so that
    chunk continues from the picture on screen instead of from the engine's last chunk."""

    frames: np.ndarray  # [RESEED_FRAMES, H, W, 3] uint8 RGB, the last frames shown, oldest first
    silent_samples: int
    """Media samples (16 kHz) that played as silence since the engine's last chunk of this
    session: the engine's audio history should hold them as silence."""

    def __post_init__(self) -> None:
        frames = self.frames
        if frames.ndim != 4 or frames.shape[0] != RESEED_FRAMES or frames.shape[3] != RGB_CHANNELS:
            raise ValueError(
                f"a re-seed carries [{RESEED_FRAMES}, H, W, {RGB_CHANNELS}] frames, "
                f"got {frames.shape}"
            )
        if frames.dtype != np.uint8:
            raise ValueError(f"re-seed frames must be uint8 RGB, got {frames.dtype}")
        if self.silent_samples < 0:
            raise ValueError(f"silent_samples must be >= 0, got {self.silent_samples}")


@dataclass(frozen=True)
class ChunkJob:
    """One chunk of audio to turn into frames: media index ``index``, 17,920 samples.

    ``reseed``: the engine re-seeds the session's motion state from it first (the session
    played its idle loop since its last chunk)."""

    index: int
    audio: np.ndarray  # [CHUNK_SAMPLES] float32 in [-1, 1] at 16 kHz
    reseed: Reseed | None = None

    def __post_init__(self) -> None:
        if self.audio.shape != (CHUNK_SAMPLES,):
            raise ValueError(
                f"a chunk job carries exactly {CHUNK_SAMPLES} samples, got {self.audio.shape}"
            )
        if self.audio.dtype != np.float32:
            raise ValueError(f"chunk audio must be float32, got {self.audio.dtype}")


@dataclass(frozen=True)
class Chunk:
    """The result of one chunk job: 28 frames and the exact samples that drove them.

    Chunk ``index`` covers samples ``[17920*index, 17920*(index+1))`` and frames
    ``[28*index, 28*(index+1))`` of the session's one media clock.
    """

    index: int
    frames: np.ndarray  # [CHUNK_FRAMES, H, W, 3] uint8 RGB
    audio: np.ndarray  # [CHUNK_SAMPLES] float32 in [-1, 1] at 16 kHz
    compute_seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def rtf(self) -> float:
        """Real-time factor of this chunk: compute time over media time (≤ 1 keeps up)."""
        return self.compute_seconds / CHUNK_SECONDS

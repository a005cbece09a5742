"""OmniAvatar's audio conditioning: a whole clip -> per-frame wav2vec2 features -> segments.

Owns: the frame count of a clip and its padding so that segments tile it exactly (the first
segment brings ``L - 1`` new frames, every later one ``L - overlap``), ``OmniAudioEncoder``
(zero-mean/unit-variance over the whole clip, zero padding to whole frames, wav2vec2 with
its conv features resampled to 25 fps before the transformer, and per frame
``cat(last_hidden_state, every hidden state)``: 14 x 768 = 10,752 features for wav2vec2
base) and ``segment_audio`` / ``next_window`` (each segment's window: a zero frame first,
then later segments start with the previous window's last ``overlap`` rows).

Must not know about the DiT, the VAE, files or sessions. wav2vec2 runs in float32 as the
official code runs it; the caller casts the features for the DiT.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2Model

from headcast.pipeline.audio import (
    Wav2VecStreamEncoder,
    wav2vec_hidden_states,
    zero_mean_unit_variance,
)
from headcast.pipeline.media import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME, VIDEO_FPS

SILENCE_PREFIX_S = 0.3
"""Silence the official ``main()`` prepends to the audio before anything else (seconds)."""

FIRST_FIXED_FRAMES = 1
"""Frames the first segment takes from its reference (the image itself)."""


def clip_frames(samples: int) -> int:
    """Video frames a clip of ``samples`` 16 kHz samples covers (the official float formula,
    ``ceil(samples / 16000 * 25)``)."""
    return math.ceil(samples / SAMPLE_RATE_HZ * VIDEO_FPS)


def padded_frames(frames: int, segment_frames: int, overlap: int) -> int:
    """``frames`` rounded up so the segments tile it exactly: ``L - 1`` frames for the
    first, ``L - overlap`` for each later one."""
    first = segment_frames - FIRST_FIXED_FRAMES
    later = segment_frames - overlap
    if frames <= first:
        return first
    return first + math.ceil((frames - first) / later) * later


def segment_count(frames: int, segment_frames: int, overlap: int) -> int:
    """Segments needed for ``frames`` video frames (after padding)."""
    padded = padded_frames(frames, segment_frames, overlap)
    return 1 + (padded - (segment_frames - FIRST_FIXED_FRAMES)) // (segment_frames - overlap)


class OmniAudioEncoder:
    """wav2vec2 features of a whole clip, one row per video frame (shared, read-only)."""

    def __init__(self, model: Wav2Vec2Model, *, normalize_input: bool = True) -> None:
        self.model = model.eval().requires_grad_(False)  # type: ignore[no-untyped-call]  # transformers leaves eval() unannotated
        self.normalize_input = normalize_input

    @classmethod
    def from_dir(cls, path: Path, *, device: torch.device | str) -> OmniAudioEncoder:
        """Load ``wav2vec2-base-960h`` (Hugging Face layout) in float32, offline only."""
        stream = Wav2VecStreamEncoder.from_dir(path, device=device, dtype=torch.float32)
        return cls(stream.model, normalize_input=stream.normalize_input)

    @property
    def features_per_frame(self) -> int:
        """``(layers + 2) * hidden``: the last layer, then every hidden state (10,752)."""
        config = self.model.config
        features: int = (config.num_hidden_layers + 2) * config.hidden_size
        return features

    def input_values(self, samples: np.ndarray, frames: int) -> torch.Tensor:
        """Normalised samples zero-padded to ``frames`` whole frames: ``[1, frames * 640]``."""
        values = np.asarray(samples, dtype=np.float32)
        if self.normalize_input:
            values = zero_mean_unit_variance(values)
        padded = np.zeros(frames * SAMPLES_PER_FRAME, dtype=np.float32)
        padded[: values.size] = values[: padded.size]
        return torch.from_numpy(padded)[None]  # [1, frames * 640]

    @torch.no_grad()
    def encode(self, samples: np.ndarray, frames: int) -> torch.Tensor:
        """16 kHz mono samples -> ``[frames, features_per_frame]`` float32 on the model's device."""
        return self.features(self.input_values(samples, frames), frames)

    @torch.no_grad()
    def features(self, values: torch.Tensor, frames: int) -> torch.Tensor:
        """Normalised samples ``[1, frames * 640]`` -> ``[frames, features_per_frame]``:
        per frame ``cat(last_hidden_state, every hidden state)``."""
        weight = next(self.model.parameters())
        values = values.to(weight.device, weight.dtype)
        states = wav2vec_hidden_states(self.model, values, frames)  # layers + 1 x [1, F, C]
        return torch.cat([states[-1], *states], dim=-1)[0]  # [F, (layers + 2) * C]


def segment_audio(
    embeddings: torch.Tensor,
    segment: int,
    segment_frames: int,
    overlap: int,
    previous: torch.Tensor | None,
) -> torch.Tensor:
    """The audio window of ``segment``: ``[segment_frames, C]``.

    Segment 0 is a zero row then ``embeddings[0 : L - 1]``; segment k > 0 is the last
    ``overlap`` rows of the previous window (``previous``) then the next ``L - overlap``
    rows. ``embeddings`` must be padded (``padded_frames``) so every window is whole.
    """
    first = segment_frames - FIRST_FIXED_FRAMES
    later = segment_frames - overlap
    if segment == 0:
        window = next_window(None, embeddings[:first], overlap)
    else:
        if previous is None:
            raise ValueError(f"segment {segment} needs the previous segment's window")
        start = first + (segment - 1) * later
        window = next_window(previous, embeddings[start : start + later], overlap)
    if window.shape[0] != segment_frames:
        raise ValueError(
            f"segment {segment} has {window.shape[0]} audio frames, expected {segment_frames}: "
            "pad the embeddings with padded_frames()"
        )
    return window


def next_window(previous: torch.Tensor | None, rows: torch.Tensor, overlap: int) -> torch.Tensor:
    """A segment's audio window from its new feature ``rows`` ``[n, C]``: after a zero row in
    the first segment (``previous`` None), after the previous window's last ``overlap`` rows
    in every later one. Returns ``[FIRST_FIXED_FRAMES + n, C]`` or ``[overlap + n, C]``."""
    if previous is None:
        prefix = rows.new_zeros(FIRST_FIXED_FRAMES, rows.shape[1])
    else:
        prefix = previous[-overlap:]
    return torch.cat([prefix, rows], dim=0)

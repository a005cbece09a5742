"""Integrated-loudness normalisation of mono audio (ITU-R BS.1770 via pyloudnorm).

Owns: one pyloudnorm ``Meter`` per sample rate (created lazily, held by the normaliser
object), the target loudness, and the rule for audio that cannot be measured. Must not
know about rings, chunks, wav2vec2 or sessions: it maps one 1-D array to another.

The official recipe normalises the 8 s audio window to -23 LUFS before wav2vec2; audio
whose loudness cannot be measured (digital silence, or fewer samples than one 400 ms
gating block) is returned unchanged, as the official code does for silence.
"""

from __future__ import annotations

import logging

import numpy as np
import pyloudnorm

logger = logging.getLogger(__name__)

TARGET_LOUDNESS_LUFS = -23.0
"""Loudness every audio window is normalised to, in LUFS (EBU R128 programme level)."""

LOUDNESS_SANITY_LIMIT_LU = 100.0
"""A measured loudness with ``|L| > 100`` LUFS (e.g. -inf for silence) is not normalised."""

LOUDNESS_BLOCK_SECONDS = 0.4
"""Length of one BS.1770 gating block, in seconds (pyloudnorm's default)."""


class LoudnessNormalizer:
    """Scale 1-D audio to a target integrated loudness.

    Keeps one ``pyloudnorm.Meter`` per sample rate, created on first use. A Meter records
    its last block loudness as an attribute, so one normaliser should be used from one
    thread at a time (the engine thread owns it).
    """

    def __init__(self, target_lufs: float = TARGET_LOUDNESS_LUFS) -> None:
        self.target_lufs = target_lufs
        self._meters: dict[int, pyloudnorm.Meter] = {}

    def meter(self, sample_rate: int) -> pyloudnorm.Meter:
        """The Meter for ``sample_rate`` (Hz), created the first time it is asked for."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        meter = self._meters.get(sample_rate)
        if meter is None:
            meter = pyloudnorm.Meter(sample_rate, block_size=LOUDNESS_BLOCK_SECONDS)
            self._meters[sample_rate] = meter
        return meter

    def measure(self, audio: np.ndarray, sample_rate: int) -> float:
        """Integrated loudness of ``audio`` in LUFS; -inf when it cannot be measured.

        Audio shorter than one gating block cannot be measured and reads as -inf.
        """
        samples = np.asarray(audio, dtype=np.float64)  # [N]
        if samples.ndim != 1:
            raise ValueError(f"expected mono audio of shape [N], got shape {samples.shape}")
        if samples.shape[0] < LOUDNESS_BLOCK_SECONDS * sample_rate:
            return float("-inf")
        return float(self.meter(sample_rate).integrated_loudness(samples))

    def normalize(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """``audio`` scaled to the target loudness, as float64 of shape [N].

        Silent or too-short audio (loudness not finite or beyond +-100 LUFS) is returned
        unchanged (as float64), without NaN, inf or warnings.
        """
        samples = np.asarray(audio, dtype=np.float64)  # [N]
        loudness = self.measure(samples, sample_rate)
        if not np.isfinite(loudness) or abs(loudness) > LOUDNESS_SANITY_LIMIT_LU:
            logger.debug("loudness %.1f LUFS is not measurable; audio left unchanged", loudness)
            return samples
        # Same formula as pyloudnorm.normalize.loudness, without its clipping warning.
        gain = np.power(10.0, (self.target_lufs - loudness) / 20.0)
        normalized: np.ndarray = gain * samples  # [N]
        return normalized

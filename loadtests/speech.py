"""A synthetic voice: audio that talks like a person, for load drivers and browser tests.

Owns ``speech_like``: a glottal-like harmonic source with a wandering pitch, shaped by vowel
formants that change every syllable, ~4 syllables per second and a pause between phrases, so
loudness (what the puppet's mouth follows) rises and falls as in speech. No randomness: the
same arguments give the same samples.
"""

from __future__ import annotations

import math

import numpy as np

SYLLABLE_S = 0.25
"""Length of one syllable (voiced part plus gap), in seconds."""

VOICED_FRACTION = 0.8
"""Share of each syllable that is voiced; the rest is a gap."""

PHRASE_S = 2.0
"""Length of one phrase, in seconds; its last ``PAUSE_S`` are silent."""

PAUSE_S = 0.4
"""Silence at the end of every phrase, in seconds."""

HARMONICS = 30
"""Harmonics of the pitch in the source."""

FORMANT_WIDTH_HZ = 110.0
"""Width of each formant's Gaussian gain, in Hz."""

VOWEL_FORMANTS_HZ = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]], dtype=np.float64
)
"""First three formants of /a/, /i/, /o/, /u/, cycled per syllable."""

PEAK = 0.5
"""Peak amplitude of the result (of full scale 1.0)."""


def speech_like(seconds: float, sample_rate: int) -> np.ndarray:
    """``seconds`` of mono speech-like audio at ``sample_rate``: float32 ``[n]`` in [-1, 1]."""
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError(f"need seconds > 0 and sample_rate > 0, got {seconds}, {sample_rate}")
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch_hz = 130.0 + 25.0 * np.sin(2 * math.pi * 0.6 * t) + 10.0 * np.sin(2 * math.pi * 2.3 * t)
    phase = 2 * math.pi * np.cumsum(pitch_hz) / sample_rate

    syllable = (t // SYLLABLE_S).astype(np.int64)
    formants = VOWEL_FORMANTS_HZ[syllable % len(VOWEL_FORMANTS_HZ)]  # [n, 3]
    voice = np.zeros_like(t)
    for harmonic in range(1, HARMONICS + 1):
        frequency = harmonic * pitch_hz  # [n]
        gain = np.exp(-(((frequency[:, None] - formants) / FORMANT_WIDTH_HZ) ** 2)).sum(axis=1)
        voice += gain * np.sin(harmonic * phase) / math.sqrt(harmonic)

    in_syllable = (t % SYLLABLE_S) / SYLLABLE_S
    envelope = np.sin(math.pi * np.clip(in_syllable / VOICED_FRACTION, 0.0, 1.0)) ** 2
    envelope[(t % PHRASE_S) >= PHRASE_S - PAUSE_S] = 0.0
    signal = voice * envelope
    peak = float(np.abs(signal).max())
    return (signal * (PEAK / peak)).astype(np.float32)

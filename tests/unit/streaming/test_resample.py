"""Sample-rate conversion: exact counts over long streams, no drift, and the right signal."""

from __future__ import annotations

import fractions

import av
import numpy as np

from headcast.streaming.resample import UPSAMPLER_DELAY_OUT_SAMPLES, Downsampler, Upsampler

FRAMES = 250  # 5 s of 20 ms frames


def _decoded_like_aiortc(samples: np.ndarray, pts: int) -> av.AudioFrame:
    """A 48 kHz s16 stereo frame, as aiortc's Opus decoder hands them over."""
    pcm = (samples * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None, :], format="s16", layout="stereo")
    frame.sample_rate = 48_000
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, 48_000)
    return frame


def test_downsampler_48k_stereo_to_16k_mono_has_exact_counts_and_no_drift() -> None:
    t = np.arange(FRAMES * 960) / 48_000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    down = Downsampler()
    lags = []
    total = 0
    for i in range(FRAMES):
        out = down.process(_decoded_like_aiortc(tone[960 * i : 960 * (i + 1)], 960 * i))
        assert out.dtype == np.float32 and out.ndim == 1
        total += out.size
        lags.append(320 * (i + 1) - total)
    # the filter holds back a constant few samples; it does not grow over the stream
    assert max(lags[10:]) == min(lags[10:]) <= 32
    total += down.flush().size
    assert total == FRAMES * 320


def test_downsampler_keeps_the_tone() -> None:
    t = np.arange(50 * 960) / 48_000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    down = Downsampler()
    out = np.concatenate(
        [
            down.process(_decoded_like_aiortc(tone[960 * i : 960 * (i + 1)], 960 * i))
            for i in range(50)
        ]
    )
    steady = out[1000:-1000]
    assert abs(np.sqrt(np.mean(steady**2)) - 0.5 / np.sqrt(2)) < 0.01
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.size)))
    assert abs(np.argmax(spectrum) * 16_000 / steady.size - 440) < 5


def test_upsampler_gives_exactly_three_samples_per_sample_in_any_blocking() -> None:
    rng = np.random.default_rng(0)
    signal = rng.uniform(-0.5, 0.5, 17_920 * 3).astype(np.float32)
    whole = Upsampler().process(signal)
    assert whole.shape == (17_920 * 9,)
    blocks = Upsampler()
    pieces, start = [], 0
    for size in (1, 639, 17_920, 5, 3000, 17_920 * 3):
        piece = signal[start : start + size]
        pieces.append(blocks.process(piece))
        assert pieces[-1].size == 3 * piece.size
        start += piece.size
        if start >= signal.size:
            break
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-6)


def test_upsampler_keeps_a_tone_at_its_level_and_frequency_with_a_fixed_delay() -> None:
    t16 = np.arange(16_000) / 16_000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t16)).astype(np.float32)
    out = Upsampler().process(tone)
    t48 = (np.arange(out.size) - UPSAMPLER_DELAY_OUT_SAMPLES) / 48_000
    expected = 0.5 * np.sin(2 * np.pi * 1000 * t48)
    np.testing.assert_allclose(out[500:-500], expected[500:-500], atol=0.01)

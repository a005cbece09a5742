"""streaming.audio_file: WAV files of any rate and layout come back as 16 kHz mono float32."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from headcast.pipeline.media import SAMPLE_RATE_HZ
from headcast.streaming.audio_file import AudioFileError, EmptyAudioError, read_audio_file

DURATION_S = 1.5
TONE_HZ = 440.0
INT16_FULL_SCALE = 32767
LENGTH_TOLERANCE_SAMPLES = 4
"""The 16 kHz length may differ from duration x 16 kHz by the resampler's rounding."""
EDGE_SAMPLES = 200
"""Samples skipped at both ends when measuring level (resampler filter ramp-in/out)."""


def _write_wav(path: Path, channels: np.ndarray, rate_hz: int) -> None:
    """Write ``channels`` ([C, n] float in [-1, 1]) as a 16-bit PCM WAV."""
    pcm = np.round(channels.T * INT16_FULL_SCALE).astype("<i2")  # [n, C] interleaved
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels.shape[0])
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm.tobytes())


def _tone(rate_hz: int, amplitude: float) -> np.ndarray:
    t = np.arange(round(DURATION_S * rate_hz)) / rate_hz
    return amplitude * np.sin(2 * np.pi * TONE_HZ * t)  # [n]


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples[EDGE_SAMPLES:-EDGE_SAMPLES] ** 2)))


def _peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE_HZ)[np.argmax(spectrum)])


@pytest.mark.parametrize(
    ("rate_hz", "amplitudes"),
    [
        (44_100, (0.6, 0.2)),  # stereo, different levels: the mono signal is their mean
        (16_000, (0.5,)),
        (48_000, (0.5,)),
    ],
)
def test_wav_comes_back_as_16khz_mono_float32(
    tmp_path: Path, rate_hz: int, amplitudes: tuple[float, ...]
) -> None:
    path = tmp_path / f"tone_{rate_hz}.wav"
    _write_wav(path, np.stack([_tone(rate_hz, a) for a in amplitudes]), rate_hz)

    clip = read_audio_file(path)

    assert clip.samples.dtype == np.float32
    assert clip.samples.ndim == 1
    assert abs(clip.samples.size - DURATION_S * SAMPLE_RATE_HZ) <= LENGTH_TOLERANCE_SAMPLES
    expected_rms = float(np.mean(amplitudes)) / np.sqrt(2)
    assert _rms(clip.samples) == pytest.approx(expected_rms, rel=0.01)
    assert _peak_hz(clip.samples) == pytest.approx(TONE_HZ, abs=1.0)
    # the original is kept at its own rate and channel count, for muxing
    assert clip.original_rate_hz == rate_hz
    assert clip.original.shape == (len(amplitudes), round(DURATION_S * rate_hz))
    assert clip.layout == ("mono" if len(amplitudes) == 1 else "stereo")
    assert clip.duration_s == pytest.approx(DURATION_S)


def test_16khz_mono_samples_pass_through_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "speech_16k.wav"
    signal = np.random.default_rng(0).uniform(-0.5, 0.5, round(DURATION_S * SAMPLE_RATE_HZ))
    _write_wav(path, signal[None, :], SAMPLE_RATE_HZ)
    expected = np.round(signal * INT16_FULL_SCALE) / 32768  # what 16-bit PCM decodes to

    clip = read_audio_file(path)

    np.testing.assert_allclose(clip.samples, expected, atol=1e-6)


def test_more_than_two_channels_are_downmixed_to_stereo_without_clipping(tmp_path: Path) -> None:
    path = tmp_path / "surround.wav"
    rate_hz = 48_000
    _write_wav(path, np.stack([_tone(rate_hz, 1.0)] * 6), rate_hz)

    clip = read_audio_file(path)

    assert clip.original.shape[0] == 2
    assert np.abs(clip.original).max() <= 1.0
    assert np.abs(clip.samples).max() <= 1.0
    assert _rms(clip.samples) > 0.5  # still loud: normalised, not muted


def test_missing_file_says_not_found(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="audio file not found: .*nothing.wav"):
        read_audio_file(tmp_path / "nothing.wav")


def test_text_file_is_not_decodable(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are words, not sound\n" * 20)

    with pytest.raises(AudioFileError, match="cannot decode audio file .*notes.wav"):
        read_audio_file(path)


def test_image_file_has_no_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    PIL.Image.new("RGB", (16, 16), (200, 150, 120)).save(path)

    with pytest.raises(AudioFileError, match="has no audio stream"):
        read_audio_file(path)


def test_empty_wav_says_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    _write_wav(path, np.zeros((1, 0)), SAMPLE_RATE_HZ)

    with pytest.raises(EmptyAudioError, match="contains no samples"):
        read_audio_file(path)

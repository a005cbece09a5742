"""Colour correction, reference-image resize/crop and loudness against the official goldens."""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from headcast.pipeline.color import lab_to_rgb, match_and_blend_colors, rgb_to_lab
from headcast.pipeline.imaging import (
    ImageLoadError,
    load_image,
    resize_and_centercrop,
    to_model_range,
    to_uint8,
)
from headcast.pipeline.loudness import TARGET_LOUDNESS_LUFS, LoudnessNormalizer
from tests.reference import load_golden, rel_err

TOLERANCE = 1e-4
BF16_TOLERANCE = 1e-2
SAMPLE_RATE = 16_000


@pytest.fixture(scope="module")
def golden():
    return load_golden("utils")


# ----- colour ---------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_colour_matches_golden(golden, strength: float) -> None:
    out = match_and_blend_colors(golden.inputs["video"], golden.inputs["reference"], strength)
    assert out.dtype == torch.float32
    assert rel_err(out, golden.outputs[f"strength_{strength}"]) < TOLERANCE


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_colour_bf16_input_stays_close_to_float32(golden, strength: float) -> None:
    video, reference = golden.inputs["video"], golden.inputs["reference"]
    full = match_and_blend_colors(video, reference, strength)
    half = match_and_blend_colors(video.bfloat16(), reference.bfloat16(), strength)
    assert half.dtype == torch.bfloat16
    assert torch.isfinite(half.float()).all()
    assert rel_err(half, full) < BF16_TOLERANCE


def test_colour_strength_zero_is_an_unaliased_copy(golden) -> None:
    video = golden.inputs["video"]
    out = match_and_blend_colors(video, golden.inputs["reference"], 0.0)
    assert torch.equal(out, video)
    assert out.data_ptr() != video.data_ptr()


def test_colour_full_strength_moves_frame_statistics_to_reference(golden) -> None:
    video, reference = golden.inputs["video"], golden.inputs["reference"]
    before = match_and_blend_colors(video, reference, 0.0)
    after = match_and_blend_colors(video, reference, 1.0)

    def frame_means(x: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(((x + 1) / 2).permute(0, 2, 3, 4, 1))  # [B, T, H, W, 3]
        return lab.mean(dim=(2, 3))  # [B, T, 3]

    ref_lab_mean = rgb_to_lab(((reference + 1) / 2).permute(0, 2, 3, 4, 1)).mean(
        dim=(2, 3)
    )  # [B, 1, 3]
    gap_before = (frame_means(before) - ref_lab_mean).abs().mean()
    gap_after = (frame_means(after) - ref_lab_mean).abs().mean()
    assert gap_after < 0.5 * gap_before


def test_lab_round_trip() -> None:
    rgb = torch.rand(2, 5, 7, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=2e-3)


def test_colour_rejects_bad_arguments(golden) -> None:
    video, reference = golden.inputs["video"], golden.inputs["reference"]
    with pytest.raises(ValueError, match="strength"):
        match_and_blend_colors(video, reference, 1.5)
    with pytest.raises(ValueError, match="reference"):
        match_and_blend_colors(video, reference[..., :8], 1.0)


# ----- imaging --------------------------------------------------------------------------


def test_resize_and_centercrop_matches_golden_exactly(golden) -> None:
    image = PIL.Image.fromarray(golden.inputs["image_hwc_uint8"].numpy())
    out = resize_and_centercrop(image, (64, 32))
    expected = golden.outputs["resized_cropped"]
    assert out.dtype == torch.uint8
    assert out.shape == expected.shape == (1, 3, 1, 64, 32)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("size_hw", [(64, 32), (48, 48), (30, 90)])
def test_resize_and_centercrop_shapes(golden, size_hw: tuple[int, int]) -> None:
    image = PIL.Image.fromarray(golden.inputs["image_hwc_uint8"].numpy())
    assert resize_and_centercrop(image, size_hw).shape == (1, 3, 1, *size_hw)


def test_load_image_reads_rgb(tmp_path, golden) -> None:
    pixels = golden.inputs["image_hwc_uint8"].numpy()
    path = tmp_path / "avatar.png"
    PIL.Image.fromarray(pixels).convert("RGBA").save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), pixels)


def test_load_image_missing_file_names_it(tmp_path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageLoadError, match="nope.png"):
        load_image(missing)


def test_load_image_unreadable_file_names_it(tmp_path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_image(bad)


def test_model_range_round_trip() -> None:
    pixels = torch.arange(256, dtype=torch.uint8)
    scaled = to_model_range(pixels)
    assert scaled[0] == -1.0 and scaled[-1] == 1.0
    assert torch.equal(to_uint8(scaled + 1e-4), pixels)  # +1e-4 absorbs float truncation
    assert to_model_range(pixels, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError):
        to_model_range(pixels.float())


# ----- loudness -------------------------------------------------------------------------


def test_loudness_matches_golden(golden) -> None:
    out = LoudnessNormalizer().normalize(golden.inputs["audio_16k"].numpy(), SAMPLE_RATE)
    assert out.dtype == np.float64
    assert rel_err(torch.from_numpy(out), golden.outputs["audio_loudness_normed"]) < TOLERANCE


def test_loudness_reaches_target(golden) -> None:
    normalizer = LoudnessNormalizer()
    out = normalizer.normalize(golden.inputs["audio_16k"].numpy(), SAMPLE_RATE)
    assert normalizer.measure(out, SAMPLE_RATE) == pytest.approx(TARGET_LOUDNESS_LUFS, abs=1e-6)


@pytest.mark.parametrize("samples", [np.zeros(48_000), np.zeros(100), np.full(3_000, 0.1)])
def test_loudness_of_silence_or_short_audio_is_unchanged_and_quiet(samples: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        out = LoudnessNormalizer().normalize(samples, SAMPLE_RATE)
    assert np.isfinite(out).all()
    assert np.array_equal(out, samples)


def test_one_meter_per_sample_rate_owned_by_the_normalizer() -> None:
    first, second = LoudnessNormalizer(), LoudnessNormalizer()
    assert first.meter(16_000) is first.meter(16_000)
    assert first.meter(48_000) is not first.meter(16_000)
    assert first.meter(48_000).rate == 48_000
    assert second.meter(16_000) is not first.meter(16_000)

"""The recipe's formulas and presets, and the tiny renderer end to end (random weights).

The frames-per-segment formula and the presets are checked against the README's numbers;
the render plan's segment arithmetic against the official loop (first segment L - 1 new
frames, later ones L - overlap, output = audio frames + 1); the tiny renderer's segments
against the plan, and batched guidance against one pass at a time (same frames).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headcast.pipeline.omniavatar.audio import clip_frames, padded_frames, segment_count
from headcast.pipeline.omniavatar.config import omni_size
from headcast.pipeline.omniavatar.models import tiny_models
from headcast.pipeline.omniavatar.recipe import (
    FAST_1_3B,
    FAST_14B,
    OFFICIAL,
    RECIPES,
    TINY,
    recipe,
)
from headcast.pipeline.omniavatar.render import (
    OmniAvatarRenderer,
    RenderPlan,
    frames_to_uint8,
    silence_prefixed,
)

SAMPLE_RATE = 16_000
SPEECH_S = 0.6
"""Speech of the plan check: with the 0.3 s silence, 23 frames (one 25-frame segment)."""


def test_frames_per_segment_follow_the_readme() -> None:
    assert OFFICIAL.segment_frames((400, 720)) == 105 and OFFICIAL.latent_frames((400, 720)) == 27
    assert OFFICIAL.segment_frames((720, 720)) == 57 and OFFICIAL.latent_frames((720, 720)) == 15
    assert OFFICIAL.overlap_latents == 4
    assert FAST_14B.segment_frames((400, 720)) == 69 and FAST_14B.overlap_latents == 3
    assert FAST_1_3B.segment_frames((400, 720)) == 53 and FAST_1_3B.overlap_latents == 2


def test_presets_hold_the_official_and_the_seed_guide_values() -> None:
    assert (
        OFFICIAL.steps,
        OFFICIAL.guidance,
        OFFICIAL.audio_guidance,
        OFFICIAL.teacache,
        OFFICIAL.max_tokens,
        OFFICIAL.overlap,
        OFFICIAL.seed,
    ) == (50, 4.5, None, 0.0, 30_000, 13, 42)
    assert (
        FAST_14B.steps,
        FAST_14B.guidance,
        FAST_14B.teacache,
        FAST_14B.max_tokens,
        FAST_14B.overlap,
    ) == (20, 3.5, 0.14, 20_000, 9)
    assert (
        FAST_1_3B.steps,
        FAST_1_3B.guidance,
        FAST_1_3B.teacache,
        FAST_1_3B.max_tokens,
        FAST_1_3B.overlap,
    ) == (15, 3.0, 0.14, 15_000, 5)
    for preset in RECIPES.values():
        assert preset.trade  # every preset says what it trades
    assert OFFICIAL.tiled_vae  # the official blended tiles
    for fast in (FAST_14B, FAST_1_3B):  # whole frames: a third of the VAE time, named
        assert not fast.tiled_vae and "VAE on whole frames" in fast.trade


def test_bad_recipe_values_are_named() -> None:
    with pytest.raises(ValueError, match="overlap=12 must be 1 \\+ a multiple of 4"):
        recipe("official", overlap=12)
    with pytest.raises(ValueError, match="raise max_tokens"):
        recipe("official", max_tokens=1000)
    with pytest.raises(ValueError, match="choose one of"):
        recipe("quick")


@pytest.mark.parametrize("frames", [1, 23, 24, 25, 35, 36, 37, 100])
def test_segments_tile_the_padded_audio_as_the_official_loop(frames: int) -> None:
    length, overlap = 25, 13
    padded = padded_frames(frames, length, overlap)
    assert padded >= max(frames, length - 1) and (padded - (length - 1)) % (length - overlap) == 0
    assert padded - frames < max(length - overlap, length - 1)
    segments = segment_count(frames, length, overlap)
    official = (padded - length + 1) // (length - overlap) + 1  # scripts/inference.py `times`
    assert segments == official
    assert length + (segments - 1) * (length - overlap) == padded + 1  # frames generated


def test_the_plan_counts_the_silence_and_one_extra_frame() -> None:
    plan = RenderPlan.make(
        TINY, (64, 128), round(SPEECH_S * SAMPLE_RATE) + round(0.3 * SAMPLE_RATE)
    )
    assert plan.bucket == (16, 32) and plan.segment_frames == 25
    assert plan.audio_frames == clip_frames(round(0.9 * SAMPLE_RATE)) == 23
    assert plan.output_frames == 24 and plan.segments == 1


@pytest.fixture(scope="module")
def tiny() -> tuple:
    models = tiny_models(omni_size("tiny"), seed=3)
    speech = (
        np.random.default_rng(0).standard_normal(round(1.0 * SAMPLE_RATE)).astype(np.float32) * 0.1
    )
    image = np.random.default_rng(1).integers(0, 256, (40, 80, 3), dtype=np.uint8)
    return models, speech, image


def _render(models, speech, image, *, batch_passes: bool) -> list:
    renderer = OmniAvatarRenderer(
        models.dit,
        models.vae,
        models.audio,
        models.prompts,
        TINY.with_overrides(steps=1),
        batch_passes=batch_passes,
    )
    return list(renderer.render(image, speech, "a person talking")), renderer.plan(
        image.shape[:2], speech.size
    )


def test_tiny_render_yields_the_planned_frames_and_batching_changes_nothing(tiny: tuple) -> None:
    models, speech, image = tiny
    segments, plan = _render(models, speech, image, batch_passes=True)
    assert plan.segments == len(segments) == 2  # 1.3 s: 33 frames > the first segment's 24
    assert [s.first_frame for s in segments] == [0, 25]
    assert (
        sum(s.frames.shape[0] for s in segments)
        == plan.output_frames
        == clip_frames(round(1.3 * SAMPLE_RATE)) + 1
    )
    assert all(
        s.frames.shape[1:] == (3, 16, 32) and 0 <= s.frames.min() and s.frames.max() <= 1
        for s in segments
    )
    one_by_one, _ = _render(models, speech, image, batch_passes=False)
    for batched, single in zip(segments, one_by_one):
        assert torch.allclose(batched.frames, single.frames, atol=1e-5)


def test_frames_to_uint8_truncates_like_the_official_writer() -> None:
    frames = torch.tensor([0.0, 0.5, 0.999, 1.0]).view(4, 1, 1, 1).expand(4, 3, 1, 1)
    assert frames_to_uint8(frames)[:, 0, 0, 0].tolist() == [0, 127, 254, 255]
    assert silence_prefixed(np.ones(2, dtype=np.float32), 0.001).tolist() == [0.0] * 16 + [1.0, 1.0]

"""The sampler's schedule and update against the official constants."""

from __future__ import annotations

import pytest
import torch

from headcast.pipeline import sampler
from tests.reference import load_golden


def test_four_step_schedule_matches_the_golden_constants() -> None:
    golden = load_golden("chunk_tiny")
    expected = golden.consts["timesteps"].tolist()
    assert sampler.timesteps(4) == pytest.approx(expected, rel=1e-6)


def test_two_step_schedule_is_the_shifted_official_pair() -> None:
    assert sampler.timesteps(2) == pytest.approx([1000.0, 2500.0 / 3.0, 0.0])


def test_other_step_counts_are_evenly_spaced_then_shifted() -> None:
    steps = sampler.timesteps(3)
    assert len(steps) == 4 and steps[0] == pytest.approx(1000.0) and steps[-1] == 0.0
    assert all(a > b for a, b in zip(steps, steps[1:]))


def test_zero_steps_is_rejected_with_a_message() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        sampler.timesteps(0)


def test_flow_step_recovers_x0_at_the_last_step() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, 4, 4, generator=gen)
    noise = torch.randn(16, 3, 4, 4, generator=gen)
    t = 625.0
    latent = (1 - t / 1000) * x0 + t / 1000 * noise
    velocity = noise - x0  # the flow-matching target
    out = sampler.flow_step(latent, velocity, t, 0.0, torch.randn(16, 3, 4, 4, generator=gen))
    torch.testing.assert_close(out, x0)


def test_overwrite_motion_replaces_only_the_leading_frames() -> None:
    latent = torch.zeros(16, 3, 2, 2)
    motion = torch.ones(16, 2, 2, 2)
    sampler.overwrite_motion(latent, motion)
    assert latent[:, :2].eq(1).all() and latent[:, 2:].eq(0).all()

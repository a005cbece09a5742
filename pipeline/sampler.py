"""Flow-matching schedule and update of the FlashTalk sampler, as pure functions.

Owns: the shifted timestep schedule (4 or 2 steps, shift 5), the per-step update from the
model's velocity, and the motion-frame overwrite. Knows nothing about models, sessions or
devices: every function takes tensors and returns tensors.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
"""The model's training timestep range: t in [0, 1000]."""

DEFAULT_SHIFT = 5.0
"""Timestep shift s in t' = s*t / (1 + (s-1)*t) (t in [0, 1])."""

BASE_TIMESTEPS: dict[int, tuple[float, ...]] = {
    4: (1000.0, 750.0, 500.0, 250.0),
    2: (1000.0, 500.0),
}
"""Unshifted timesteps of the official 4- and 2-step schedules (the final 0 is appended)."""


def shift_timestep(t: float, shift: float = DEFAULT_SHIFT) -> float:
    """Shift a timestep in [0, 1000]: t' = s*t/(1+(s-1)*t) with t scaled to [0, 1]."""
    unit = t / NUM_TRAIN_TIMESTEPS
    return shift * unit / (1.0 + (shift - 1.0) * unit) * NUM_TRAIN_TIMESTEPS


def timesteps(steps: int, shift: float = DEFAULT_SHIFT) -> list[float]:
    """The ``steps + 1`` shifted timesteps in [0, 1000], ending with 0.

    4 steps give [1000, 937.5, 833.3, 625, 0]; 2 steps give [1000, 833.3, 0]. Other step
    counts use ``steps`` points evenly spaced from 1000 to 1, as the official code does.
    """
    if steps < 1:
        raise ValueError(f"sampling steps must be at least 1, got {steps}")
    if steps in BASE_TIMESTEPS:
        base = list(BASE_TIMESTEPS[steps])
    else:
        base = torch.linspace(NUM_TRAIN_TIMESTEPS, 1, steps, dtype=torch.float32).tolist()
    return [shift_timestep(t, shift) for t in base] + [0.0]


def flow_step(
    latent: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float, noise: torch.Tensor
) -> torch.Tensor:
    """One sampler update: x0 = x - v*t, then re-noise to t_next.

    ``t`` and ``t_next`` are in [0, 1000]; tensors are ``[C, T, h, w]`` latents.
    """
    t_unit = t / NUM_TRAIN_TIMESTEPS
    t_next_unit = t_next / NUM_TRAIN_TIMESTEPS
    x0 = latent - velocity * t_unit  # [C, T, h, w]
    return (1.0 - t_next_unit) * x0 + t_next_unit * noise


def overwrite_motion(latent: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Replace the first latent frames with the motion latents (in place; returns latent).

    ``latent`` is ``[C, T, h, w]``; ``motion`` is ``[C, M, h, w]`` with M ≤ T.
    """
    latent[:, : motion.shape[1]] = motion
    return latent

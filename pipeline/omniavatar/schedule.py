"""OmniAvatar's FlowMatch schedule (shift 5, ``extra_one_step``) and its Euler update.

Owns: the float32 sigmas ``shift * s / (1 + (shift - 1) s)`` for ``s = linspace(1, 0,
steps + 1)[:-1]`` (so the last step goes from the smallest sigma to 0), the timesteps
``1000 * sigma`` the DiT sees, and ``x + v * (sigma_next - sigma)``. Pure functions of
tensors; knows nothing about models. (FlashTalk's distilled schedule in
``pipeline.sampler`` is a different table; the shift and the 1000 scale are shared.)
"""

from __future__ import annotations

import torch

from headcast.pipeline.sampler import DEFAULT_SHIFT, NUM_TRAIN_TIMESTEPS

FINAL_SIGMA = 0.0
"""Sigma after the last step (``sigma_min = 0``: the clean latent)."""


def flow_sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The ``steps`` shifted noise levels, from 1 down, float32 ``[steps]``."""
    if steps < 1:
        raise ValueError(f"sampling steps must be at least 1, got {steps}")
    unshifted = torch.linspace(1.0, FINAL_SIGMA, steps + 1, dtype=torch.float32)[:-1]  # [steps]
    return shift * unshifted / (1 + (shift - 1) * unshifted)


def flow_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """DiT timesteps (0..1000) of the sigmas, float32 ``[steps]``."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def next_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Each step's target sigma: the following one, then ``FINAL_SIGMA``, ``[steps]``."""
    return torch.cat([sigmas[1:], sigmas.new_full((1,), FINAL_SIGMA)])


def euler_step(
    latents: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """``latents + velocity * (sigma_next - sigma)`` (a new tensor)."""
    return latents + velocity * (sigma_next - sigma)

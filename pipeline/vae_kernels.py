"""A fused GPU kernel of the VAE: channel RMS norm and SiLU in one pass (Triton).

Owns ``norm_silu(x, gain)``: on a CUDA tensor in the channels-last layout (channels
innermost) one Triton program normalises a block of pixels over their channels, applies the
gain and the SiLU, and writes the result: the activations are read once and written once
(the unfused ops read them five times and write them four). Any other input goes to the
reference ``pipeline.vae_blocks.rms_norm_silu``, which computes the same float32 maths.
Triton is imported on first use (CPU machines do not have it).

Knows nothing about the VAE's structure or checkpoints.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from headcast.pipeline.vae_blocks import NORM_EPS, rms_norm_silu

ELEMENTS_PER_PROGRAM = 4096
"""Activations one Triton program handles (pixels x padded channels)."""

NUM_WARPS = 4
"""Warps per Triton program."""


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, compiled on first use (a constant, cached once per process)."""
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator]  # triton ships no types
    def norm_silu_kernel(  # type: ignore[no-untyped-def]  # triton reads these annotations
        x_ptr, gain_ptr, out_ptr, pixels, channels,
        eps: tl.constexpr, block_pixels: tl.constexpr, block_channels: tl.constexpr,
    ):  # fmt: skip
        # x and out: [pixels, channels] row-major (a channels-last video); gain: [channels]
        rows = tl.program_id(0).to(tl.int64) * block_pixels + tl.arange(0, block_pixels)
        cols = tl.arange(0, block_channels)
        mask = (rows[:, None] < pixels) & (cols[None, :] < channels)
        offsets = rows[:, None] * channels + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        norm = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)  # [block_pixels]
        gain = tl.load(gain_ptr + cols, mask=cols < channels, other=0.0).to(tl.float32)
        y = x / norm[:, None] * gain[None, :]
        y = y * tl.sigmoid(y)
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)

    return norm_silu_kernel, triton.next_power_of_2


def _fits_kernel(x: torch.Tensor) -> bool:
    """CUDA, 5-D and channels innermost in memory (channels-last, dense)."""
    return (
        x.is_cuda
        and x.dim() == 5
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        and x.shape[1] > 1
    )


def norm_silu(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``silu(x / max(||x||_2 over C, eps) * gain)`` for ``x`` [B, C, T, H, W], in x's dtype.

    ``gain`` is ``[C, 1, 1, 1]``. The Triton kernel runs for channels-last CUDA inputs
    (the output keeps that layout); other inputs use ``rms_norm_silu``.
    """
    if not _fits_kernel(x):
        return rms_norm_silu(x, gain)
    kernel, next_power_of_2 = _kernel()
    channels = x.shape[1]
    pixels = x.numel() // channels
    block_channels = next_power_of_2(channels)
    block_pixels = max(1, ELEMENTS_PER_PROGRAM // block_channels)
    out = torch.empty_like(x)  # channels-last like x
    programs = (pixels + block_pixels - 1) // block_pixels
    kernel[(programs,)](
        x, gain.reshape(channels).float().contiguous(), out, pixels, channels,
        eps=NORM_EPS, block_pixels=block_pixels, block_channels=block_channels,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out

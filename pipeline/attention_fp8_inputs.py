"""The fp8 self-attention's inputs: qk RMSNorm, RoPE, K smoothing and e4m3 in three passes.

Owns ``norm_rope_quantize(q, k, v, ...)``: the projections' outputs ``[B, L, dim]`` to
``pipeline.attention_fp8``'s ``QuantizedQKV`` (Q and K RMS-normalised over ``dim`` and
rotated, K smoothed, all three in e4m3 with one scale per tensor), and ``rms_norm``, the
Wan blocks' qk RMSNorm maths (``dit.RMSNorm`` calls it).

Per-tensor scales need each tensor's absolute maximum before the first e4m3 value is
written, and K's smoothing needs its mean over the tokens first, so compiled as separate
ops these take six reductions and passes over Q, K and V (about 4.2 ms of a 14B block's 85
at the official segment's shape). On CUDA (bf16) three Triton kernels
(``pipeline.attention_fp8_triton``) do it in three passes that keep nothing but statistics
(2.0 ms there):

1. ``rms_kernel``: one ``1/rms`` per row of Q and of K (whole rows in registers).
2. ``stats_kernel``: per head and chunk of tokens, the normalised and rotated Q's absolute
   maximum, K's per-channel sum, maximum and minimum, and V's absolute maximum. PyTorch
   reduces these partials: K's mean, and smoothed K's absolute maximum as
   ``max(max - mean, mean - min)`` per channel (exact: rounding is monotonic).
3. ``quantize_kernel``: the same normalisation and rotation again, K minus its mean, each
   divided by its scale and written in e4m3.

The passes round where the unfused code rounds (the norm, the gain and the rotation to
bf16), so the e4m3 codes are the unfused path's up to the float32 order of sums. The CUDA
path is the custom op ``headcast::norm_rope_quantize`` (one opaque call under
``torch.compile``); anywhere else the unfused PyTorch maths run. Triton is imported on
first use. Knows nothing about projections, blocks or models.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from headcast.pipeline.attention_fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    MIN_AMAX,
    QuantizedQKV,
    quantize_fp8,
)
from headcast.pipeline.rope import apply_rope

STATS_CHUNK = 256
"""Tokens per program of the statistics pass (its partials are ``[B, L / 256, dim]``)."""

RMS_CONFIGS = ((1, 4), (1, 8), (2, 8), (4, 16))
"""(rows per program, warps) the RMS kernel's autotuner times once per row width."""

TILE_CONFIGS = ((8, 4), (16, 4), (16, 8), (32, 8))
"""(token rows per tile, warps) the statistics and quantisation kernels' autotuner times."""


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension: statistics in float32, the gain in ``x``'s dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def norm_rope_quantize(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
) -> QuantizedQKV:
    """``quantize_fp8`` of the rotated, normalised ``q`` and ``k`` and of ``v``.

    ``q``, ``k``, ``v`` ``[B, L, dim]`` (rows may be strided, as ``qkv(x).chunk(3, -1)``);
    ``q_weight``, ``k_weight`` ``[dim]``; ``cos``, ``sin`` ``[L, 1, head_dim / 2]`` float32
    (``rope.rope_cos_sin``). The Triton kernels on CUDA bf16, the unfused maths otherwise.
    """
    if _on_kernel(q, k, v, q_weight, k_weight, heads):
        return QuantizedQKV(
            *torch.ops.headcast.norm_rope_quantize(
                q, k, v, q_weight, k_weight, eps, cos, sin, heads
            )
        )
    split = (heads, -1)
    q_rope = apply_rope(torch.unflatten(rms_norm(q, q_weight, eps), -1, split), cos, sin)
    k_rope = apply_rope(torch.unflatten(rms_norm(k, k_weight, eps), -1, split), cos, sin)
    return quantize_fp8(q_rope, k_rope, torch.unflatten(v, -1, split))


def _on_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    heads: int,
) -> bool:
    """Whether the kernels take these: bf16 on CUDA, whole heads of a power-of-two width."""
    tensors = (q, k, v, q_weight, k_weight)
    head_dim = q.shape[-1] // heads
    return (
        q.is_cuda
        and all(t.dtype == torch.bfloat16 for t in tensors)
        and q.shape == k.shape == v.shape
        and all(t.stride(-1) == 1 for t in (q, k, v))
        and head_dim * heads == q.shape[-1]
        and head_dim >= 4
        and head_dim & (head_dim - 1) == 0
    )


@functools.cache
def _kernels() -> Any:
    """The three Triton kernels (``pipeline.attention_fp8_triton``), built on first use."""
    from headcast.pipeline.attention_fp8_triton import build_kernels

    return build_kernels(RMS_CONFIGS, TILE_CONFIGS)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.library.custom_op("headcast::norm_rope_quantize", mutates_args=())
def _norm_rope_quantize_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three kernels: ``QuantizedQKV``'s six tensors (``[B, L, H, D]`` e4m3 each, then
    the three ``[1, 1, 1, 1]`` float32 descales)."""
    kernels = _kernels()
    batch, tokens, dim = q.shape
    head_dim = dim // heads
    total_rows = batch * tokens
    row_stride = q.stride(1)
    rows_alike = (tokens * row_stride, row_stride, 1)  # the kernels index row b * L + t
    if any(t.stride() != rows_alike for t in (q, k, v)):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        row_stride = dim
    device = q.device
    cos2 = cos.reshape(tokens, head_dim // 2).float().contiguous()
    sin2 = sin.reshape(tokens, head_dim // 2).float().contiguous()
    q_weight, k_weight = q_weight.contiguous(), k_weight.contiguous()

    inv_rms = torch.empty((2, total_rows), dtype=torch.float32, device=device)
    for index, x in enumerate((q, k)):
        kernels.rms[lambda meta: (_cdiv(total_rows, meta["rows"]),)](
            x, inv_rms[index], row_stride, total_rows, dim, eps, block=1 << (dim - 1).bit_length()
        )

    chunks = _cdiv(tokens, STATS_CHUNK)
    k_stats = torch.empty((3, batch * chunks, dim), dtype=torch.float32, device=device)
    amax = torch.empty((2, batch * chunks, heads), dtype=torch.float32, device=device)
    kernels.stats[(batch * chunks, heads)](
        q, k, v, row_stride, inv_rms[0], inv_rms[1], q_weight, k_weight, cos2, sin2,
        k_stats[0], k_stats[1], k_stats[2], amax[0], amax[1], tokens, chunks, heads,
        head_dim=head_dim, chunk=STATS_CHUNK,
    )  # fmt: skip
    k_sum, k_max, k_min = k_stats.reshape(3, batch, chunks, dim).unbind(0)  # each [B, C, dim]
    k_mean = k_sum.sum(dim=1) / tokens  # [B, dim]
    k_amax = torch.maximum(k_max.amax(dim=1) - k_mean, k_mean - k_min.amin(dim=1)).amax()
    amaxes = torch.stack((amax[0].amax(), k_amax, amax[1].amax()))  # [3]: q, k, v
    descales = amaxes.clamp_min(MIN_AMAX) / FP8_MAX  # [3]

    shape = (batch, tokens, heads, head_dim)
    q8, k8, v8 = (torch.empty(shape, dtype=FP8_DTYPE, device=device) for _ in range(3))
    kernels.quantize[lambda meta: (_cdiv(total_rows, meta["tile"]), heads)](
        q, k, v, row_stride, inv_rms[0], inv_rms[1], q_weight, k_weight, cos2, sin2,
        k_mean, descales, q8, k8, v8, total_rows, tokens, dim,
        head_dim=head_dim, fp8_max=FP8_MAX,
    )  # fmt: skip
    descale_q, descale_k, descale_v = (d.reshape(1, 1, 1, 1).clone() for d in descales.unbind(0))
    return q8, k8, v8, descale_q, descale_k, descale_v


@_norm_rope_quantize_cuda.register_fake
def _(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, tokens, dim = q.shape
    shape = (batch, tokens, heads, dim // heads)
    codes = [q.new_empty(shape, dtype=FP8_DTYPE) for _ in range(3)]
    scales = [q.new_empty((1, 1, 1, 1), dtype=torch.float32) for _ in range(3)]
    return codes[0], codes[1], codes[2], scales[0], scales[1], scales[2]

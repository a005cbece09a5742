"""The Triton kernels of ``pipeline.attention_fp8_inputs`` (imports Triton: load on first use).

Owns ``norm_rope`` (a tile's qk RMSNorm from its rows' ``1/rms``, the gain and the RoPE
rotation, rounding to bf16 where the unfused code does) and ``build_kernels``, which makes
the three kernels with the autotuner's choices: ``rms_kernel`` (``1/rms`` per row),
``stats_kernel`` (per head and chunk of tokens: Q's and V's absolute maxima, K's
per-channel sum, maximum and minimum) and ``quantize_kernel`` (Q, smoothed K and V in e4m3
at their per-tensor scales). The shapes each kernel takes are in its comments;
``attention_fp8_inputs`` launches them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import triton
import triton.language as tl


class Kernels(NamedTuple):
    """The three autotuned kernels (launch as ``kernel[grid](...)``)."""

    rms: Any
    stats: Any
    quantize: Any


@triton.jit  # type: ignore[untyped-decorator]  # triton ships no types
def norm_rope(  # type: ignore[no-untyped-def]
    x, inv_rms, weight, cos, sin, tile: tl.constexpr, half: tl.constexpr
):  # fmt: skip
    # x: [tile, 2 half] bf16; inv_rms: [tile]; weight: [2 half] bf16; cos, sin: [tile, half]
    normed = (x.to(tl.float32) * inv_rms[:, None]).to(tl.bfloat16)
    gained = (normed.to(tl.float32) * weight.to(tl.float32)[None, :]).to(tl.bfloat16)
    real, imag = tl.split(gained.to(tl.float32).reshape(tile, half, 2))  # [tile, half] each
    rotated_real = (real * cos - imag * sin).to(tl.bfloat16).to(tl.float32)
    rotated_imag = (real * sin + imag * cos).to(tl.bfloat16).to(tl.float32)
    return rotated_real, rotated_imag


def build_kernels(
    rms_configs: tuple[tuple[int, int], ...], tile_configs: tuple[tuple[int, int], ...]
) -> Kernels:
    """The kernels, autotuned over (rows per program, warps) and (token rows per tile, warps)."""

    def configs(choices: tuple[tuple[int, int], ...], name: str) -> list[Any]:
        return [triton.Config({name: rows}, num_warps=warps) for rows, warps in choices]

    @triton.autotune(configs=configs(rms_configs, "rows"), key=["dim"])  # type: ignore[untyped-decorator]
    @triton.jit  # type: ignore[untyped-decorator]
    def rms_kernel(  # type: ignore[no-untyped-def]  # triton reads these annotations
        x_ptr, out_ptr, row_stride, total_rows, dim, eps,
        block: tl.constexpr, rows: tl.constexpr,
    ):  # fmt: skip
        # x: [total_rows, dim] with row_stride; out: [total_rows] float32 1/rms
        row = tl.program_id(0).to(tl.int64) * rows + tl.arange(0, rows)  # [rows]
        cols = tl.arange(0, block)
        mask = (row[:, None] < total_rows) & (cols[None, :] < dim)  # [rows, block]
        x = tl.load(x_ptr + row[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)
        x32 = x.to(tl.float32)
        inv_rms = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=1) / dim + eps)  # [rows]
        tl.store(out_ptr + row, inv_rms, mask=row < total_rows)

    @triton.autotune(configs=configs(tile_configs, "tile"), key=["head_dim"])  # type: ignore[untyped-decorator]
    @triton.jit  # type: ignore[untyped-decorator]
    def stats_kernel(  # type: ignore[no-untyped-def]
        q_ptr, k_ptr, v_ptr, row_stride, inv_rms_q_ptr, inv_rms_k_ptr, q_weight_ptr,
        k_weight_ptr, cos_ptr, sin_ptr, k_sum_ptr, k_max_ptr, k_min_ptr, q_amax_ptr,
        v_amax_ptr, tokens, chunks, heads,
        head_dim: tl.constexpr, chunk: tl.constexpr, tile: tl.constexpr,
    ):  # fmt: skip
        # q, k, v: [B * tokens, heads * head_dim] with row_stride; inv_rms_*: [B * tokens];
        # cos, sin: [tokens, head_dim / 2]; k_sum/max/min: [B * chunks, heads * head_dim];
        # q_amax, v_amax: [B * chunks, heads]. Program (b * chunks + c, h).
        half: tl.constexpr = head_dim // 2
        part = tl.program_id(0)
        head = tl.program_id(1)
        sample = part // chunks
        first = (part % chunks) * chunk
        cols = head * head_dim + tl.arange(0, head_dim)  # [head_dim]
        pairs = tl.arange(0, half)  # [half]
        q_weight = tl.load(q_weight_ptr + cols)
        k_weight = tl.load(k_weight_ptr + cols)
        # element-wise accumulators, reduced over the tile's rows once at the end
        k_sum_re = tl.zeros([tile, half], dtype=tl.float32)
        k_sum_im = tl.zeros([tile, half], dtype=tl.float32)
        k_max_re = tl.full([tile, half], float("-inf"), dtype=tl.float32)
        k_max_im = tl.full([tile, half], float("-inf"), dtype=tl.float32)
        k_min_re = tl.full([tile, half], float("inf"), dtype=tl.float32)
        k_min_im = tl.full([tile, half], float("inf"), dtype=tl.float32)
        q_amax = tl.zeros([tile, half], dtype=tl.float32)
        v_amax = tl.zeros([tile, head_dim], dtype=tl.float32)
        for start in range(0, chunk, tile):
            token = first + start + tl.arange(0, tile)  # [tile]
            valid = token < tokens
            row = sample.to(tl.int64) * tokens + token
            mask = valid[:, None]
            offsets = row[:, None] * row_stride + cols[None, :]  # [tile, head_dim]
            angles = token[:, None] * half + pairs[None, :]  # [tile, half]
            cos = tl.load(cos_ptr + angles, mask=mask, other=0.0)
            sin = tl.load(sin_ptr + angles, mask=mask, other=0.0)
            q = tl.load(q_ptr + offsets, mask=mask, other=0.0)
            inv_rms_q = tl.load(inv_rms_q_ptr + row, mask=valid, other=0.0)
            q_re, q_im = norm_rope(q, inv_rms_q, q_weight, cos, sin, tile, half)
            q_amax = tl.maximum(q_amax, tl.maximum(tl.abs(q_re), tl.abs(q_im)))
            k = tl.load(k_ptr + offsets, mask=mask, other=0.0)
            inv_rms_k = tl.load(inv_rms_k_ptr + row, mask=valid, other=0.0)
            k_re, k_im = norm_rope(k, inv_rms_k, k_weight, cos, sin, tile, half)
            k_sum_re += k_re  # masked rows are 0
            k_sum_im += k_im
            k_max_re = tl.maximum(k_max_re, tl.where(mask, k_re, float("-inf")))
            k_max_im = tl.maximum(k_max_im, tl.where(mask, k_im, float("-inf")))
            k_min_re = tl.minimum(k_min_re, tl.where(mask, k_re, float("inf")))
            k_min_im = tl.minimum(k_min_im, tl.where(mask, k_im, float("inf")))
            v = tl.load(v_ptr + offsets, mask=mask, other=0.0)
            v_amax = tl.maximum(v_amax, tl.abs(v.to(tl.float32)))
        out = part.to(tl.int64) * heads * head_dim + cols  # [head_dim], channels interleaved
        k_sum = tl.join(tl.sum(k_sum_re, axis=0), tl.sum(k_sum_im, axis=0))  # [half, 2]
        k_max = tl.join(tl.max(k_max_re, axis=0), tl.max(k_max_im, axis=0))
        k_min = tl.join(tl.min(k_min_re, axis=0), tl.min(k_min_im, axis=0))
        tl.store(k_sum_ptr + out, k_sum.reshape(head_dim))
        tl.store(k_max_ptr + out, k_max.reshape(head_dim))
        tl.store(k_min_ptr + out, k_min.reshape(head_dim))
        tl.store(q_amax_ptr + part * heads + head, tl.max(tl.max(q_amax, axis=1), axis=0))
        tl.store(v_amax_ptr + part * heads + head, tl.max(tl.max(v_amax, axis=1), axis=0))

    @triton.autotune(configs=configs(tile_configs, "tile"), key=["head_dim"])  # type: ignore[untyped-decorator]
    @triton.jit  # type: ignore[untyped-decorator]
    def quantize_kernel(  # type: ignore[no-untyped-def]
        q_ptr, k_ptr, v_ptr, row_stride, inv_rms_q_ptr, inv_rms_k_ptr, q_weight_ptr,
        k_weight_ptr, cos_ptr, sin_ptr, k_mean_ptr, descales_ptr, q8_ptr, k8_ptr, v8_ptr,
        total_rows, tokens, dim,
        head_dim: tl.constexpr, fp8_max: tl.constexpr, tile: tl.constexpr,
    ):  # fmt: skip
        # q, k, v: [total_rows = B * tokens, dim] with row_stride; k_mean: [B, dim] float32;
        # descales: [3] float32 (q, k, v); q8, k8, v8: [total_rows, dim] e4m3. Program
        # (row tile, head).
        half: tl.constexpr = head_dim // 2
        row = tl.program_id(0).to(tl.int64) * tile + tl.arange(0, tile)  # [tile]
        valid = row < total_rows
        mask = valid[:, None]
        token = row % tokens
        cols = tl.program_id(1) * head_dim + tl.arange(0, head_dim)  # [head_dim]
        offsets = row[:, None] * row_stride + cols[None, :]  # [tile, head_dim]
        out = row[:, None] * dim + cols[None, :]
        angles = token[:, None] * half + tl.arange(0, half)[None, :]  # [tile, half]
        cos = tl.load(cos_ptr + angles, mask=mask, other=0.0)
        sin = tl.load(sin_ptr + angles, mask=mask, other=0.0)
        descale_q = tl.load(descales_ptr)
        descale_k = tl.load(descales_ptr + 1)
        descale_v = tl.load(descales_ptr + 2)

        q = tl.load(q_ptr + offsets, mask=mask, other=0.0)
        inv_rms_q = tl.load(inv_rms_q_ptr + row, mask=valid, other=0.0)
        q_re, q_im = norm_rope(q, inv_rms_q, tl.load(q_weight_ptr + cols), cos, sin, tile, half)
        q = tl.join(q_re, q_im).reshape(tile, head_dim) / descale_q
        tl.store(
            q8_ptr + out, tl.clamp(q, -fp8_max, fp8_max).to(q8_ptr.dtype.element_ty), mask=mask
        )

        k = tl.load(k_ptr + offsets, mask=mask, other=0.0)
        inv_rms_k = tl.load(inv_rms_k_ptr + row, mask=valid, other=0.0)
        k_re, k_im = norm_rope(k, inv_rms_k, tl.load(k_weight_ptr + cols), cos, sin, tile, half)
        mean = tl.load(k_mean_ptr + (row // tokens)[:, None] * dim + cols[None, :], mask=mask)
        k = (tl.join(k_re, k_im).reshape(tile, head_dim) - mean) / descale_k
        tl.store(
            k8_ptr + out, tl.clamp(k, -fp8_max, fp8_max).to(k8_ptr.dtype.element_ty), mask=mask
        )

        v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32) / descale_v
        tl.store(
            v8_ptr + out, tl.clamp(v, -fp8_max, fp8_max).to(v8_ptr.dtype.element_ty), mask=mask
        )

    return Kernels(rms_kernel, stats_kernel, quantize_kernel)

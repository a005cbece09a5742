"""The Triton kernels of ``pipeline.fp8_rows`` (imports Triton: load on first use).

Owns ``build_kernels``, which makes the two row kernels with the autotuner's choices:
``adaln_quantize_kernel`` (the residual, LayerNorm and AdaLN modulation of a row, then its
e4m3 values and scale) and ``gelu_quantize_kernel`` (the FFN's tanh GELU, then the same),
and ``row_grid``, their launch grid. Each program keeps whole rows in registers (laid out
as ``fp8_rows.row_split`` says) and reads and writes every element once.

Two things cut the arithmetic per element, which bounded these kernels more than memory
did (special functions run at one per 16 lanes per clock):

- **A row is two power-of-two blocks**, ``head`` (the largest power of two within the row)
  and ``tail`` (the next power of two above the rest, masked), not one block of the next
  power of two: 5120 = 4096 + 1024, 1536 = 1024 + 512 and 8960 = 8192 + 768 (of 1024) fill
  their lanes, where one block would compute 8192, 2048 and 16384 lanes.
- **No division per element.** ``divide_rn`` divides by the row's scale through its
  reciprocal and one correcting FMA (Markstein's theorem: the result is the correctly
  rounded quotient, the same e4m3 code as ``x / scale``); only the GELU's sigmoid takes a
  fast reciprocal per element (2 ulp of float32 before rounding to bf16).

Shapes are in each kernel's comments; ``fp8_rows`` launches them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import triton
import triton.language as tl


class Kernels(NamedTuple):
    """The two autotuned kernels (launch as ``kernel[grid](...)``)."""

    adaln: Any
    gelu: Any


def row_grid(total_rows: int) -> Callable[[dict[str, Any]], tuple[int]]:
    """The launch grid over ``total_rows`` rows: one program per autotuned ``rows``."""
    return lambda meta: (triton.cdiv(total_rows, meta["rows"]),)


@triton.jit  # triton ships no types (an unannotated function: nothing to lose)
def divide_rn(y, scale, inverse):  # type: ignore[no-untyped-def]
    """``y / scale`` correctly rounded, from ``inverse = 1 / scale`` (correctly rounded):
    the product's error, exact through an FMA, corrects it (Markstein)."""
    quotient = y * inverse
    return tl.fma(tl.fma(-quotient, scale, y), inverse, quotient)


@triton.jit  # type: ignore[untyped-decorator]  # triton ships no types
def store_e4m3(y, scale, inverse, out_ptr, offsets, mask, fp8_max: tl.constexpr):  # type: ignore[no-untyped-def]
    """Write ``y`` ``[rows, block]`` float32 divided by its rows' ``scale`` ``[rows, 1]`` as
    e4m3 (clamped to the format's range)."""
    q = tl.clamp(divide_rn(y, scale, inverse), -fp8_max, fp8_max)
    tl.store(out_ptr + offsets, q.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit  # type: ignore[untyped-decorator]
def stream_part(  # type: ignore[no-untyped-def]
    x_ptr, delta_ptr, gate_ptr, x_out_ptr, offsets, terms, mask,
    residual: tl.constexpr, gated: tl.constexpr,
):  # fmt: skip
    """One block of the stream's rows, after the residual ``x + delta (* gate)`` (float32
    sum, stored) when ``residual``: ``[rows, block]`` in the stream's dtype."""
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    if residual:
        added = tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if gated:
            added = added * tl.load(gate_ptr + terms, mask=mask, other=0.0)
        x = (x.to(tl.float32) + added).to(x.dtype)
        tl.store(x_out_ptr + offsets, x, mask=mask)
    return x


@triton.jit  # type: ignore[untyped-decorator]
def normalized_part(  # type: ignore[no-untyped-def]
    centred, rstd, cols, col_mask, terms, mask, x_ptr, weight_ptr, bias_ptr, shift_ptr,
    scale_ptr, modulate: tl.constexpr, affine: tl.constexpr,
):  # fmt: skip
    """One block of normalised rows (``centred`` ``[rows, block]`` float32, ``rstd``
    ``[rows]``): the gain and bias, the modulation, rounded to the stream's dtype (``x_ptr``'s)
    where the unfused block rounds -> float32."""
    dtype = x_ptr.dtype.element_ty
    y = centred * rstd[:, None]
    if affine:
        y = y * tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        y = y + tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    y = y.to(dtype).to(tl.float32)  # the norm's output in the stream's dtype
    if modulate:
        shift = tl.load(shift_ptr + terms, mask=mask, other=0.0)
        scale = tl.load(scale_ptr + terms, mask=mask, other=0.0)
        y = (y * (1.0 + scale) + shift).to(dtype).to(tl.float32)
    return y


@triton.jit  # type: ignore[untyped-decorator]
def gelu_part(h_ptr, offsets, mask, coefficient: tl.constexpr):  # type: ignore[no-untyped-def]
    """One block of GELU rows ``[rows, block]``, rounded to the input's dtype -> float32.
    ``0.5 h (1 + tanh(u))`` as ``h sigmoid(2u)`` with ``u = sqrt(2/pi) (h + c h^3)`` (so
    ``2u`` takes ``2 sqrt(2/pi) = 1.5957...``): one exp and one fast reciprocal."""
    raw = tl.load(h_ptr + offsets, mask=mask, other=0.0)
    h = raw.to(tl.float32)
    denominator = 1.0 + tl.exp(-1.5957691216057308 * (h + coefficient * h * h * h))
    return tl.fdiv(h, denominator, ieee_rounding=False).to(raw.dtype).to(tl.float32)


def build_kernels(
    adaln_configs: tuple[tuple[int, int], ...], gelu_configs: tuple[tuple[int, int], ...]
) -> Kernels:
    """The two kernels, each autotuned over its ``(rows per program, warps)`` choices per row
    width (a fraction of a second on first use)."""

    def configs(choices: tuple[tuple[int, int], ...]) -> list[Any]:
        return [triton.Config({"rows": rows}, num_warps=warps) for rows, warps in choices]

    adaln_key = ["dim", "residual", "gated", "modulate", "affine"]

    @triton.autotune(configs=configs(adaln_configs), key=adaln_key)  # type: ignore[untyped-decorator]
    @triton.jit  # type: ignore[untyped-decorator]
    def adaln_quantize_kernel(  # type: ignore[no-untyped-def]
        x_ptr, delta_ptr, gate_ptr, x_out_ptr, shift_ptr, scale_ptr, weight_ptr, bias_ptr,
        out_ptr, out_scale_ptr, total_rows, tokens, dim, eps,
        fp8_max: tl.constexpr, min_amax: tl.constexpr, residual: tl.constexpr,
        gated: tl.constexpr, modulate: tl.constexpr, affine: tl.constexpr,
        head: tl.constexpr, tail: tl.constexpr, rows: tl.constexpr,
    ):  # fmt: skip
        # x, delta, x_out: [total_rows = B * tokens, dim]; gate, shift, scale: [B, dim] f32;
        # weight, bias: [dim]; a row is cols [0, head) and, if tail, [head, head + tail)
        row = tl.program_id(0).to(tl.int64) * rows + tl.arange(0, rows)  # [rows]
        row_ok = row[:, None] < total_rows  # [rows, 1]
        sample = (row // tokens)[:, None] * dim  # each row's sample's terms
        cols_a = tl.arange(0, head)  # [head]: all inside the row
        mask_a = row_ok & (cols_a[None, :] < dim)  # [rows, head]
        offsets_a = row[:, None] * dim + cols_a[None, :]
        x_a = stream_part(
            x_ptr, delta_ptr, gate_ptr, x_out_ptr, offsets_a, sample + cols_a[None, :], mask_a,
            residual, gated,
        )  # fmt: skip
        total = tl.sum(x_a.to(tl.float32), axis=1)  # [rows]
        if tail:
            cols_b = head + tl.arange(0, tail)  # [tail]: masked past the row
            mask_b = row_ok & (cols_b[None, :] < dim)
            offsets_b = row[:, None] * dim + cols_b[None, :]
            x_b = stream_part(
                x_ptr, delta_ptr, gate_ptr, x_out_ptr, offsets_b, sample + cols_b[None, :],
                mask_b, residual, gated,
            )  # fmt: skip
            total += tl.sum(x_b.to(tl.float32), axis=1)
        mean = total / dim  # [rows]
        centred_a = tl.where(mask_a, x_a.to(tl.float32) - mean[:, None], 0.0)
        squares = tl.sum(centred_a * centred_a, axis=1)
        if tail:
            centred_b = tl.where(mask_b, x_b.to(tl.float32) - mean[:, None], 0.0)
            squares += tl.sum(centred_b * centred_b, axis=1)
        rstd = 1.0 / tl.sqrt(squares / dim + eps)  # [rows]
        y_a = normalized_part(
            centred_a, rstd, cols_a, cols_a < dim, sample + cols_a[None, :], mask_a, x_ptr,
            weight_ptr, bias_ptr, shift_ptr, scale_ptr, modulate, affine,
        )  # fmt: skip
        amax = tl.max(tl.abs(y_a), axis=1)  # [rows]
        if tail:
            y_b = normalized_part(
                centred_b, rstd, cols_b, cols_b < dim, sample + cols_b[None, :], mask_b, x_ptr,
                weight_ptr, bias_ptr, shift_ptr, scale_ptr, modulate, affine,
            )  # fmt: skip
            amax = tl.maximum(amax, tl.max(tl.abs(y_b), axis=1))
        row_scale = (tl.maximum(amax, min_amax) / fp8_max)[:, None]  # [rows, 1]
        inverse = 1.0 / row_scale
        store_e4m3(y_a, row_scale, inverse, out_ptr, offsets_a, mask_a, fp8_max)
        if tail:
            store_e4m3(y_b, row_scale, inverse, out_ptr, offsets_b, mask_b, fp8_max)
        tl.store(out_scale_ptr + row[:, None], row_scale, mask=row_ok)

    @triton.autotune(configs=configs(gelu_configs), key=["width"])  # type: ignore[untyped-decorator]
    @triton.jit  # type: ignore[untyped-decorator]
    def gelu_quantize_kernel(  # type: ignore[no-untyped-def]
        h_ptr, out_ptr, out_scale_ptr, total_rows, width,
        coefficient: tl.constexpr, fp8_max: tl.constexpr, min_amax: tl.constexpr,
        head: tl.constexpr, tail: tl.constexpr, rows: tl.constexpr,
    ):  # fmt: skip
        # h: [total_rows, width]; out: [total_rows, width] e4m3; out_scale: [total_rows]
        row = tl.program_id(0).to(tl.int64) * rows + tl.arange(0, rows)  # [rows]
        row_ok = row[:, None] < total_rows  # [rows, 1]
        cols_a = tl.arange(0, head)
        mask_a = row_ok & (cols_a[None, :] < width)  # [rows, head]
        offsets_a = row[:, None] * width + cols_a[None, :]
        y_a = gelu_part(h_ptr, offsets_a, mask_a, coefficient)
        amax = tl.max(tl.abs(y_a), axis=1)  # [rows]
        if tail:
            cols_b = head + tl.arange(0, tail)
            mask_b = row_ok & (cols_b[None, :] < width)  # [rows, tail]
            offsets_b = row[:, None] * width + cols_b[None, :]
            y_b = gelu_part(h_ptr, offsets_b, mask_b, coefficient)
            amax = tl.maximum(amax, tl.max(tl.abs(y_b), axis=1))
        row_scale = (tl.maximum(amax, min_amax) / fp8_max)[:, None]  # [rows, 1]
        inverse = 1.0 / row_scale
        store_e4m3(y_a, row_scale, inverse, out_ptr, offsets_a, mask_a, fp8_max)
        if tail:
            store_e4m3(y_b, row_scale, inverse, out_ptr, offsets_b, mask_b, fp8_max)
        tl.store(out_scale_ptr + row[:, None], row_scale, mask=row_ok)

    return Kernels(adaln_quantize_kernel, gelu_quantize_kernel)

"""The inputs of a DiT block's fp8 linears, normalised and quantised in one pass (Triton).

Owns the two producers of ``Fp8Rows`` (``pipeline.quantize``: activations in e4m3 with one
scale per row, what ``Float8Linear`` multiplies) that a block's fp8 linears read from:

- ``adaln_quantize_rows(x, ...)``: LayerNorm (float32 statistics, optional affine), the
  AdaLN modulation ``* (1 + scale) + shift`` (optional), then per-row e4m3. The input of the
  self-attention's and the FFN's first linears (and, without modulation, of the prompt
  cross-attention's query). ``add_adaln_quantize_rows`` first adds a residual to the stream
  (gated or not) and returns the new stream too, so the sum is not read back.
- ``gelu_quantize_rows(h)``: the FFN's tanh GELU, then per-row e4m3 (the input of its second
  linear).

On CUDA each is a Triton kernel. The norm's programs read whole rows once, keep them in
registers and write e4m3 and the scales; the GELU's walk each FFN row twice in chunks (its
maximum, then the e4m3 values, the second read from L2), because a whole 8960- or
13824-wide row takes a 16384-wide register block (rows per program, chunk and warps
autotuned per row width).
Compiled as separate ops, the norm's statistics, the row maximum and the quantisation each
read the row again (three passes), and the GELU's tanh is evaluated twice. Anywhere else
(CPU, the tests) the reference maths run in PyTorch. Both round where the unfused block
rounds (the norm, the modulation and the GELU to the stream's dtype), so the e4m3 values
are the unfused path's up to float32 rounding (the kernels multiply by each row's
reciprocal scale rather than divide, and write the GELU's tanh through one exp and a fast
division). The CUDA paths are custom ops (``headcast::adaln_quantize_rows``, with or without
the residual, and ``headcast::gelu_quantize_rows``) so ``torch.compile`` keeps each one
call. Triton is imported on first use.

Knows nothing about blocks, checkpoints or models.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

from headcast.pipeline.quantize import FP8_DTYPE, FP8_MAX, FP8_MIN_AMAX, Fp8Rows

GELU_TANH_COEFFICIENT = 0.044715
"""The cubic term of the tanh GELU: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""

# -- the reference maths (any device) -----------------------------------------------------


def adaln_reference(
    x: torch.Tensor,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """The unfused block's maths: ``x`` ``[B, L, D]``; ``shift``/``scale`` ``[B, 1, D]`` float32
    or None; ``weight``/``bias`` ``[D]`` or None -> ``[B, L, D]`` in ``x``'s dtype."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    normed = F.layer_norm(x.float(), x.shape[-1:], w, b, eps).to(x.dtype)  # [B, L, D]
    if shift is None or scale is None:
        return normed
    return (normed.float() * (1 + scale) + shift).to(x.dtype)


def gelu_reference(h: torch.Tensor) -> torch.Tensor:
    """The FFN's tanh GELU, computed in float32 and returned in ``h``'s dtype (``nn.GELU``)."""
    return F.gelu(h.float(), approximate="tanh").to(h.dtype)


# -- the Triton kernels ----------------------------------------------------------------------


ADALN_CONFIGS = ((1, 2), (1, 4), (1, 8), (1, 16), (2, 4), (2, 8), (2, 16), (4, 16))
"""(rows per program, warps) the norm kernel's autotuner times once per row width."""

GELU_CONFIGS = ((1, 1024, 4), (1, 2048, 8), (2, 1024, 8), (2, 2048, 8), (4, 1024, 8))
"""(rows per program, columns per loop step, warps) the GELU kernel's autotuner times once
per row width."""


@functools.cache
def _kernels() -> Any:
    """The two Triton kernels, compiled on first use (cached once per process). Each
    program handles ``rows`` rows (the norm's whole in registers, the GELU's in chunks);
    Triton's autotuner picks the configuration per row width on the first call (a fraction
    of a second)."""
    import triton
    import triton.language as tl

    def configs(choices: tuple[tuple[int, int], ...]) -> list[Any]:
        return [triton.Config({"rows": rows}, num_warps=warps) for rows, warps in choices]

    gelu_configs = [
        triton.Config({"rows": rows, "chunk": chunk}, num_warps=warps)
        for rows, chunk, warps in GELU_CONFIGS
    ]

    adaln_key = ["dim", "residual", "gated", "modulate", "affine"]

    @triton.autotune(configs=configs(ADALN_CONFIGS), key=adaln_key)  # type: ignore[untyped-decorator]
    @triton.jit  # type: ignore[untyped-decorator]  # triton ships no types
    def adaln_quantize_kernel(  # type: ignore[no-untyped-def]  # triton reads these annotations
        x_ptr, delta_ptr, gate_ptr, x_out_ptr, shift_ptr, scale_ptr, weight_ptr, bias_ptr,
        out_ptr, out_scale_ptr, total_rows, tokens, dim, eps,
        fp8_max: tl.constexpr, min_amax: tl.constexpr, residual: tl.constexpr,
        gated: tl.constexpr, modulate: tl.constexpr, affine: tl.constexpr,
        block: tl.constexpr, rows: tl.constexpr,
    ):  # fmt: skip
        # x, delta, x_out: [total_rows = B * tokens, dim]; gate, shift, scale: [B, dim] f32;
        # weight, bias: [dim]
        row = tl.program_id(0).to(tl.int64) * rows + tl.arange(0, rows)  # [rows]
        cols = tl.arange(0, block)  # [block]
        mask = (row[:, None] < total_rows) & (cols[None, :] < dim)  # [rows, block]
        offsets = row[:, None] * dim + cols[None, :]
        terms = (row // tokens)[:, None] * dim + cols[None, :]  # each row's sample's terms
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
        if residual:  # the stream first takes the residual: x + delta (* gate) in float32
            added = tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if gated:
                added = added * tl.load(gate_ptr + terms, mask=mask, other=0.0)
            x = (x.to(tl.float32) + added).to(x.dtype)
            tl.store(x_out_ptr + offsets, x, mask=mask)
        x32 = x.to(tl.float32)
        mean = tl.sum(x32, axis=1) / dim  # [rows]
        centred = tl.where(mask, x32 - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / dim + eps)  # [rows]
        y = centred * rstd[:, None]
        if affine:
            col_mask = cols < dim
            y = y * tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            y = y + tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        y = y.to(x.dtype).to(tl.float32)  # the norm's output in the stream's dtype
        if modulate:
            shift = tl.load(shift_ptr + terms, mask=mask, other=0.0)
            scale = tl.load(scale_ptr + terms, mask=mask, other=0.0)
            y = (y * (1.0 + scale) + shift).to(x.dtype).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(y), axis=1), min_amax)  # [rows]
        # times the reciprocal: an IEEE division per element costs more than the memory
        q = tl.clamp(y * (fp8_max / amax)[:, None], -fp8_max, fp8_max)
        row_scale = amax / fp8_max
        tl.store(out_ptr + offsets, q.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_scale_ptr + row, row_scale, mask=row < total_rows)

    @triton.autotune(configs=gelu_configs, key=["width"])  # type: ignore[untyped-decorator]
    @triton.jit  # type: ignore[untyped-decorator]
    def gelu_quantize_kernel(  # type: ignore[no-untyped-def]
        h_ptr, out_ptr, out_scale_ptr, total_rows, width,
        coefficient: tl.constexpr, fp8_max: tl.constexpr, min_amax: tl.constexpr,
        rows: tl.constexpr, chunk: tl.constexpr,
    ):  # fmt: skip
        # h: [total_rows, width]; out: [total_rows, width] e4m3; out_scale: [total_rows].
        # Two loops over the row in chunks of ``chunk`` columns (a whole FFN row in registers
        # wastes up to half the lanes: 8960 columns take a 16384-wide block): the first
        # finds the row's absolute maximum, the second reads the row again (from L2) and
        # writes it in e4m3.
        row = tl.program_id(0).to(tl.int64) * rows + tl.arange(0, rows)  # [rows]
        row_ok = row[:, None] < total_rows  # [rows, 1]
        amax = tl.zeros((rows, chunk), dtype=tl.float32)  # element-wise, reduced once
        for start in range(0, width, chunk):
            cols = start + tl.arange(0, chunk)  # [chunk]
            mask = row_ok & (cols[None, :] < width)  # [rows, chunk]
            raw = tl.load(h_ptr + row[:, None] * width + cols[None, :], mask=mask, other=0.0)
            h = raw.to(tl.float32)
            # 0.5 h (1 + tanh(u)) = h sigmoid(2u), u = sqrt(2/pi) (h + c h^3): one exp, no tanh
            # (the division is the fast one: 2 ulp of float32 before rounding to bf16, and
            # IEEE divisions made the kernel compute-bound)
            sigmoid_den = 1.0 + tl.exp(-1.5957691216057308 * (h + coefficient * h * h * h))
            y = tl.fdiv(h, sigmoid_den, ieee_rounding=False)
            amax = tl.maximum(amax, tl.abs(y.to(raw.dtype).to(tl.float32)))
        row_amax = tl.maximum(tl.max(amax, axis=1), min_amax)  # [rows]
        inv_scale = fp8_max / row_amax  # [rows]: multiplied, not divided, per element
        for start in range(0, width, chunk):
            cols = start + tl.arange(0, chunk)
            mask = row_ok & (cols[None, :] < width)
            offsets = row[:, None] * width + cols[None, :]
            raw = tl.load(h_ptr + offsets, mask=mask, other=0.0)
            h = raw.to(tl.float32)  # the same GELU again
            sigmoid_den = 1.0 + tl.exp(-1.5957691216057308 * (h + coefficient * h * h * h))
            y = tl.fdiv(h, sigmoid_den, ieee_rounding=False)
            y = y.to(raw.dtype).to(tl.float32)  # the GELU's output in the stream's dtype
            q = tl.clamp(y * inv_scale[:, None], -fp8_max, fp8_max)
            tl.store(out_ptr + offsets, q.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_scale_ptr + row, row_amax / fp8_max, mask=row < total_rows)

    return adaln_quantize_kernel, gelu_quantize_kernel, triton.next_power_of_2, triton.cdiv


@torch.library.custom_op("headcast::adaln_quantize_rows", mutates_args=())
def _adaln_quantize_cuda(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The norm kernel: (the stream after the residual ``[B, L, D]``, or an empty tensor
    without ``delta`` (an op's output cannot be its input), ``[B*L, D]`` e4m3, ``[B*L, 1]``)."""
    kernel, _, next_power_of_2, cdiv = _kernels()
    batch, tokens, dim = x.shape
    total_rows = batch * tokens
    x = x.contiguous()
    out = torch.empty((total_rows, dim), dtype=FP8_DTYPE, device=x.device)
    out_scale = torch.empty((total_rows, 1), dtype=torch.float32, device=x.device)

    def terms(t: torch.Tensor | None) -> torch.Tensor:  # [B, 1, D] -> [B, D] float32
        return x if t is None else t.reshape(batch, dim).float().contiguous()  # x: unread

    x_out = torch.empty_like(x) if delta is not None else x
    kernel[lambda meta: (cdiv(total_rows, meta["rows"]),)](
        x, x if delta is None else delta.contiguous(), terms(gate), x_out,
        terms(shift), terms(scale),
        x if weight is None else weight.contiguous(), x if bias is None else bias.contiguous(),
        out, out_scale, total_rows, tokens, dim, eps, fp8_max=FP8_MAX, min_amax=FP8_MIN_AMAX,
        residual=delta is not None, gated=gate is not None,
        modulate=shift is not None and scale is not None,
        affine=weight is not None and bias is not None, block=next_power_of_2(dim),
    )  # fmt: skip
    return x_out if delta is not None else x.new_empty(0), out, out_scale


@_adaln_quantize_cuda.register_fake
def _(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = math.prod(x.shape[:-1])
    return (
        torch.empty_like(x) if delta is not None else x.new_empty(0),
        x.new_empty((rows, x.shape[-1]), dtype=FP8_DTYPE),
        x.new_empty((rows, 1), dtype=torch.float32),
    )


@torch.library.custom_op("headcast::gelu_quantize_rows", mutates_args=())
def _gelu_quantize_cuda(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel on ``h`` ``[M, N]``: (``[M, N]`` e4m3, ``[M, 1]`` float32)."""
    _, kernel, _, cdiv = _kernels()
    rows, width = h.shape
    h = h.contiguous()
    out = torch.empty((rows, width), dtype=FP8_DTYPE, device=h.device)
    out_scale = torch.empty((rows, 1), dtype=torch.float32, device=h.device)
    kernel[lambda meta: (cdiv(rows, meta["rows"]),)](
        h, out, out_scale, rows, width,
        coefficient=GELU_TANH_COEFFICIENT, fp8_max=FP8_MAX, min_amax=FP8_MIN_AMAX,
    )  # fmt: skip
    return out, out_scale


@_gelu_quantize_cuda.register_fake
def _(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return h.new_empty(h.shape, dtype=FP8_DTYPE), h.new_empty((h.shape[0], 1), dtype=torch.float32)


# -- the entry points ------------------------------------------------------------------------


def adaln_quantize_rows(
    x: torch.Tensor,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> Fp8Rows:
    """``adaln_reference(x, ...)`` as e4m3 rows; ``x`` ``[B, L, D]`` (bf16 on CUDA: the kernel).

    ``shift`` and ``scale`` come together or not at all, as do ``weight`` and ``bias``.
    """
    _check_pairs(shift, scale, weight, bias)
    if not _on_kernel(x):
        return Fp8Rows.quantize(adaln_reference(x, shift, scale, weight, bias, eps))
    _, data, row_scale = torch.ops.headcast.adaln_quantize_rows(
        x, None, None, shift, scale, weight, bias, eps
    )
    return Fp8Rows(data, row_scale, tuple(x.shape[:-1]), x.dtype)


def add_adaln_quantize_rows(
    x: torch.Tensor,
    delta: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, Fp8Rows]:
    """The residual, then ``adaln_quantize_rows`` on its result, in one pass on CUDA.

    ``x`` and ``delta`` ``[B, L, D]``; ``gate`` ``[B, 1, D]`` float32 or None. Returns the new
    stream ``(x + delta * gate).to(x.dtype)`` (``x + delta`` without a gate) and its rows.
    """
    _check_pairs(shift, scale, weight, bias)
    if not _on_kernel(x):
        added = x + delta if gate is None else (x + delta * gate).to(x.dtype)
        return added, Fp8Rows.quantize(adaln_reference(added, shift, scale, weight, bias, eps))
    added, data, row_scale = torch.ops.headcast.adaln_quantize_rows(
        x, delta, gate, shift, scale, weight, bias, eps
    )
    return added, Fp8Rows(data, row_scale, tuple(x.shape[:-1]), x.dtype)


def _check_pairs(
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> None:
    if (shift is None) != (scale is None) or (weight is None) != (bias is None):
        raise ValueError("give shift with scale and weight with bias (or neither of a pair)")


def _on_kernel(x: torch.Tensor) -> bool:
    """Whether the Triton kernels take ``x`` (bf16 on CUDA)."""
    return x.is_cuda and x.dtype == torch.bfloat16


def gelu_quantize_rows(h: torch.Tensor) -> Fp8Rows:
    """``gelu_reference(h)`` as e4m3 rows; ``h`` ``[*lead, N]`` (bf16 on CUDA: the kernel)."""
    if not _on_kernel(h):
        return Fp8Rows.quantize(gelu_reference(h))
    data, row_scale = torch.ops.headcast.gelu_quantize_rows(h.reshape(-1, h.shape[-1]))
    return Fp8Rows(data, row_scale, tuple(h.shape[:-1]), h.dtype)

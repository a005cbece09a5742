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
- ``row_split(width)``: how the kernels lay a row out in registers (two power-of-two
  blocks).

On CUDA each is a Triton kernel (``pipeline.fp8_rows_triton``) whose programs read whole
rows once, keep them in registers and write e4m3 and the scales (rows per program and warps
autotuned per row width). Compiled as separate ops, the norm's statistics, the row maximum
and the quantisation each read the row again (three passes), and the GELU's tanh is
evaluated twice. Anywhere else (CPU, the tests) the reference maths run in PyTorch. Both
round where the unfused block rounds (the norm, the modulation and the GELU to the stream's
dtype), so the e4m3 values are the unfused path's up to float32 rounding (the kernel writes
the GELU's tanh through one exp and a fast reciprocal). The CUDA paths are custom ops
(``headcast::adaln_quantize_rows``, with or without the residual, and
``headcast::gelu_quantize_rows``) so ``torch.compile`` keeps each one call. Triton is
imported on first use.

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

GELU_CONFIGS = ((1, 4), (1, 8), (1, 16), (1, 32), (2, 8), (2, 16), (2, 32), (4, 16))
"""(rows per program, warps) the GELU kernel's autotuner times once per row width (the
14B's 13,824-wide rows took 32 warps in one block)."""


@functools.cache
def _triton() -> tuple[Any, Any]:
    """The two Triton kernels (``pipeline.fp8_rows_triton``), built on first use, and their
    launch grid."""
    from headcast.pipeline.fp8_rows_triton import build_kernels, row_grid

    return build_kernels(ADALN_CONFIGS, GELU_CONFIGS), row_grid


def row_split(width: int) -> tuple[int, int]:
    """(head, tail) register blocks of a ``width``-wide row in the kernels: head the largest
    power of two within it, tail the smallest power of two covering the rest (0 if none):
    5120 -> (4096, 1024), 8960 -> (8192, 1024), 13824 -> (8192, 8192)."""
    head = 1 << (width.bit_length() - 1)
    rest = width - head
    return head, (1 << (rest - 1).bit_length()) if rest else 0


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
    batch, tokens, dim = x.shape
    total_rows = batch * tokens
    x = x.contiguous()
    out = torch.empty((total_rows, dim), dtype=FP8_DTYPE, device=x.device)
    out_scale = torch.empty((total_rows, 1), dtype=torch.float32, device=x.device)

    def terms(t: torch.Tensor | None) -> torch.Tensor:  # [B, 1, D] -> [B, D] float32
        return x if t is None else t.reshape(batch, dim).float().contiguous()  # x: unread

    x_out = torch.empty_like(x) if delta is not None else x
    head, tail = row_split(dim)
    kernels, row_grid = _triton()
    kernels.adaln[row_grid(total_rows)](
        x, x if delta is None else delta.contiguous(), terms(gate), x_out,
        terms(shift), terms(scale),
        x if weight is None else weight.contiguous(), x if bias is None else bias.contiguous(),
        out, out_scale, total_rows, tokens, dim, eps, fp8_max=FP8_MAX, min_amax=FP8_MIN_AMAX,
        residual=delta is not None, gated=gate is not None,
        modulate=shift is not None and scale is not None,
        affine=weight is not None and bias is not None, head=head, tail=tail,
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
    rows, width = h.shape
    h = h.contiguous()
    out = torch.empty((rows, width), dtype=FP8_DTYPE, device=h.device)
    out_scale = torch.empty((rows, 1), dtype=torch.float32, device=h.device)
    head, tail = row_split(width)
    kernels, row_grid = _triton()
    kernels.gelu[row_grid(rows)](
        h, out, out_scale, rows, width,
        coefficient=GELU_TANH_COEFFICIENT, fp8_max=FP8_MAX, min_amax=FP8_MIN_AMAX,
        head=head, tail=tail,
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

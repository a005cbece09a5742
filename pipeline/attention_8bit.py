"""Self-attention with 8-bit tensor-core matmuls (Hopper): a Triton kernel and its PyTorch twin.

Owns ``attention_8bit(q, k, v)`` for ``[B, L, heads, head_dim]`` bf16 tensors and the
quantisation it runs on them (``quantize_qkv``):

- **Q**: int8 per token and head (each row's absolute maximum maps to 127; int8 keeps
  about 4x less error in the scores than e4m3 with its 3 mantissa bits, at the same tensor-core
  rate); the softmax scale and log2(e) are folded into the row scales, so the kernel works in
  base 2.
- **K**: first *smoothed*, its mean over the tokens subtracted per head and channel. That
  adds the same number to every score of a query row, which the softmax ignores, and takes
  away the offset keys share, so the e4m3 grid is spent on what tells keys apart
  (SageAttention's observation). Then int8 per token and head, like Q; padded with zero
  rows to whole key blocks.
- **V**: e4m3 with one scale per block of ``KEY_BLOCK`` tokens and head, stored transposed
  (``[B, heads, head_dim, tokens]``: the tokens innermost, as Hopper's fp8 MMA wants its
  second operand).
- **P** (the probabilities of one key block, in [0, 1]) is multiplied by ``P_SCALE`` before
  it is rounded to e4m3, so the small probabilities of a long, flat row keep 3 significant
  bits instead of falling below e4m3's smallest subnormal; the row sums are kept in float32
  from the unrounded values.

The kernel is FlashAttention's online softmax over key blocks: int8 scores ``Q8 K8^T`` (exact
int32 sums) scaled by
the row and column scales, running maximum and sum in float32, and each block's
``P8 V8`` product scaled by that block's V scale and added to a float32 accumulator
(block by block, so the fp8 MMA never accumulates across blocks). It runs on CUDA devices
with fp8 tensor cores (capability 8.9 and later) and is registered as the custom op
``headcast::attention_8bit`` so ``torch.compile`` keeps it as one opaque call while it fuses
the quantisation into the surrounding block. On any other tensor ``attention_8bit`` computes
the same quantised maths in PyTorch (``reference_attention``: slow, for tests on CPU).

Knows nothing about projections, positions or models.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
"""The fp8 format of V and P (4 exponent, 3 mantissa bits)."""

INT8_MAX = 127.0
"""Q's and K's rows map their absolute maximum to this."""

FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
"""Largest e4m3 value (448): each row's or block's absolute maximum maps to it."""

MIN_AMAX = 1e-12
"""Floor of an absolute maximum (an all-zero row keeps a positive scale)."""

P_SCALE = 256.0
"""Probabilities in [0, 1] are multiplied by this before e4m3 rounding (256 <= 448)."""

KEY_BLOCK = 128
"""Tokens per V scale and the multiple K and V are padded to (every kernel key block size
divides it)."""

LOG2_E = 1.4426950408889634
"""log2(e): the kernel's softmax is in base 2."""

MIN_CAPABILITY = (8, 9)
"""CUDA capability with fp8 tensor cores (Ada, Hopper and later)."""


@dataclass(frozen=True)
class QuantizedQKV:
    """``quantize_qkv``'s result: what the kernel reads."""

    q: torch.Tensor
    """``[B, Lq, H, D]`` int8."""
    q_scale: torch.Tensor
    """``[B, Lq, H]`` float32: row scale x softmax scale x log2(e)."""
    k: torch.Tensor
    """``[B, Lk_pad, H, D]`` int8, smoothed, zero rows past ``keys``."""
    k_scale: torch.Tensor
    """``[B, Lk_pad, H]`` float32."""
    v_t: torch.Tensor
    """``[B, H, D, Lk_pad]`` e4m3: V transposed, zero columns past ``keys``."""
    v_scale: torch.Tensor
    """``[B, H, Lk_pad / KEY_BLOCK]`` float32."""
    keys: int
    """The real key count ``Lk``."""


def _padded(length: int) -> int:
    return -(-length // KEY_BLOCK) * KEY_BLOCK


def _rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 of ``x`` ``[..., D]`` (float32): (int8 ``[..., D]``, scales ``[...]``)."""
    scale = x.abs().amax(dim=-1).clamp_min(MIN_AMAX) / INT8_MAX  # [...]
    return torch.round(x / scale.unsqueeze(-1)).to(torch.int8), scale


def _quantized_tensors(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``quantize_qkv``'s tensors as a tuple (plain tensor code for ``torch.compile``)."""
    keys, head_dim = k.shape[1], k.shape[3]
    padded = _padded(keys)
    q8, q_scale = _rows_int8(q.float())  # [B, Lq, H, D], [B, Lq, H]
    q_scale = q_scale * (LOG2_E / math.sqrt(head_dim))
    k32 = k.float()
    k32 = k32 - k32.mean(dim=1, keepdim=True)  # smoothed: [B, Lk, H, D]
    k8, k_scale = _rows_int8(F.pad(k32, (0, 0, 0, 0, 0, padded - keys)))  # [B, Lk_pad, H, ...]
    v32 = F.pad(v.float(), (0, 0, 0, 0, 0, padded - keys))  # [B, Lk_pad, H, D]
    batch, _, heads, _ = v32.shape
    blocks = v32.view(batch, padded // KEY_BLOCK, KEY_BLOCK, heads, head_dim)  # [B, nb, KB, H, D]
    v_scale = blocks.abs().amax(dim=(2, 4)).clamp_min(MIN_AMAX) / FP8_MAX  # [B, nb, H]
    v8 = (blocks / v_scale[:, :, None, :, None]).to(FP8_DTYPE)  # [B, nb, KEY_BLOCK, H, D]
    v_t = v8.flatten(1, 2).permute(0, 2, 3, 1).contiguous()  # [B, H, D, Lk_pad]
    return (
        q8.contiguous(),
        q_scale.contiguous(),
        k8.contiguous(),
        k_scale.contiguous(),
        v_t,
        v_scale.transpose(1, 2).contiguous(),  # [B, H, nb]
    )


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> QuantizedQKV:
    """Quantise ``q`` ``[B, Lq, H, D]`` and ``k``, ``v`` ``[B, Lk, H, D]`` for the kernel."""
    return QuantizedQKV(*_quantized_tensors(q, k, v), keys=k.shape[1])


def reference_attention(quantized: QuantizedQKV, block: int = KEY_BLOCK) -> torch.Tensor:
    """The kernel's maths in PyTorch (float32, one key block at a time): ``[B, Lq, H, D]``.

    ``block`` is the kernel's key block (a divisor of ``KEY_BLOCK``); only the rounding of
    P depends on it through the running maximum.
    """
    if KEY_BLOCK % block:
        raise ValueError(f"key block {block} must divide {KEY_BLOCK}")
    q = quantized.q.float() * quantized.q_scale.unsqueeze(-1)  # [B, Lq, H, D], base-2 scaled
    k = quantized.k.float() * quantized.k_scale.unsqueeze(-1)  # [B, Lk_pad, H, D]
    v_scale = quantized.v_scale.repeat_interleave(KEY_BLOCK, dim=-1)  # [B, H, Lk_pad]
    v = quantized.v_t.float() * v_scale.unsqueeze(2)  # [B, H, D, Lk_pad]
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, L, D]
    batch, heads, rows, head_dim = q.shape
    peak = torch.full((batch, heads, rows), -math.inf)  # running row maximum
    total = torch.zeros(batch, heads, rows)  # running row sum of 2^(s - peak)
    acc = torch.zeros(batch, heads, rows, head_dim)
    for start in range(0, quantized.keys, block):
        stop = min(start + block, quantized.keys)
        scores = q @ k[:, :, start:stop].transpose(-1, -2)  # [B, H, Lq, n], base 2
        new_peak = torch.maximum(peak, scores.amax(dim=-1))
        alpha = torch.exp2(peak - new_peak)
        p = torch.exp2(scores - new_peak.unsqueeze(-1))  # [B, H, Lq, n]
        total = total * alpha + p.sum(dim=-1)
        p8 = (p * P_SCALE).to(FP8_DTYPE).float() / P_SCALE
        acc = acc * alpha.unsqueeze(-1) + p8 @ v[:, :, :, start:stop].transpose(-1, -2)
        peak = new_peak
    return (acc / total.unsqueeze(-1)).transpose(1, 2)  # [B, Lq, H, D]


def kernel_available(device: torch.device) -> bool:
    """Whether the Triton kernel can run on ``device`` (CUDA with fp8 tensor cores)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= MIN_CAPABILITY


def attention_8bit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention (scale ``1/sqrt(head_dim)``, no mask) with int8 Q, K and fp8 V, P.

    ``q`` ``[B, Lq, H, D]``, ``k`` and ``v`` ``[B, Lk, H, D]``; returns ``[B, Lq, H, D]`` in
    ``v``'s dtype. The Triton kernel on CUDA tensors, ``reference_attention`` otherwise.
    """
    if not q.is_cuda:
        return reference_attention(quantize_qkv(q, k, v)).to(v.dtype)
    tensors = _quantized_tensors(q, k, v)
    out: torch.Tensor = torch.ops.headcast.attention_8bit(*tensors, k.shape[1])  # [B, Lq, H, D]
    return out.to(v.dtype)


@torch.library.custom_op("headcast::attention_8bit", mutates_args=())
def _attention_8bit_op(
    q: torch.Tensor,
    q_scale: torch.Tensor,
    k: torch.Tensor,
    k_scale: torch.Tensor,
    v_t: torch.Tensor,
    v_scale: torch.Tensor,
    keys: int,
) -> torch.Tensor:
    """The kernel on ``quantize_qkv``'s tensors: ``[B, Lq, H, D]`` bf16."""
    batch, rows, heads, head_dim = q.shape
    out = torch.empty(batch, rows, heads, head_dim, device=q.device, dtype=torch.bfloat16)
    kernel = _kernel()

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (-(-rows // meta["BLOCK_M"]), batch * heads)

    kernel[grid](
        q, q_scale, k, k_scale, v_t, v_scale, out,
        rows, keys, heads,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v_t.stride(0), v_t.stride(1), v_t.stride(2),
        v_scale.stride(0), v_scale.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        HEAD_DIM=head_dim, P_SCALE=P_SCALE, SCALE_BLOCK=KEY_BLOCK,
    )  # fmt: skip
    return out


@_attention_8bit_op.register_fake
def _(
    q: torch.Tensor,
    q_scale: torch.Tensor,
    k: torch.Tensor,
    k_scale: torch.Tensor,
    v_t: torch.Tensor,
    v_scale: torch.Tensor,
    keys: int,
) -> torch.Tensor:
    return q.new_empty(q.shape, dtype=torch.bfloat16)


KERNEL_CONFIGS = (
    # (BLOCK_M, BLOCK_N, num_warps, num_stages)
    (128, 128, 8, 3),
    (128, 128, 8, 4),
    (128, 64, 4, 3),
    (128, 64, 8, 4),
    (128, 128, 4, 3),
    (64, 128, 4, 3),
)
"""Tile shapes the kernel is autotuned over on its first call per shape."""


@functools.cache
def _kernel() -> Any:
    """The autotuned Triton kernel, built on first use (CPU machines have no Triton)."""
    import triton
    import triton.language as tl

    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)
        for m, n, warps, stages in KERNEL_CONFIGS
    ]

    @triton.autotune(configs=configs, key=["rows", "keys", "HEAD_DIM"])  # type: ignore[untyped-decorator]
    @triton.jit  # type: ignore[untyped-decorator]  # triton ships no types
    def attention_8bit_kernel(  # type: ignore[no-untyped-def]  # triton reads these annotations
        q_ptr, q_scale_ptr, k_ptr, k_scale_ptr, v_ptr, v_scale_ptr, out_ptr,
        rows, keys, heads,
        stride_qb, stride_qm, stride_qh,
        stride_kb, stride_kn, stride_kh,
        stride_vb, stride_vh, stride_vd,
        stride_sb, stride_sh,
        stride_ob, stride_om, stride_oh,
        HEAD_DIM: tl.constexpr, P_SCALE: tl.constexpr, SCALE_BLOCK: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        # q, k: [B, L, H, D] int8 (D innermost); scales [B, L, H] f32 (row-major, contiguous);
        # v: [B, H, D, Lk_pad] e4m3 (tokens innermost); v scales [B, H, Lk_pad / SCALE_BLOCK]
        block_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < rows
        q_base = q_ptr + b.to(tl.int64) * stride_qb + h * stride_qh
        q = tl.load(
            q_base + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :],
            mask=row_ok[:, None], other=0.0,
        )  # fmt: skip  # [BLOCK_M, D]
        q_scale = tl.load(q_scale_ptr + (b * rows + offs_m) * heads + h, mask=row_ok, other=0.0)
        k_base = k_ptr + b.to(tl.int64) * stride_kb + h * stride_kh
        k_scale_base = k_scale_ptr + b * (tl.cdiv(keys, SCALE_BLOCK) * SCALE_BLOCK) * heads + h
        v_base = v_ptr + b.to(tl.int64) * stride_vb + h * stride_vh
        v_scale_base = v_scale_ptr + b * stride_sb + h * stride_sh
        peak = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        for start in range(0, keys, BLOCK_N):
            cols = start + offs_n
            k = tl.load(k_base + cols[None, :].to(tl.int64) * stride_kn + offs_d[:, None])
            k_scale = tl.load(k_scale_base + cols * heads)  # [BLOCK_N]
            dots = tl.dot(q, k, out_dtype=tl.int32).to(tl.float32)  # [BLOCK_M, BLOCK_N]
            scores = dots * (q_scale[:, None] * k_scale[None, :])
            if start + BLOCK_N > keys:  # the last block: padded keys get no weight
                scores = tl.where(cols[None, :] < keys, scores, float("-inf"))
            new_peak = tl.maximum(peak, tl.max(scores, axis=1))
            alpha = tl.math.exp2(peak - new_peak)
            p = tl.math.exp2(scores - new_peak[:, None])
            total = total * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + offs_d[None, :] * stride_vd + cols[:, None])  # [BLOCK_N, D]
            v_scale = tl.load(v_scale_base + start // SCALE_BLOCK)
            p8 = (p * P_SCALE).to(tl.float8e4nv)
            acc = acc * alpha[:, None] + tl.dot(p8, v) * v_scale
            peak = new_peak
        out = acc / (total[:, None] * P_SCALE)
        out_base = out_ptr + b.to(tl.int64) * stride_ob + h * stride_oh
        tl.store(
            out_base + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :],
            out.to(tl.bfloat16), mask=row_ok[:, None],
        )  # fmt: skip

    return attention_8bit_kernel

"""Self-attention in fp8 through cuDNN's fused fp8 flash attention (Hopper), and its twin.

Owns ``attention_fp8(q, k, v)`` for ``[B, L, heads, head_dim]`` tensors (and
``attend_fp8`` / ``attend_fp8_rows`` for tensors already quantised, e.g. by
``pipeline.attention_fp8_inputs``):

- **Quantisation** (plain tensor code, fused into a compiled block): K is first *smoothed*,
  its mean over the tokens subtracted per head and channel. That adds the same number to
  every score of a query row, which the softmax ignores, and takes away the offset keys
  share (SageAttention's observation), so e4m3's 3 mantissa bits go to what tells keys
  apart. Q, K and V are then e4m3 with one scale per tensor (cuDNN's fp8 attention takes
  per-tensor descales), each tensor's absolute maximum mapped to 448. (The DiT's unsharded
  self-attention gets the same e4m3 values, with its qk norm and RoPE, from the Triton
  passes of ``pipeline.attention_fp8_inputs``.)
- **The kernel**: cuDNN's fp8 SDPA forward through the ``cudnn`` Python frontend (the
  optional package ``nvidia-cudnn-frontend``; cuDNN 9.14 or later, CUDA capability 9.0 or
  later). One graph per shape and device, built on first use and cached. The probabilities
  are rounded to e4m3 after scaling by ``P_SCALE``, as the frontend's own tests do. On
  Hopper cuDNN writes the output in e4m3 too (bf16 output is Blackwell-only): it is scaled
  by V's scale, which bounds it (each output row is a convex combination of V's rows), and
  dequantised in the compiled block. Registered as the custom op
  ``headcast::cudnn_fp8_attention`` so ``torch.compile`` keeps it as one opaque call.
- **The twin** (``reference_attention_fp8``): the same quantised maths in float32 PyTorch;
  ``attention_fp8`` uses it for tensors not on CUDA (CPU tests), and the GPU checks compare
  the kernel with it.

``fp8_attention_problem(device)`` says why the kernel cannot run somewhere (or None).
Knows nothing about projections, positions or models.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from headcast.pipeline.quantize import Fp8Rows

FP8_DTYPE = torch.float8_e4m3fn
"""The fp8 format of Q, K, V and the probabilities (4 exponent, 3 mantissa bits)."""

FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
"""Largest e4m3 value (448)."""

MIN_AMAX = 1e-12
"""Floor of a tensor's absolute maximum (an all-zero tensor keeps a positive scale)."""

P_SCALE = 112.0
"""Probabilities (at most 1) are multiplied by this before e4m3 rounding: the frontend's
tests' choice (448 x 0.25), which leaves cuDNN room for its lazily rescaled maxima."""

MIN_CAPABILITY = (9, 0)
"""CUDA capability of cuDNN's fp8 attention (Hopper and later)."""

MIN_CUDNN = 91400
"""cuDNN version with the fp8 SDPA forward this module builds (9.14)."""

FRONTEND_PACKAGE = "nvidia-cudnn-frontend"
"""The pip package that provides ``import cudnn``."""


class Uid:
    """Tensor ids of the cuDNN graph (any distinct integers)."""

    Q, K, V, OUT = 1, 2, 3, 4
    DESCALE_Q, DESCALE_K, DESCALE_V = 5, 6, 7
    DESCALE_S, SCALE_S, SCALE_O = 8, 9, 10
    AMAX_S, AMAX_O = 11, 12


def _to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` in e4m3 with one scale: (e4m3 like ``x``, descale ``[1, 1, 1, 1]`` float32)."""
    descale = x.abs().amax().clamp_min(MIN_AMAX).reshape(1, 1, 1, 1) / FP8_MAX
    return (x / descale).to(FP8_DTYPE), descale


class QuantizedQKV(NamedTuple):
    """``quantize_fp8``'s result, in the order the kernel and its twin take it."""

    q8: torch.Tensor
    """``[B, Lq, H, D]`` e4m3."""
    k8: torch.Tensor
    """``[B, Lk, H, D]`` e4m3, smoothed."""
    v8: torch.Tensor
    """``[B, Lk, H, D]`` e4m3."""
    descale_q: torch.Tensor
    """``[1, 1, 1, 1]`` float32 (multiply by it to dequantise), as the two below."""
    descale_k: torch.Tensor
    descale_v: torch.Tensor


def quantize_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> QuantizedQKV:
    """``q``, ``k`` (smoothed), ``v`` ``[B, L, H, D]`` in e4m3, then their three descales."""
    k32 = k.float()
    q8, descale_q = _to_fp8(q.float())
    k8, descale_k = _to_fp8(k32 - k32.mean(dim=1, keepdim=True))  # smoothed over tokens
    v8, descale_v = _to_fp8(v.float())
    return QuantizedQKV(q8, k8, v8, descale_q, descale_k, descale_v)


def reference_attention_fp8(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
) -> torch.Tensor:
    """The kernel's maths in float32 on ``quantize_fp8``'s tensors: ``[B, Lq, H, D]``.

    Scores from the dequantised Q and K, softmax with the probabilities rounded to e4m3 at
    ``P_SCALE`` for the product with V, normalised by the unrounded row sums, and the
    output rounded to e4m3 at V's scale.
    """
    q = (q8.float() * descale_q).transpose(1, 2)  # [B, H, Lq, D]
    k = (k8.float() * descale_k).transpose(1, 2)  # [B, H, Lk, D]
    v = (v8.float() * descale_v).transpose(1, 2)  # [B, H, Lk, D]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, Lq, Lk]
    p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    p8 = (p * P_SCALE).to(FP8_DTYPE).float() / P_SCALE
    out = (p8 @ v) / p.sum(dim=-1, keepdim=True)  # [B, H, Lq, D]
    out8 = (out / descale_v).to(FP8_DTYPE)  # the kernel's e4m3 output at V's scale
    return (out8.float() * descale_v).transpose(1, 2)  # [B, Lq, H, D]


def _attend(quantized: QuantizedQKV) -> torch.Tensor:
    """``quantize_fp8``'s tensors -> the e4m3 output at V's scale ``[B, Lq, H, D]``: the
    kernel on CUDA, the twin (re-rounded to e4m3, exactly) elsewhere."""
    if quantized.q8.is_cuda:
        out8: torch.Tensor = torch.ops.headcast.cudnn_fp8_attention(*quantized)
        return out8
    return (reference_attention_fp8(*quantized) / quantized.descale_v).to(FP8_DTYPE)


def attention_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention (scale ``1/sqrt(head_dim)``, no mask) with Q, K, V and P in e4m3.

    ``q`` ``[B, Lq, H, D]``, ``k`` and ``v`` ``[B, Lk, H, D]``; returns ``[B, Lq, H, D]`` in
    ``v``'s dtype. cuDNN's kernel on CUDA tensors, ``reference_attention_fp8`` otherwise.
    """
    return attend_fp8(quantize_fp8(q, k, v), v.dtype)


def attend_fp8(quantized: QuantizedQKV, dtype: torch.dtype) -> torch.Tensor:
    """``attention_fp8`` from already quantised tensors: ``[B, Lq, H, D]`` in ``dtype``."""
    return (_attend(quantized).float() * quantized.descale_v).to(dtype)  # dequantised


def attend_fp8_rows(quantized: QuantizedQKV, dtype: torch.dtype) -> Fp8Rows:
    """``attend_fp8``'s output as the e4m3 rows ``[B * Lq, H * D]`` the kernel wrote, every
    row at V's scale (``dtype`` is the rows' unquantised dtype): the input of an fp8 output
    projection, without dequantising and quantising it again."""
    out8 = _attend(quantized)  # [B, Lq, H, D] e4m3
    batch, rows, heads, head_dim = out8.shape
    scale = quantized.descale_v.reshape(1, 1).expand(batch * rows, 1).contiguous()  # [B*Lq, 1]
    return Fp8Rows(out8.reshape(batch * rows, heads * head_dim), scale, (batch, rows), dtype)


def fp8_attention_problem(device: torch.device) -> str | None:
    """Why cuDNN's fp8 attention cannot run on ``device`` (None: it can; CPU runs the twin)."""
    if device.type != "cuda":
        return None
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"{device} has CUDA capability {capability[0]}.{capability[1]}; it needs 9.0"
    try:
        import cudnn
    except ImportError:
        return f"the cuDNN Python frontend is not installed: pip install {FRONTEND_PACKAGE}"
    version = int(cudnn.backend_version())
    if version < MIN_CUDNN:
        return f"cuDNN {version} is older than {MIN_CUDNN} (9.14), which has fp8 attention"
    return None


@dataclass
class _Graph:
    """One built cuDNN graph (one shape on one device) and what running it needs."""

    graph: Any
    handle: Any
    workspace: torch.Tensor
    scales: torch.Tensor
    """``[2]`` float32 on the device: descale_s, scale_s."""
    amax: torch.Tensor
    """``[2]`` float32 on the device: the amax outputs (unused)."""


@functools.cache
def _handle(device_index: int) -> Any:
    import cudnn

    with torch.cuda.device(device_index):
        return cudnn.create_handle()


@functools.cache
def _graph(
    batch: int, heads: int, rows: int, keys: int, head_dim: int, device_index: int
) -> _Graph:
    """Build (once per shape and device) the fp8 SDPA forward graph for ``[B, L, H, D]``."""
    import cudnn

    handle = _handle(device_index)
    graph = cudnn.pygraph(
        io_data_type=cudnn.data_type.FP8_E4M3,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=handle,
    )

    def bshd(uid: int, length: int) -> Any:  # a [B, L, H, D] tensor seen as (b, h, s, d)
        return graph.tensor(
            uid=uid,
            dim=(batch, heads, length, head_dim),
            stride=(length * heads * head_dim, head_dim, heads * head_dim, 1),
            data_type=cudnn.data_type.FP8_E4M3,
        )

    def scalar(uid: int) -> Any:
        return graph.tensor(
            uid=uid, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=cudnn.data_type.FLOAT
        )

    out, _, amax_s, amax_o = graph.sdpa_fp8(
        q=bshd(Uid.Q, rows),
        k=bshd(Uid.K, keys),
        v=bshd(Uid.V, keys),
        descale_q=scalar(Uid.DESCALE_Q),
        descale_k=scalar(Uid.DESCALE_K),
        descale_v=scalar(Uid.DESCALE_V),
        descale_s=scalar(Uid.DESCALE_S),
        scale_s=scalar(Uid.SCALE_S),
        scale_o=scalar(Uid.SCALE_O),
        generate_stats=False,
        attn_scale=1.0 / math.sqrt(head_dim),
    )
    out.set_uid(Uid.OUT).set_output(True).set_dim((batch, heads, rows, head_dim)).set_stride(
        (rows * heads * head_dim, head_dim, heads * head_dim, 1)
    ).set_data_type(cudnn.data_type.FP8_E4M3)
    for uid, amax in ((Uid.AMAX_S, amax_s), (Uid.AMAX_O, amax_o)):
        amax.set_uid(uid).set_output(True).set_dim((1, 1, 1, 1)).set_stride(
            (1, 1, 1, 1)
        ).set_data_type(cudnn.data_type.FLOAT)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    device = torch.device("cuda", device_index)
    workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=device)
    scales = torch.tensor([1.0 / P_SCALE, P_SCALE], dtype=torch.float32, device=device)
    amax = torch.zeros(2, dtype=torch.float32, device=device)
    return _Graph(graph, handle, workspace, scales, amax)


@torch.library.custom_op("headcast::cudnn_fp8_attention", mutates_args=())
def _cudnn_fp8_attention(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
) -> torch.Tensor:
    """cuDNN's fp8 attention on ``quantize_fp8``'s tensors: ``[B, Lq, H, D]`` e4m3 at V's
    scale (multiply by ``descale_v``)."""
    import cudnn

    batch, rows, heads, head_dim = q8.shape
    q8, k8, v8 = q8.contiguous(), k8.contiguous(), v8.contiguous()
    built = _graph(batch, heads, rows, k8.shape[1], head_dim, q8.device.index or 0)
    cudnn.set_stream(handle=built.handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
    out = torch.empty(q8.shape, dtype=FP8_DTYPE, device=q8.device)
    scale_o = (1.0 / descale_v).contiguous()  # the output's scale: V's bounds it
    pack = {
        Uid.Q: q8,
        Uid.K: k8,
        Uid.V: v8,
        Uid.OUT: out,
        Uid.DESCALE_Q: descale_q.contiguous(),
        Uid.DESCALE_K: descale_k.contiguous(),
        Uid.DESCALE_V: descale_v.contiguous(),
        Uid.DESCALE_S: built.scales[0:1],
        Uid.SCALE_S: built.scales[1:2],
        Uid.SCALE_O: scale_o,
        Uid.AMAX_S: built.amax[0:1],
        Uid.AMAX_O: built.amax[1:2],
    }
    built.graph.execute(pack, built.workspace, handle=built.handle)
    return out


@_cudnn_fp8_attention.register_fake
def _(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
) -> torch.Tensor:
    return q8.new_empty(q8.shape, dtype=FP8_DTYPE)

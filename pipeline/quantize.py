"""Low-precision linears for the DiT's transformer blocks: fp8, int8, int4 and nf4.

Owns: the quantisation modes (``QUANTIZE_MODES``), ``Float8Linear`` (fp8 e4m3 weights with
one scale per output channel, activations quantised per token at run time, multiplied by
``torch._scaled_mm`` with row-wise scales on Hopper and emulated in float32 elsewhere),
``Fp8Rows`` (activations already quantised per token, which ``Float8Linear`` also takes), the
choice of which linears each mode replaces, and ``quantize_block`` / ``quantize_dit``, which
replace them in place. int8 and int4 are weight-only through optimum-quanto, nf4 through
bitsandbytes; both are imported only when asked for.

Must not know about sampling, the VAE, sessions or how the weights were obtained: it takes
built modules (after the official state dict was loaded, and after projection fusion) and
changes their linears. Quantise under ``torch.no_grad()``, not ``inference_mode`` (quanto's
qint4 fails there).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "fp8", "int8", "int4", "nf4")
"""``none`` keeps bf16; ``fp8`` is weights and activations in e4m3 (compute in fp8);
``int8``/``int4``/``nf4`` store weights only in fewer bits (compute stays bf16)."""

FP8_DTYPE = torch.float8_e4m3fn
"""The fp8 format of weights and activations (4 exponent, 3 mantissa bits)."""

FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
"""Largest finite e4m3 value (448): a row's absolute maximum is scaled to it."""

FP8_MIN_AMAX = 1e-12
"""Floor of a row's absolute maximum before it becomes a scale (an all-zero row)."""

FP8_GEMM_MULTIPLE = 16
"""``torch._scaled_mm`` needs in and out features that are multiples of this."""

SCALED_MM_MIN_CAPABILITY = (8, 9)
"""CUDA capability with fp8 tensor cores (Ada, Hopper and later)."""

FP8_USE_FAST_ACCUM = True
"""Accumulate fp8 products without periodic fp32 promotion (faster; error well under the
fp8 rounding of the operands)."""

TOKEN_STREAM_LINEARS = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.qkv", "self_attn.o",
    "cross_attn.q", "cross_attn.o",
    "audio_cross_attn.q_linear", "audio_cross_attn.proj",
    "ffn.0", "ffn.2",
)  # fmt: skip
"""Block linears applied to all video tokens (99 % of a block's FLOPs): the ones fp8 speeds
up. The context projections (769 text+image tokens, 288 audio tokens) stay bf16 in fp8 mode."""


class QuantizeUnavailable(RuntimeError):
    """The quantisation mode needs a package or a GPU this machine does not have."""


@dataclass
class Fp8Rows:
    """Activations ``[*lead, K]`` as e4m3 rows with one float32 scale each,
    ``x ≈ data.float() * scale`` (what ``Float8Linear`` multiplies; ``pipeline.fp8_rows``
    produces them fused with the norm or activation before the linear)."""

    data: torch.Tensor
    """``[M, K]`` e4m3, row-major (``M = prod(lead)``)."""
    scale: torch.Tensor
    """``[M, 1]`` float32."""
    lead: tuple[int, ...]
    """The activations' leading dimensions (``(B, L)`` for a block's tokens)."""
    dtype: torch.dtype
    """The activations' dtype before quantisation: the linear's output dtype."""

    @classmethod
    def quantize(cls, x: torch.Tensor) -> Fp8Rows:
        """``x`` ``[*lead, K]`` quantised per row."""
        data, scale = quantize_rows_fp8(x.reshape(-1, x.shape[-1]))
        return cls(data, scale, tuple(x.shape[:-1]), x.dtype)


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantisation of ``x`` ``[M, K]``: (``[M, K]`` fp8, scales ``[M, 1]`` f32).

    ``x ≈ q.float() * scale`` with each row's absolute maximum mapped to ``FP8_MAX``.
    """
    x32 = x.float()
    amax = x32.abs().amax(dim=-1, keepdim=True).clamp_min(FP8_MIN_AMAX)  # [M, 1]
    scale = amax / FP8_MAX  # [M, 1]
    quantized = (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)  # [M, K]
    return quantized.contiguous(), scale  # scaled_mm takes a row-major left operand


def scaled_mm_supported(device: torch.device) -> bool:
    """True when ``torch._scaled_mm`` with row-wise scales runs on ``device``."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (
        SCALED_MM_MIN_CAPABILITY
    )


class Float8Linear(nn.Module):
    """``y = x W^T + b`` with W in e4m3 (one scale per output channel) and x quantised per
    token at run time; the product accumulates in fp32 and returns ``x``'s dtype.

    On a GPU with fp8 tensor cores and bf16 input it calls ``torch._scaled_mm`` with
    row-wise scales; elsewhere it computes the same quantised product in float32 (the
    emulation the CPU tests check it against).
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.in_features = in_features
        self.out_features = out_features
        quantized, scale = quantize_rows_fp8(weight.detach())  # [N, K] fp8, [N, 1] f32
        self.register_buffer("weight", quantized)  # [N, K] e4m3
        self.register_buffer("weight_scale", scale.reshape(1, out_features).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.use_scaled_mm = (
            scaled_mm_supported(weight.device)
            and in_features % FP8_GEMM_MULTIPLE == 0
            and out_features % FP8_GEMM_MULTIPLE == 0
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float8Linear:
        """The fp8 version of ``linear`` (its weight is quantised; keep the bias dtype)."""
        return cls(linear.weight, linear.bias)

    def extra_repr(self) -> str:
        kernel = "scaled_mm" if self.use_scaled_mm else "emulated"
        return f"in={self.in_features}, out={self.out_features}, {kernel}"

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the product uses, ``[N, K]`` float32."""
        return self.weight.float() * self.weight_scale.t()

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        """``x`` ``[*lead, K]``, or already quantised (``Fp8Rows``) -> ``[*lead, N]``."""
        rows = x if isinstance(x, Fp8Rows) else Fp8Rows.quantize(x)  # [M, K] e4m3, [M, 1]
        if self.use_scaled_mm and rows.dtype == torch.bfloat16:
            bias = None if self.bias is None else self.bias.to(rows.dtype)
            out = torch._scaled_mm(
                rows.data,
                self.weight.t(),  # [K, N], column-major as the kernel wants
                scale_a=rows.scale,
                scale_b=self.weight_scale,
                bias=bias,
                out_dtype=rows.dtype,
                use_fast_accum=FP8_USE_FAST_ACCUM,
            )  # [M, N]
        else:
            bias = None if self.bias is None else self.bias.float()
            dequantized = rows.data.float() * rows.scale  # [M, K]
            out = F.linear(dequantized, self.dequantized_weight(), bias).to(rows.dtype)
        return out.reshape(*rows.lead, self.out_features)


@dataclass(frozen=True)
class QuantizeSummary:
    """What ``quantize_dit`` replaced."""

    mode: str
    linears: int
    """Linear layers replaced."""
    parameters: int
    """Weights (elements) now stored in the low-precision format."""


def _block_linears(
    block: nn.Module, names: tuple[str, ...] | None
) -> Iterator[tuple[str, nn.Linear]]:
    """``(qualified name, linear)`` of the block's plain linears, restricted to ``names``."""
    for name, module in block.named_modules():
        if type(module) is nn.Linear and (names is None or name in names):
            yield name, module


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def _quanto_qtype(mode: str) -> object:
    try:
        from optimum.quanto import qint4, qint8
    except ImportError as exc:
        raise QuantizeUnavailable(
            f"--quantize {mode} needs optimum-quanto (pip install optimum-quanto)"
        ) from exc
    return {"int8": qint8, "int4": qint4}[mode]


def _nf4_linear(linear: nn.Linear) -> nn.Module:
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise QuantizeUnavailable(
            "--quantize nf4 needs bitsandbytes (pip install bitsandbytes)"
        ) from exc
    device = linear.weight.device
    if device.type != "cuda":
        raise QuantizeUnavailable("--quantize nf4 (bitsandbytes) runs on CUDA only")
    layer: nn.Module = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=linear.weight.dtype,
        quant_type="nf4",
        device="meta",
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.detach(), requires_grad=False, quant_type="nf4"
    ).to(device)  # bitsandbytes quantises in this .to()
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    return layer


@torch.no_grad()
def quantize_block(block: nn.Module, mode: str) -> tuple[int, int]:
    """Replace the block's linears in place for ``mode``; returns (linears, weights) replaced."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(
            f"unknown quantize mode {mode!r}; choose one of {', '.join(QUANTIZE_MODES)}"
        )
    if mode == "none":
        return 0, 0
    names = TOKEN_STREAM_LINEARS if mode == "fp8" else None
    targets = list(_block_linears(block, names))
    count = sum(linear.weight.numel() for _, linear in targets)
    if mode == "fp8":
        for name, linear in targets:
            _set_submodule(block, name, Float8Linear.from_linear(linear))
    elif mode == "nf4":
        for name, linear in targets:
            _set_submodule(block, name, _nf4_linear(linear))
    else:
        from optimum.quanto import freeze, quantize

        quantize(block, weights=_quanto_qtype(mode), include=[name for name, _ in targets])
        freeze(block)
    return len(targets), count


@torch.no_grad()
def quantize_dit(dit: nn.Module, mode: str) -> QuantizeSummary:
    """Quantise the linears of every transformer block of ``dit`` (``dit.blocks``) in place.

    Embeddings, the timestep MLPs and the head stay in their dtypes (under 1 % of the
    weights). Call after loading and after ``fuse_projections``.
    """
    linears = parameters = 0
    for block in dit.blocks:  # type: ignore[union-attr]
        block_linears, block_parameters = quantize_block(block, mode)
        linears += block_linears
        parameters += block_parameters
    logger.info("quantized %d DiT linears (%.2f B weights) to %s", linears, parameters / 1e9, mode)
    return QuantizeSummary(mode=mode, linears=linears, parameters=parameters)

"""Run-time speed options of a loaded FlashTalk generator, applied in one place.

Owns: ``SpeedOptions`` (SDPA kernel preference, fp8 self-attention, projection fusion,
DiT quantisation, ``torch.compile`` of the transformer blocks and of the colour correction,
channels-last VAE with fused norm + SiLU kernels, cuDNN autotuning) with the ``official``
(all off, as the official code runs) and ``fast`` presets, ``engine_speed_options`` (a
serving engine's), ``prepare_dit_block`` (fusion, quantisation and the attention kernel of
one block, so a loader can do it block by block and never hold the whole bf16 model),
``bf16_attention`` and ``apply_speedups``.

None of these changes a result beyond bf16 rounding except ``quantize`` (fp8/int8/int4/nf4)
and ``attention_fp8``, whose errors the benchmark reports. Knows nothing about sessions,
timing or files.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from headcast.pipeline.attention import ATTENTION_BACKENDS
from headcast.pipeline.attention_fp8 import fp8_attention_problem
from headcast.pipeline.color import match_and_blend_colors
from headcast.pipeline.dit import DiTBlock, FlashTalkDiT, SelfAttention
from headcast.pipeline.generator import FlashTalkGenerator
from headcast.pipeline.quantize import QUANTIZE_MODES, quantize_block
from headcast.pipeline.vae_kernels import norm_silu

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")
"""``torch.compile`` modes the blocks may be compiled with (``default`` is mode None)."""

WEIGHT_ONLY_MODES = ("int8", "int4", "nf4")
"""Quantisation modes whose layers are tensor subclasses or custom kernels: run eagerly."""


@dataclass(frozen=True)
class SpeedOptions:
    """How to run a generator fast; every field is independent of the others."""

    attention: str = "auto"
    """SDPA kernel preference (``auto``, ``cudnn``, ``flash``, ``efficient``, ``math``)."""

    attention_fp8: bool = False
    """The DiT's self-attention in fp8 (``pipeline.attention_fp8``: cuDNN's fused kernel,
    Hopper and the ``nvidia-cudnn-frontend`` package). Changes results beyond bf16 rounding,
    like ``quantize``."""

    fuse_projections: bool = False
    """One GEMM for q/k/v of the self-attention and for k/v of each context."""

    quantize: str = "none"
    """DiT block linears: ``none`` (bf16), ``fp8``, ``int8``, ``int4``, ``nf4``."""

    compile_mode: str | None = None
    """``torch.compile`` mode for every DiT block and the colour correction; None: eager."""

    vae_channels_last: bool = False
    """Run the VAE's convolutions in the channels-last layout."""

    vae_fused_norms: bool = False
    """Apply each VAE RMSNorm and its SiLU as one Triton kernel (CUDA, channels-last)."""

    cudnn_benchmark: bool = False
    """Let cuDNN time its convolution algorithms once per shape (process-wide setting)."""

    def __post_init__(self) -> None:
        problems = []
        if self.attention not in ATTENTION_BACKENDS:
            problems.append(f"attention={self.attention!r} not in {ATTENTION_BACKENDS}")
        if self.quantize not in QUANTIZE_MODES:
            problems.append(f"quantize={self.quantize!r} not in {QUANTIZE_MODES}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            problems.append(f"compile_mode={self.compile_mode!r} not in {COMPILE_MODES}")
        if self.vae_fused_norms and not self.vae_channels_last:
            problems.append("vae_fused_norms needs vae_channels_last (the kernel's layout)")
        if self.compile_mode is not None and self.quantize in WEIGHT_ONLY_MODES:
            problems.append(
                f"compile with quantize={self.quantize!r} is not supported (quantized weight "
                "tensors run eagerly); drop --compile"
            )
        if problems:
            raise ValueError("invalid speed options: " + "; ".join(problems))

    @classmethod
    def official(cls) -> SpeedOptions:
        """Everything off: how the official code runs (eager, PyTorch's SDPA choice)."""
        return cls()

    @classmethod
    def fast(cls, device: torch.device | str, **changes: object) -> SpeedOptions:
        """Every speed-up that keeps bf16 results, for ``device``, with ``changes`` on top."""
        on_cuda = torch.device(device).type == "cuda"
        options = cls(
            attention="cudnn" if on_cuda else "auto",
            fuse_projections=False,  # measured on an H200: the fused qkv GEMM is slower
            vae_channels_last=on_cuda,
            vae_fused_norms=on_cuda,
            cudnn_benchmark=on_cuda,
        )
        return replace(options, **changes)  # type: ignore[arg-type]


def engine_speed_options(
    speedups: str,
    device: torch.device | str,
    *,
    quantize: str,
    compile: bool,
    attention_fp8: bool,
) -> SpeedOptions:
    """A serving engine's options: the ``official`` preset (all off) or the ``fast`` one for
    ``device``, with the engine's precision, fp8 attention and compilation on top."""
    base = SpeedOptions.official() if speedups == "official" else SpeedOptions.fast(device)
    return replace(
        base,
        quantize=quantize,
        compile_mode="default" if compile else None,
        attention_fp8=attention_fp8,
    )


def prepare_dit_block(block: nn.Module, options: SpeedOptions) -> None:
    """Fuse (if asked), quantise and pick the self-attention kernel of one loaded DiT block,
    in place."""
    if options.fuse_projections and isinstance(block, DiTBlock):
        block.fuse_projections()
    quantize_block(block, options.quantize)
    if hasattr(block, "fp8_inputs"):  # a block that can feed its fp8 linears e4m3 rows
        setattr(block, "fp8_inputs", options.quantize == "fp8")  # noqa: B010  # nn.Module typing
    self_attn = getattr(block, "self_attn", None)
    if isinstance(self_attn, SelfAttention):
        self_attn.use_fp8 = options.attention_fp8


@contextlib.contextmanager
def bf16_attention(blocks: Iterable[nn.Module]) -> Iterator[None]:
    """Run the enclosed forwards with every block's self-attention in bf16 (a reference for
    the error of ``attention_fp8``), then restore each block's choice."""
    layers = [getattr(block, "self_attn", None) for block in blocks]
    chosen = [(layer, layer.use_fp8) for layer in layers if isinstance(layer, SelfAttention)]
    for self_attn, _ in chosen:
        self_attn.use_fp8 = False
    try:
        yield
    finally:
        for self_attn, use_fp8 in chosen:
            self_attn.use_fp8 = use_fp8


def check_attention_fp8(options: SpeedOptions, device: torch.device | str) -> None:
    """Raise a ``ValueError`` that says what to do if ``options`` asks for fp8 attention
    where cuDNN's kernel cannot run (on CPU its PyTorch twin runs: slow, for tests)."""
    problem = fp8_attention_problem(torch.device(device)) if options.attention_fp8 else None
    if problem is not None:
        raise ValueError(
            f"fp8 attention cannot run: {problem}. Fix that, or turn fp8 attention off "
            "(the --attention-fp8 flag, the attention_fp8 setting)"
        )


def _compile_mode_arg(mode: str) -> str | None:
    return None if mode == "default" else mode


def apply_speedups(
    generator: FlashTalkGenerator, options: SpeedOptions, *, blocks_prepared: bool = False
) -> None:
    """Apply ``options`` to a loaded generator in place.

    ``blocks_prepared`` says the DiT blocks were already fused and quantised by
    ``prepare_dit_block`` while they were built. Compilation itself happens on the first
    chunk (report that chunk's time apart).
    """
    check_attention_fp8(options, generator.device)
    if options.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    dit: FlashTalkDiT = generator.dit
    if not blocks_prepared:
        for block in dit.blocks:
            prepare_dit_block(block, options)
    generator.attention_backend = options.attention
    if options.vae_channels_last:
        generator.vae.to_channels_last()
    if options.vae_fused_norms:
        generator.vae.fuse_norms(norm_silu)
    if options.compile_mode is not None:
        mode = _compile_mode_arg(options.compile_mode)
        dit.compile_blocks(mode)
        generator.color_correct = torch.compile(match_and_blend_colors, mode=mode, dynamic=False)
    logger.info("speed options applied: %s", options)

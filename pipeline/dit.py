"""The SoulX-FlashTalk diffusion transformer: Wan 2.1 I2V 14B with audio conditioning.

Owns: the DiT's configuration (:class:`DiTConfig`), its modules with the official checkpoint's
tensor names (so ``diffusion_pytorch_model*.safetensors`` loads with ``strict=True``), its
forward pass (velocity prediction for one batch of latents) and :func:`load_dit`. Must not
know about sampling schedules, the VAE, the audio/text/image encoders, streaming sessions or
threads: it maps tensors to a tensor and holds no per-session state.

Dtype policy (as the official code computes it): weights are bf16 on the GPU and the token
stream runs in the weights' dtype. LayerNorm and RMSNorm statistics, RoPE, the AdaLN
modulation (``shift``/``scale``/``gate``), the residual adds of the gated branches, the
timestep embedding and the output head are computed in float32; the results are cast back
to the stream's dtype where the official code casts them. :func:`load_dit` keeps the timestep
MLPs and the head in float32 (they are small) so those float32 matmuls need no per-step cast.
The returned velocity is float32. On CPU in float32 everything is float32 (the goldens).

The forward is meant for ``torch.no_grad()`` (not ``inference_mode``) and ``torch.compile``:
it never reads tensor values on the host, and its Python branches depend only on shapes and
the config.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from headcast.pipeline.attention import attention
from headcast.pipeline.attention_fp8 import attend_fp8, attend_fp8_rows, attention_fp8
from headcast.pipeline.attention_fp8_inputs import norm_rope_quantize, rms_norm
from headcast.pipeline.checkpoint import (
    CheckpointError,
    materialize,
    read_safetensors_state,
    require_file,
    sharded_safetensors_files,
)
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.quantize import Float8Linear, Fp8Rows
from headcast.pipeline.rope import RopeTableCache, apply_rope
from headcast.pipeline.sequence_parallel import (
    TokenShard,
    gather_tokens,
    local_rows,
    token_shard,
    ulysses_attention,
)

logger = logging.getLogger(__name__)

CLIP_IMAGE_TOKENS = 257
"""Tokens of the CLIP ViT-H/14 image features at the head of the context (16x16 patches + class)."""

CLIP_EMBED_DIM = 1280
"""Channels of the CLIP ViT-H/14 image features (``clip_fea``)."""

TORCH_LAYER_NORM_EPS = 1e-5
"""Epsilon of the plain ``nn.LayerNorm`` layers (image projection, audio projection output)."""

SINUSOID_BASE = 10_000.0
"""Base of the sinusoidal timestep embedding's wavelengths."""

BLOCK_MODULATION_TERMS = 6
"""AdaLN terms per block: shift, scale, gate for self-attention, then for the FFN."""

HEAD_MODULATION_TERMS = 2
"""AdaLN terms of the output head: shift, scale."""

CONFIG_FILENAME = "config.json"
"""The DiT's hyper-parameters in the official checkpoint directory."""

WEIGHTS_STEM = "diffusion_pytorch_model"
"""Stem of the official (sharded) safetensors weight files."""

FLOAT32_SUBMODULES = ("time_embedding", "time_projection", "head")
"""Submodules :func:`load_dit` keeps in float32: the official code runs them in float32."""

_OFFICIAL_FIXED_KEYS: dict[str, Any] = {"model_type": "i2v", "window_size": (-1, -1)}
"""``config.json`` keys that are not hyper-parameters here but must have these values."""


class DiTConfigError(ValueError):
    """A DiT configuration value is missing or invalid."""


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of the FlashTalk DiT; the names are the official ``config.json`` keys."""

    in_dim: int
    """Patch-embedding input channels: noisy latent + first-frame mask + reference latent."""

    dim: int
    """Width of the token stream (hidden size)."""

    ffn_dim: int
    """Hidden width of each block's feed-forward network."""

    freq_dim: int
    """Width of the sinusoidal timestep embedding."""

    text_len: int
    """Text tokens after zero padding (the T5 context is padded to this length)."""

    out_dim: int
    """Channels of the predicted velocity (latent channels)."""

    num_heads: int
    """Attention heads of the self-, text/image and audio attention."""

    num_layers: int
    """Number of transformer blocks."""

    text_dim: int = 4096
    """Channels of the T5 text embedding (``context``)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch size (frames, rows, cols) of the patch embedding; one latent frame per token frame."""

    qk_norm: bool = True
    """RMSNorm on queries and keys of the self- and text/image attention."""

    cross_attn_norm: bool = True
    """Affine LayerNorm (``norm3``) before the text/image cross-attention."""

    eps: float = 1e-6
    """Epsilon of the blocks' LayerNorms and RMSNorms and of the head's LayerNorm."""

    audio_window: int = 5
    """Audio feature frames per video frame (a centred window)."""

    vae_scale: int = 4
    """Video frames per latent frame after the first (the VAE's temporal stride)."""

    intermediate_dim: int = 512
    """Hidden width of the audio projection MLP."""

    output_dim: int = 768
    """Channels of each audio context token."""

    context_tokens: int = 32
    """Audio context tokens per latent frame."""

    norm_input_visual: bool = True
    """Affine LayerNorm (``norm_x``) before the audio cross-attention."""

    norm_output_audio: bool = True
    """LayerNorm on the audio projection's output tokens."""

    audio_proj_blocks: int = 12
    """Audio encoder layers stacked in the audio features (wav2vec2 base: 12)."""

    audio_proj_channels: int = 768
    """Channels per audio encoder layer (wav2vec2 base: 768)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    @property
    def grouped_audio_window(self) -> int:
        """Audio frames per later latent frame (``audio_window + vae_scale - 1``)."""
        return self.audio_window + self.vae_scale - 1

    @property
    def patch_volume(self) -> int:
        """Latent voxels per token."""
        return math.prod(self.patch_size)

    def validate(self) -> None:
        """Raise :class:`DiTConfigError` naming every bad value."""
        problems: list[str] = []
        positive_ints = (
            "in_dim", "dim", "ffn_dim", "freq_dim", "text_len", "out_dim", "num_heads",
            "num_layers", "text_dim", "audio_window", "vae_scale", "intermediate_dim",
            "output_dim", "context_tokens", "audio_proj_blocks", "audio_proj_channels",
        )  # fmt: skip
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name}={value!r} must be a positive integer")
        for name in ("qk_norm", "cross_attn_norm", "norm_input_visual", "norm_output_audio"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r} must be true or false")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or self.eps <= 0:
            problems.append(f"eps={self.eps!r} must be a positive number")
        patch = self.patch_size
        if not (
            isinstance(patch, tuple)
            and len(patch) == 3
            and all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch)
        ):
            problems.append(f"patch_size={patch!r} must be three positive integers")
        elif patch[0] != 1:
            problems.append(
                f"patch_size={patch!r}: the audio cross-attention needs one latent frame per "
                "token frame (patch_size[0] == 1)"
            )
        if problems:  # the checks below need sane integers
            raise DiTConfigError("invalid DiT config: " + "; ".join(problems))
        if self.dim % self.num_heads:
            problems.append(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        elif self.head_dim % 2 or self.head_dim < 6:
            problems.append(
                f"head_dim=dim/num_heads={self.head_dim} must be even and at least 6 (3-axis RoPE)"
            )
        if self.freq_dim % 2:
            problems.append(f"freq_dim={self.freq_dim} must be even (cos and sin halves)")
        if self.vae_scale < 2:
            problems.append(f"vae_scale={self.vae_scale} must be at least 2")
        if self.in_dim <= self.out_dim:
            problems.append(
                f"in_dim={self.in_dim} must exceed out_dim={self.out_dim} "
                "(latents + conditioning y)"
            )
        if problems:
            raise DiTConfigError("invalid DiT config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiTConfig:
        """Build from an official ``config.json`` (or a golden's config); unknown keys are ignored.

        Keys the official code leaves out of ``config.json`` (``patch_size``, ``qk_norm``,
        ``cross_attn_norm``, ``text_dim``, the audio projection's input sizes) take the
        official defaults. ``model_type`` and ``window_size``, when present, must be the only
        values this model supports (``"i2v"``, global attention).
        """
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        for key, expected in _OFFICIAL_FIXED_KEYS.items():
            if key in data and _as_tuple(data[key]) != expected:
                raise DiTConfigError(
                    f"DiT config {key}={data[key]!r} is not supported; expected {expected!r}"
                )
        unknown = sorted(set(data) - known - set(_OFFICIAL_FIXED_KEYS))
        if unknown:
            logger.debug("DiT config: ignoring keys %s", unknown)
        missing = sorted(required - set(data))
        if missing:
            raise DiTConfigError(f"DiT config is missing {missing}")
        values = {key: data[key] for key in known if key in data}
        if "patch_size" in values:
            values["patch_size"] = _as_tuple(values["patch_size"])
        return cls(**values)

    @classmethod
    def flashtalk_14b(cls) -> DiTConfig:
        """The official SoulX-FlashTalk 14B model (Wan 2.1 I2V 14B + audio), 18.9 B parameters."""
        return cls(
            in_dim=36,  # 16 noisy latent + 4 mask + 16 reference latent channels
            dim=5120,
            ffn_dim=13824,
            freq_dim=256,
            text_len=512,
            out_dim=16,
            num_heads=40,
            num_layers=40,
        )

    @classmethod
    def tiny(cls) -> DiTConfig:
        """A 2-layer, width-128 model for tests and CPU smoke runs (the ``dit_tiny`` sizes)."""
        return cls(
            in_dim=36,
            dim=128,
            ffn_dim=256,
            freq_dim=256,
            text_len=32,
            out_dim=16,
            num_heads=4,
            num_layers=2,
            text_dim=64,
            intermediate_dim=32,
            output_dim=32,
            context_tokens=4,
            audio_proj_blocks=2,
            audio_proj_channels=32,
        )


def _as_tuple(value: Any) -> Any:
    """Lists (from JSON) as tuples, anything else unchanged."""
    return tuple(value) if isinstance(value, list) else value


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _linear_f32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in float32 whatever the weights' dtype (a no-op cast when float32)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class LayerNormF32(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input's dtype (Wan's ``WanLayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension: statistics in float32, gain applied in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def _qk_norm(dim: int, eps: float, enabled: bool) -> nn.Module:
    return RMSNorm(dim, eps) if enabled else nn.Identity()


def _fused_linear(owner: nn.Module, names: tuple[str, ...]) -> nn.Linear:
    """One linear whose output is the named linears' outputs side by side; removes them.

    The fused weight is the row-wise concatenation of the parts' weights (``[sum O, I]``),
    so ``fused(x).split(O)`` equals the parts' outputs up to GEMM summation order. The parts
    are deleted from ``owner`` (their memory is freed), so fuse only after loading.
    """
    parts = [getattr(owner, name) for name in names]
    weight = torch.cat([part.weight for part in parts], dim=0)  # [sum O, I]
    has_bias = all(part.bias is not None for part in parts)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([part.bias for part in parts]), requires_grad=False)
    for name in names:
        delattr(owner, name)
    return fused


class SelfAttention(nn.Module):
    """Full self-attention over all video tokens with qk RMSNorm and 3-axis RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = _qk_norm(dim, eps, qk_norm)
        self.norm_k = _qk_norm(dim, eps, qk_norm)
        self.qkv: nn.Linear | None = None  # set by fuse_projections(), replacing q, k, v
        self.use_fp8 = False
        """Attend with ``pipeline.attention_fp8`` (Q, K, V and P in e4m3) instead of bf16."""

    def fuse_projections(self) -> None:
        """Replace ``q``, ``k``, ``v`` by one linear (one GEMM); call after loading weights."""
        if self.qkv is None:
            self.qkv = _fused_linear(self, ("q", "k", "v"))

    def forward(
        self,
        x: torch.Tensor | Fp8Rows,
        cos: torch.Tensor,
        sin: torch.Tensor,
        shard: TokenShard | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, L, dim]``: the whole sequence, or this rank's tokens of ``shard``; as
        e4m3 rows (``Fp8Rows``) when the projections are fp8 linears."""
        heads = (self.num_heads, -1)
        if self.qkv is not None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # each [B, L, dim]
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)  # each [B, L, dim]
        norm_q, norm_k = self.norm_q, self.norm_k
        fp8_whole = self.use_fp8 and shard is None
        if fp8_whole and isinstance(norm_q, RMSNorm) and isinstance(norm_k, RMSNorm):  # qk_norm
            return self._attend_fp8(q, k, v, cos, sin, norm_q, norm_k)
        q = norm_q(q).unflatten(-1, heads)  # [B, L, H, D]
        k = norm_k(k).unflatten(-1, heads)  # [B, L, H, D]
        v = v.unflatten(-1, heads)  # [B, L, H, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attend = attention_fp8 if self.use_fp8 else attention
        out = attend(q, k, v) if shard is None else ulysses_attention(q, k, v, shard, attend)
        projected: torch.Tensor = self.o(out.flatten(2))  # [B, L, dim]
        return projected

    def _attend_fp8(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        norm_q: RMSNorm,
        norm_k: RMSNorm,
    ) -> torch.Tensor:
        """fp8 attention of the whole sequence from the projections ``[B, L, dim]``: their
        norm, rotation and quantisation in one op, and an fp8 output projection reading the
        kernel's e4m3 output as it is -> ``[B, L, dim]``."""
        quantized = norm_rope_quantize(
            q, k, v, norm_q.weight, norm_k.weight, norm_q.eps, cos, sin, self.num_heads
        )
        if isinstance(self.o, Float8Linear):  # reads the e4m3 output as the kernel wrote it
            projected: torch.Tensor = self.o(attend_fp8_rows(quantized, v.dtype))
        else:
            projected = self.o(attend_fp8(quantized, v.dtype).flatten(2))
        return projected  # [B, L, dim]


class TextImageCrossAttention(nn.Module):
    """Cross-attention to the text tokens plus, with its own keys/values, the CLIP image tokens."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = _qk_norm(dim, eps, qk_norm)
        self.norm_k = _qk_norm(dim, eps, qk_norm)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = _qk_norm(dim, eps, qk_norm)
        self.kv: nn.Linear | None = None  # set by fuse_projections(), replacing k, v
        self.kv_img: nn.Linear | None = None  # set by fuse_projections(), replacing k_img, v_img

    def fuse_projections(self) -> None:
        """Replace ``k``/``v`` and ``k_img``/``v_img`` by one linear each; after loading."""
        if self.kv is None:
            self.kv = _fused_linear(self, ("k", "v"))
        if self.kv_img is None:
            self.kv_img = _fused_linear(self, ("k_img", "v_img"))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, -1)
        image, text = context[:, :CLIP_IMAGE_TOKENS], context[:, CLIP_IMAGE_TOKENS:]
        q = self.norm_q(self.q(x)).unflatten(-1, heads)  # [B, L, H, D]
        if self.kv is not None and self.kv_img is not None:
            k, v = self.kv(text).chunk(2, dim=-1)  # each [B, text_len, dim]
            k_img, v_img = self.kv_img(image).chunk(2, dim=-1)  # each [B, 257, dim]
        else:
            k, v = self.k(text), self.v(text)  # each [B, text_len, dim]
            k_img, v_img = self.k_img(image), self.v_img(image)  # each [B, 257, dim]
        k = self.norm_k(k).unflatten(-1, heads)  # [B, text_len, H, D]
        v = v.unflatten(-1, heads)  # [B, text_len, H, D]
        k_img = self.norm_k_img(k_img).unflatten(-1, heads)  # [B, 257, H, D]
        v_img = v_img.unflatten(-1, heads)  # [B, 257, H, D]
        out = attention(q, k, v).flatten(2) + attention(q, k_img, v_img).flatten(2)  # [B, L, dim]
        projected: torch.Tensor = self.o(out)  # [B, L, dim]
        return projected


class AudioCrossAttention(nn.Module):
    """Each latent frame's video tokens attend to that frame's audio context tokens only."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, audio_tokens: torch.Tensor, frames: int | TokenShard
    ) -> torch.Tensor:
        """``x`` ``[B, L = frames * S, dim]``; ``audio_tokens`` ``[B * frames, M, audio_dim]``.

        With a ``TokenShard`` instead of ``frames``, ``x`` is this rank's ``[B, per_rank,
        dim]`` tokens and ``audio_tokens`` every frame's (see :meth:`_forward_runs`).
        """
        if isinstance(frames, TokenShard):
            return self._forward_runs(x, audio_tokens, frames)
        batch, length, dim = x.shape
        per_frame = x.reshape(batch * frames, length // frames, dim)  # [B*F, S, dim]
        q = self.q_linear(per_frame).unflatten(-1, (self.num_heads, -1))  # [B*F, S, H, D]
        kv = self.kv_linear(audio_tokens)  # [B*F, M, 2*dim]: keys, then values
        k, v = kv.unflatten(-1, (2, self.num_heads, -1)).unbind(2)  # each [B*F, M, H, D]
        out: torch.Tensor = self.proj(attention(q, k, v).flatten(2))  # [B*F, S, dim]
        return out.reshape(batch, length, dim)

    def _forward_runs(
        self, x: torch.Tensor, audio_tokens: torch.Tensor, shard: TokenShard
    ) -> torch.Tensor:
        """A shard's tokens, run by run, each against its own frames' audio tokens; padded
        tokens (after the runs) attend to nothing and get zeros before ``proj``."""
        batch, length, dim = x.shape
        q = self.q_linear(x).unflatten(-1, (self.num_heads, -1))  # [B, Lr, H, D]
        kv = self.kv_linear(audio_tokens)  # [B*F, M, 2*dim]: keys, then values
        k, v = kv.unflatten(-1, (2, self.num_heads, -1)).unbind(2)  # each [B*F, M, H, D]
        k, v = k.unflatten(0, (batch, -1)), v.unflatten(0, (batch, -1))  # [B, F, M, H, D]
        pieces = []
        for start, stop, frame, count in shard.runs:
            size = (stop - start) // count  # tokens of each of the run's frames
            per_frame = q[:, start:stop].reshape(
                batch * count, size, *q.shape[2:]
            )  # [B*n, s, H, D]
            keys = k[:, frame : frame + count].flatten(0, 1)  # [B*n, M, H, D]
            values = v[:, frame : frame + count].flatten(0, 1)  # [B*n, M, H, D]
            out = attention(per_frame, keys, values)  # [B*n, s, H, D]
            pieces.append(out.reshape(batch, stop - start, dim))
        if shard.real < length:
            pieces.append(x.new_zeros(batch, length - shard.real, dim))
        projected: torch.Tensor = self.proj(torch.cat(pieces, dim=1))  # [B, Lr, dim]
        return projected


class DiTBlock(nn.Module):
    """Self-attn, text/image cross-attn, audio cross-attn, FFN; AdaLN on self-attn and FFN."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = LayerNormF32(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, config.qk_norm, eps)
        self.norm3 = (
            LayerNormF32(dim, eps, elementwise_affine=True)
            if config.cross_attn_norm
            else nn.Identity()
        )
        self.cross_attn = TextImageCrossAttention(dim, config.num_heads, config.qk_norm, eps)
        self.norm2 = LayerNormF32(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.ffn_dim, dim),
        )
        self.modulation = nn.Parameter(torch.randn(1, BLOCK_MODULATION_TERMS, dim) / dim**0.5)
        self.audio_cross_attn = AudioCrossAttention(dim, config.output_dim, config.num_heads)
        self.norm_x = (
            LayerNormF32(dim, eps, elementwise_affine=True)
            if config.norm_input_visual
            else nn.Identity()
        )

    def fuse_projections(self) -> None:
        """Fuse the self-attention's q/k/v and the context k/v projections (after loading)."""
        self.self_attn.fuse_projections()
        self.cross_attn.fuse_projections()

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        audio_tokens: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        frames: int | TokenShard,
    ) -> torch.Tensor:
        """``x`` ``[B, L, dim]``; ``e0`` ``[B, 6, dim]`` f32; ``context`` ``[B, 257 + T, dim]``.

        ``frames`` is the sequence's latent frame count, or, sequence-parallel, this rank's
        ``TokenShard`` (``x`` then holds its ``per_rank`` tokens and ``rope`` their rows).
        """
        dtype = x.dtype
        shard = frames if isinstance(frames, TokenShard) else None
        # AdaLN terms, each [B, 1, dim] float32
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            self.modulation.float() + e0
        ).chunk(BLOCK_MODULATION_TERMS, dim=1)

        # 1. self-attention on the modulated, normalised stream; gated float32 residual
        h = (self.norm1(x).float() * (1 + scale_sa) + shift_sa).to(dtype)  # [B, L, dim]
        x = (x + self.self_attn(h, *rope, shard) * gate_sa).to(dtype)

        # 2. text + image cross-attention
        x = x + self.cross_attn(self.norm3(x), context)

        # 3. per-latent-frame audio cross-attention
        x = x + self.audio_cross_attn(self.norm_x(x), audio_tokens, frames)

        # 4. feed-forward on the modulated, normalised stream; gated float32 residual
        h = (self.norm2(x).float() * (1 + scale_ff) + shift_ff).to(dtype)  # [B, L, dim]
        x = (x + self.ffn(h) * gate_ff).to(dtype)
        return x


class Head(nn.Module):
    """Final AdaLN + linear map of each token to its patch of velocity, in float32."""

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNormF32(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, HEAD_MODULATION_TERMS, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, dim]``, ``e`` ``[B, dim]`` float32 -> ``[B, L, out_features]`` float32."""
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).chunk(
            HEAD_MODULATION_TERMS, dim=1
        )
        return _linear_f32(self.head, self.norm(x) * (1 + scale) + shift)


class ImageProjection(nn.Module):
    """CLIP image features -> context tokens (LayerNorm, MLP, LayerNorm)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim, eps=TORCH_LAYER_NORM_EPS),
            nn.Linear(in_dim, in_dim),
            nn.GELU(),
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim, eps=TORCH_LAYER_NORM_EPS),
        )

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        tokens: torch.Tensor = self.proj(clip_fea)  # [B, 257, dim]
        return tokens


class AudioProjection(nn.Module):
    """Windows of stacked audio-encoder features -> ``context_tokens`` tokens per latent frame.

    The first latent frame encodes one video frame: its ``audio_window`` frames feed ``proj1``.
    Every later latent frame encodes ``vae_scale`` video frames: the first half-window (up to
    the centre) of the group's first frame, the centre frame of each middle frame, and the
    second half-window of its last frame (``audio_window + vae_scale - 1`` frames) feed
    ``proj1_vf``. Both then share ``proj2``, ``proj3`` and the output LayerNorm.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        features = config.audio_proj_blocks * config.audio_proj_channels  # per audio frame
        self.vae_scale = config.vae_scale
        self.context_tokens = config.context_tokens
        self.proj1 = nn.Linear(config.audio_window * features, config.intermediate_dim)
        self.proj1_vf = nn.Linear(config.grouped_audio_window * features, config.intermediate_dim)
        self.proj2 = nn.Linear(config.intermediate_dim, config.intermediate_dim)
        self.proj3 = nn.Linear(config.intermediate_dim, config.context_tokens * config.output_dim)
        self.norm = (
            LayerNormF32(config.output_dim, TORCH_LAYER_NORM_EPS, elementwise_affine=True)
            if config.norm_output_audio
            else nn.Identity()
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + vae_scale * (F - 1), window, blocks, channels]`` -> ``[B, F, M, C]``."""
        batch, video_frames, window = audio.shape[:3]
        groups = (video_frames - 1) // self.vae_scale  # latent frames after the first
        centre = window // 2
        first = audio[:, :1].flatten(2)  # [B, 1, window*blocks*channels]
        # [B, F-1, vae_scale, window, blocks, channels]
        later = torch.unflatten(audio[:, 1:], 1, (groups, self.vae_scale))
        grouped = torch.cat(
            [
                later[:, :, 0, : centre + 1],  # [B, F-1, centre+1, blocks, channels]
                later[:, :, 1:-1, centre],  # [B, F-1, vae_scale-2, blocks, channels]
                later[:, :, -1, centre:],  # [B, F-1, window-centre, blocks, channels]
            ],
            dim=2,
        )  # [B, F-1, window+vae_scale-1, blocks, channels]
        grouped = grouped.flatten(2)  # [B, F-1, (window+vae_scale-1)*blocks*channels]
        hidden = torch.cat(
            [torch.relu(self.proj1(first)), torch.relu(self.proj1_vf(grouped))], dim=1
        )  # [B, F, intermediate_dim]
        hidden = torch.relu(self.proj2(hidden))  # [B, F, intermediate_dim]
        tokens = self.proj3(hidden)  # [B, F, M*output_dim]
        tokens = tokens.unflatten(-1, (self.context_tokens, -1))  # [B, F, M, output_dim]
        normed: torch.Tensor = self.norm(tokens)  # [B, F, M, output_dim]
        return normed


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[cos(t w_i), sin(t w_i)]``, ``w_i = 10000 ** (-2i / dim)``: ``[B]`` -> ``[B, dim]`` f32."""
    half = dim // 2
    # float32 on the device (within 2 ulp of the official float64 table; no host copy)
    exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half  # [half]
    freqs = torch.pow(SINUSOID_BASE, -exponents)  # [half]
    args = t.float().unsqueeze(1) * freqs  # [B, half]
    return torch.cat([args.cos(), args.sin()], dim=1)  # [B, dim]


class WanSizes(Protocol):
    """The sizes ``WanBackbone`` reads from a DiT config (read-only: the configs are frozen)."""

    @property
    def in_dim(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def patch_size(self) -> tuple[int, int, int]: ...
    @property
    def text_dim(self) -> int: ...
    @property
    def freq_dim(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def num_heads(self) -> int: ...


class WanBackbone(nn.Module):
    """What every Wan 2.1 DiT here shares: the patch embedding, the text and timestep
    embeddings, the AdaLN projection (official names), RoPE tables, block compilation and
    the sequence-parallel group with each grid's token shard (``set_parallel``).

    Subclasses add ``blocks`` (an ``nn.ModuleList``), their head and their conditioning.
    """

    blocks: nn.ModuleList

    def __init__(self, config: WanSizes) -> None:
        super().__init__()
        dim, patch = config.dim, config.patch_size
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=patch, stride=patch)
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = nn.Sequential(
            nn.SiLU(), nn.Linear(dim, BLOCK_MODULATION_TERMS * dim)
        )
        self._rope_cache = RopeTableCache(config.head_dim)
        self._num_heads = config.num_heads
        self.parallel: ParallelGroup | None = None
        """The sequence-parallel group (None: this process computes every token)."""
        self._shards: dict[tuple[int, int, int], tuple[TokenShard, torch.Tensor, torch.Tensor]] = {}

    def set_parallel(self, parallel: ParallelGroup | None) -> None:
        """Split every later forward's tokens among ``parallel``'s ranks (None or a group of
        one: compute them all here). Every rank must then call the forward in lockstep."""
        self.parallel = parallel if parallel is not None and parallel.is_parallel else None
        self._shards.clear()

    def token_shard(
        self, grid: tuple[int, int, int], device: torch.device
    ) -> tuple[TokenShard, torch.Tensor, torch.Tensor]:
        """This rank's shard of a grid's tokens and its rows of the RoPE tables, cached."""
        if self.parallel is None:
            raise RuntimeError("token_shard needs a parallel group (set_parallel)")
        cached = self._shards.get(grid)
        if cached is None:
            parallel = self.parallel
            shard = token_shard(
                math.prod(grid), grid[0], self._num_heads,
                rank=parallel.rank, world=parallel.world_size, group=parallel.group_name,
            )  # fmt: skip
            cos, sin = self.rope_tables(grid, device)  # [L, 1, head_dim/2] each
            cached = (shard, local_rows(cos, shard, 0), local_rows(sin, shard, 0))
            self._shards[grid] = cached
        return cached

    def compile_blocks(self, mode: str | None = None) -> None:
        """``torch.compile`` every transformer block in place (regional compilation).

        All blocks share one code object and parameters are graph inputs, so one block is
        compiled and the others reuse it. Compilation happens on the first forward.
        """
        for block in self.blocks:
            block.compile(mode=mode, dynamic=False)

    def rope_tables(
        self, grid: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE ``cos``/``sin`` ``[L, 1, head_dim / 2]`` (float32) of a grid, cached per device."""
        return self._rope_cache(grid, device)


class FlashTalkDiT(WanBackbone):
    """Velocity of the audio-conditioned Wan 2.1 I2V DiT for one batch of latent videos.

    Build it on the meta device and load the official state dict (see :func:`load_dit`).
    Constant RoPE tables are not in the state dict: they are computed on first use for each
    (token grid, device) and cached here (they never change, so the cache is not state).

    After :meth:`set_parallel` with a group of N > 1 ranks the forward is sequence-parallel
    (``pipeline.sequence_parallel``): every rank of the group calls it with the same inputs,
    runs the blocks on its share of the tokens and returns the whole velocity.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.config = config
        dim = config.dim
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.num_layers))
        self.head = Head(dim, config.patch_volume * config.out_dim, config.eps)
        self.img_emb = ImageProjection(CLIP_EMBED_DIM, dim)
        self.audio_proj = AudioProjection(config)

    def fuse_projections(self) -> None:
        """Fuse the attention projections that share an input (q/k/v of the self-attention,
        k/v of the text and of the image context). Call after ``load_state_dict``: the fused
        model's state dict no longer has the official keys."""
        for block in self.blocks:
            if isinstance(block, DiTBlock):
                block.fuse_projections()

    def _check_inputs(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor,
    ) -> None:
        """Shape checks (static, host-side only) with messages that say what was expected."""
        cfg = self.config
        if x.dim() != 5 or y.dim() != 5 or x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"x {tuple(x.shape)} and y {tuple(y.shape)} must be [B, C, F, H, W] alike"
            )
        if x.shape[1] + y.shape[1] != cfg.in_dim:
            raise ValueError(
                f"x and y channels {x.shape[1]} + {y.shape[1]} must sum to in_dim={cfg.in_dim}"
            )
        if any(size % patch for size, patch in zip(x.shape[2:], cfg.patch_size)):
            raise ValueError(
                f"latent size {tuple(x.shape[2:])} is not divisible by patch_size={cfg.patch_size}"
            )
        batch, frames = x.shape[0], x.shape[2] // cfg.patch_size[0]
        if (
            context.dim() != 3
            or context.shape[0] != batch
            or context.shape[1] > cfg.text_len
            or context.shape[2] != cfg.text_dim
        ):
            raise ValueError(
                f"context {tuple(context.shape)} must be [B={batch}, "
                f"<= text_len={cfg.text_len}, text_dim={cfg.text_dim}]"
            )
        if tuple(clip_fea.shape) != (batch, CLIP_IMAGE_TOKENS, CLIP_EMBED_DIM):
            raise ValueError(
                f"clip_fea {tuple(clip_fea.shape)} must be "
                f"[{batch}, {CLIP_IMAGE_TOKENS}, {CLIP_EMBED_DIM}]"
            )
        video_frames = 1 + cfg.vae_scale * (frames - 1)
        audio_shape = (
            batch, video_frames, cfg.audio_window, cfg.audio_proj_blocks, cfg.audio_proj_channels
        )  # fmt: skip
        if tuple(audio.shape) != audio_shape:
            raise ValueError(
                f"audio {tuple(audio.shape)} must be {audio_shape}: [B, video frames of "
                f"{frames} latent frames, window, encoder layers, channels]"
            )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the flow-matching velocity.

        Args:
            x: noisy latents ``[B, out_dim (16), F, H, W]``.
            t: timesteps ``[B]`` on the 0..1000 scale (float).
            context: T5 text embeddings ``[B, L_text <= text_len, text_dim]``; zero-padded here.
            clip_fea: CLIP image features of the reference image ``[B, 257, 1280]``.
            y: conditioning ``[B, in_dim - 16 (4 mask + 16 reference latent), F, H, W]``.
            audio: audio-encoder features ``[B, 1 + vae_scale * (F - 1), audio_window,
                audio_proj_blocks, audio_proj_channels]``, one window per video frame; the batch
                index is the sample (one speaker per sample).

        Returns:
            velocity ``[B, out_dim, F, H, W]`` float32.

        Unlike the official call (lists of per-sample tensors plus a padded ``seq_len``),
        every sample of a batch shares one latent size, so no sequence padding is needed.
        """
        cfg = self.config
        self._check_inputs(x, context, clip_fea, y, audio)
        dtype = self.patch_embedding.weight.dtype
        batch = x.shape[0]

        # 1. patch embedding of the latents concatenated with the conditioning
        tokens = self.patch_embedding(torch.cat([x, y], dim=1).to(dtype))  # [B, dim, F', H', W']
        grid = (tokens.shape[2], tokens.shape[3], tokens.shape[4])
        # row-major tokens: a transposed view would carry its layout through every residual
        # add of the 40 blocks (strided elementwise kernels and copies before each norm)
        tokens = tokens.flatten(2).transpose(1, 2).contiguous()  # [B, L = F'H'W', dim]

        # 2. timestep embedding and the per-block AdaLN inputs, float32
        e = _run_f32(self.time_embedding, sinusoidal_embedding(t, cfg.freq_dim))  # [B, dim]
        e0 = _run_f32(self.time_projection, e)  # [B, 6*dim]
        e0 = torch.unflatten(e0, 1, (BLOCK_MODULATION_TERMS, cfg.dim))  # [B, 6, dim]

        # 3. context: CLIP image tokens first, then the zero-padded text tokens
        padding = cfg.text_len - context.shape[1]
        text = F.pad(context.to(dtype), (0, 0, 0, padding))  # [B, text_len, text_dim]
        image_tokens = self.img_emb(clip_fea.to(dtype))  # [B, 257, dim]
        text_tokens = self.text_embedding(text)  # [B, text_len, dim]
        context_tokens = torch.cat([image_tokens, text_tokens], dim=1).to(dtype)  # [B, 257+T, dim]

        # 4. audio context: context_tokens tokens per latent frame
        audio_tokens = self.audio_proj(audio.to(dtype)).to(dtype)  # [B, F', M, output_dim]
        audio_tokens = audio_tokens.flatten(0, 1)  # [B*F', M, output_dim]

        # 5. transformer blocks with the grid's RoPE tables (sequence-parallel: this rank's
        #    tokens and rows of the tables)
        if self.parallel is None:
            rope = self.rope_tables(grid, tokens.device)  # 2 x [L, 1, head_dim/2]
            frames: int | TokenShard = grid[0]
        else:
            shard, cos, sin = self.token_shard(grid, tokens.device)
            rope, frames = (cos, sin), shard  # 2 x [per_rank, 1, head_dim/2]
            tokens = local_rows(tokens, shard, 1)  # [B, per_rank, dim]
        for block in self.blocks:
            tokens = block(tokens, e0, context_tokens, audio_tokens, rope, frames)  # [B, L, dim]

        # 6. head: float32 velocity per token patch (sequence-parallel: every rank's tokens)
        out: torch.Tensor = self.head(tokens, e)  # [B, L, pt*ph*pw*out_dim]
        if isinstance(frames, TokenShard):
            out = gather_tokens(out, frames)  # [B, L, pt*ph*pw*out_dim]

        # 7. unpatchify
        pt, ph, pw = cfg.patch_size
        out = out.view(batch, *grid, pt, ph, pw, cfg.out_dim)  # [B, F', H', W', pt, ph, pw, C]
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, F', pt, H', ph, W', pw]
        return out.reshape(batch, cfg.out_dim, grid[0] * pt, grid[1] * ph, grid[2] * pw)


def _run_f32(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Sequential of Linear and activation layers in float32."""
    x = x.float()
    for layer in layers:
        x = _linear_f32(layer, x) if isinstance(layer, nn.Linear) else layer(x)
    return x


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_dit(
    model_dir: Path, *, device: torch.device | str, dtype: torch.dtype = torch.bfloat16
) -> FlashTalkDiT:
    """Load the official DiT from ``model_dir`` (``config.json`` + sharded safetensors), strictly.

    Weights are cast to ``dtype`` (bf16 on the GPU) except :data:`FLOAT32_SUBMODULES`, which
    are kept in float32 after the cast (the official code computes them in float32 from the
    same bf16 values). Raises :class:`CheckpointError` naming the file that is missing,
    unreadable or does not fit.
    """
    model_dir = Path(model_dir)
    config_path = require_file(model_dir / CONFIG_FILENAME, "DiT config")
    try:
        config = DiTConfig.from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, DiTConfigError, TypeError) as exc:
        raise CheckpointError(
            f"cannot use the DiT config {config_path}: {exc}. Check the model directory with "
            f"`headcast doctor --model-dir {model_dir}`."
        ) from exc
    shards = sharded_safetensors_files(model_dir, WEIGHTS_STEM)
    state = read_safetensors_state(shards, "DiT weights")
    model = materialize(
        lambda: FlashTalkDiT(config),
        state,
        device=device,
        dtype=dtype,
        what=f"DiT checkpoint in {model_dir}",
    )
    for name in FLOAT32_SUBMODULES:
        getattr(model, name).float()
    logger.info(
        "loaded DiT: %d layers, dim %d, %d shard(s), %s on %s",
        config.num_layers,
        config.dim,
        len(shards),
        dtype,
        device,
    )
    return model.eval().requires_grad_(False)

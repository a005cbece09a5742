"""The CLIP ViT-H/14 visual tower: reference image -> image tokens for the DiT's cross-attention.

Owns: ``CLIPVisionConfig`` (with the full-size ``vit_h_14`` preset), the vision transformer
under the official key names of the ``visual.*`` part of
``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``, the official preprocessing
(bicubic resize, CLIP normalisation) and loading the visual subset of that file.

Only the visual tower is built. The checkpoint also holds the XLM-RoBERTa text tower
(``textual.*``) and the contrastive ``log_scale``; FlashTalk never uses them, so the loader
deliberately ignores every key outside ``visual.*`` and loads the visual subset strictly.

This runs once per avatar, never per chunk. It must not know about the DiT, the VAE,
sessions or anything in ``streaming``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from headcast.pipeline.attention import attention
from headcast.pipeline.checkpoint import CheckpointError, materialize, read_torch_state

logger = logging.getLogger(__name__)

CLIP_CHECKPOINT_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
"""The official CLIP checkpoint (a ``torch.save`` state dict of both towers)."""

VISUAL_PREFIX = "visual."
"""Key prefix of the visual tower inside the CLIP checkpoint."""

OFFICIAL_CLIP_DTYPE = torch.float16
"""The dtype the official pipeline runs the visual tower in on the GPU."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel (RGB) mean of CLIP's pixel normalisation, for pixels in [0, 1]."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel (RGB) standard deviation of CLIP's pixel normalisation."""

FEATURE_SKIPPED_FINAL_BLOCKS = 1
"""The pipeline uses the output of all transformer blocks but the last (the 31st of 32)."""

RGB_CHANNELS = 3

_ACTIVATIONS = ("gelu", "quick_gelu")
_POOL_TYPES = ("token",)
_TRAINING_ONLY_KEYS = frozenset({"attn_dropout", "proj_dropout", "embedding_dropout"})
"""Keys of the official config that only matter in training; ``from_dict`` ignores them."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CLIPVisionConfig:
    """Sizes of a CLIP vision transformer in the official (Wan ``clip.py``) parameterisation."""

    image_size: int
    """Side in pixels of the square image the tower sees (inputs are resized to it)."""
    patch_size: int
    """Side in pixels of one patch (the patch-embedding convolution's kernel and stride)."""
    dim: int
    """Width of the residual stream and of the output tokens."""
    mlp_ratio: int
    """MLP hidden width as a multiple of ``dim``."""
    out_dim: int
    """Width of the contrastive head (loaded, unused by ``features``)."""
    num_heads: int
    """Attention heads per block."""
    num_layers: int
    """Transformer blocks (all are loaded; ``features`` skips the last)."""
    pool_type: str = "token"
    """How the image embedding is pooled; only ``token`` (a class token) exists here."""
    pre_norm: bool = True
    """LayerNorm after the embeddings; also means the patch convolution has no bias."""
    post_norm: bool = False
    """True: blocks normalise after attention/MLP; False: before (pre-norm blocks)."""
    activation: str = "gelu"
    """MLP activation: ``gelu`` (exact erf) or ``quick_gelu`` (x * sigmoid(1.702 x))."""
    norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per image: the class token and one per patch."""
        return 1 + self.grid_size**2

    def validate(self) -> None:
        """Raise ValueError naming every value that cannot build the tower."""
        problems = [
            f"{name}={getattr(self, name)} must be positive"
            for name in ("image_size", "patch_size", "dim", "mlp_ratio", "out_dim", "num_heads")
            if getattr(self, name) <= 0
        ]
        if self.patch_size > 0 and self.image_size % self.patch_size:
            problems.append(
                f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}"
            )
        if self.num_heads > 0 and self.dim % self.num_heads:
            problems.append(f"dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.num_layers <= FEATURE_SKIPPED_FINAL_BLOCKS:
            problems.append(
                f"num_layers={self.num_layers} must exceed the {FEATURE_SKIPPED_FINAL_BLOCKS} "
                "final block(s) that features() skips"
            )
        if self.pool_type not in _POOL_TYPES:
            problems.append(f"pool_type={self.pool_type!r} must be one of {_POOL_TYPES}")
        if self.activation not in _ACTIVATIONS:
            problems.append(f"activation={self.activation!r} must be one of {_ACTIVATIONS}")
        if self.norm_eps <= 0:
            problems.append(f"norm_eps={self.norm_eps} must be positive")
        if problems:
            raise ValueError("invalid CLIPVisionConfig: " + "; ".join(problems))

    @classmethod
    def vit_h_14(cls) -> CLIPVisionConfig:
        """The visual tower of ``clip_xlm_roberta_vit_h_14`` (32 blocks, 1280 wide, 224 px)."""
        return cls(
            image_size=224,
            patch_size=14,
            dim=1280,
            mlp_ratio=4,
            out_dim=1024,
            num_heads=16,
            num_layers=32,
        )

    @classmethod
    def tiny(cls) -> CLIPVisionConfig:
        """A 3-block, 32-wide tower on 28 px images for tests and the tiny engine."""
        return cls(
            image_size=28,
            patch_size=14,
            dim=32,
            mlp_ratio=4,
            out_dim=16,
            num_heads=4,
            num_layers=3,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPVisionConfig:
        """Build from official-style keys (dropout rates are accepted and ignored); validate."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - _TRAINING_ONLY_KEYS)
        if unknown:
            raise ValueError(
                f"unknown CLIPVisionConfig keys {unknown}; expected some of {sorted(known)}"
            )
        config = cls(**{key: value for key, value in data.items() if key in known})
        config.validate()
        return config


# ----------------------------------------------------------------------------- preprocessing


def clip_preprocess(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """Frames in [-1, 1] -> CLIP-normalised float32 pixels.

    image [B, 3, T, H, W] -> [B*T, 3, image_size, image_size]: every frame is resized
    (bicubic, ``align_corners=False``, no antialiasing), mapped to [0, 1] and normalised
    with ``CLIP_MEAN``/``CLIP_STD``.
    """
    if image.ndim != 5 or image.shape[1] != RGB_CHANNELS:
        raise ValueError(
            f"expected an image of shape [B, 3, T, H, W] in [-1, 1], got {tuple(image.shape)}"
        )
    # 1. frames as a batch: [B*T, 3, H, W]
    frames = image.float().transpose(1, 2).flatten(0, 1)
    # 2. bicubic resize to the tower's square input: [B*T, 3, S, S]
    frames = F.interpolate(
        frames, size=(image_size, image_size), mode="bicubic", align_corners=False
    )
    # 3. [-1, 1] -> [0, 1] -> CLIP normalisation
    frames = frames * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, device=frames.device).view(1, RGB_CHANNELS, 1, 1)
    std = torch.tensor(CLIP_STD, device=frames.device).view(1, RGB_CHANNELS, 1, 1)
    return (frames - mean) / std


# ----------------------------------------------------------------------------- modules


class FloatLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' dtype, returned in the input's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (scaled by 1/sqrt(head_dim))."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim] -> [B, L, dim]."""
        b, length, dim = x.shape
        # 1. fused projection, split into q, k, v: [B, L, heads, head_dim] each
        q, k, v = self.to_qkv(x).view(b, length, 3, self.num_heads, self.head_dim).unbind(2)
        # 2. softmax attention over all tokens: [B, L, heads, head_dim]
        out = attention(q, k, v)
        # 3. merge heads and project: [B, L, dim]
        projected: torch.Tensor = self.proj(out.reshape(b, length, dim))
        return projected


class CLIPBlock(nn.Module):
    """A ViT block: attention and MLP residuals with LayerNorms before (or after) each."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        hidden = config.dim * config.mlp_ratio
        self.post_norm = config.post_norm
        self.norm1 = FloatLayerNorm(config.dim, eps=config.norm_eps)
        self.attn = CLIPAttention(config.dim, config.num_heads)
        self.norm2 = FloatLayerNorm(config.dim, eps=config.norm_eps)
        activation = nn.GELU() if config.activation == "gelu" else QuickGELU()
        # Keys mlp.0 and mlp.2 as in the checkpoint.
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, hidden), activation, nn.Linear(hidden, config.dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim] -> [B, L, dim]."""
        if self.post_norm:
            x = x + self.norm1(self.attn(x))
            x = x + self.norm2(self.mlp(x))
            return x
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class CLIPVisionEncoder(nn.Module):
    """The CLIP vision transformer; parameter names are the checkpoint's minus ``visual.``.

    ``post_norm`` and ``head`` (the contrastive projection) and the last block are loaded
    so that the visual subset loads strictly, but ``features`` does not use them.
    """

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        gain = config.dim**-0.5
        # 1. embeddings (the official layout: no conv bias when a pre-norm follows)
        self.patch_embedding = nn.Conv2d(
            RGB_CHANNELS,
            config.dim,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=not config.pre_norm,
        )
        self.cls_embedding = nn.Parameter(gain * torch.randn(1, 1, config.dim))
        self.pos_embedding = nn.Parameter(gain * torch.randn(1, config.num_tokens, config.dim))
        self.pre_norm = FloatLayerNorm(config.dim, eps=config.norm_eps) if config.pre_norm else None
        # 2. transformer blocks
        self.transformer = nn.Sequential(*(CLIPBlock(config) for _ in range(config.num_layers)))
        # 3. pooled-embedding parts of the checkpoint, unused by features()
        self.post_norm = FloatLayerNorm(config.dim, eps=config.norm_eps)
        self.head = nn.Parameter(gain * torch.randn(config.dim, config.out_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised pixels [N, 3, S, S] -> tokens after all blocks but the last.

        Returns [N, 1 + patches, dim] in the weights' dtype.
        """
        if pixels.shape[-2:] != (self.config.image_size, self.config.image_size):
            raise ValueError(
                f"expected {self.config.image_size}x{self.config.image_size} pixels, got "
                f"{tuple(pixels.shape)}; use features() to resize"
            )
        n = pixels.shape[0]
        # 1. patch embedding: [N, dim, S/p, S/p] -> [N, patches, dim]
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        # 2. class token and position embeddings: [N, 1 + patches, dim]
        x = torch.cat([self.cls_embedding.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        # 3. all transformer blocks but the last
        features: torch.Tensor = self.transformer[:-FEATURE_SKIPPED_FINAL_BLOCKS](x)
        return features

    @torch.no_grad()
    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, T, H, W] in [-1, 1] -> CLIP tokens [B*T, 1 + patches, dim].

        The pipeline passes the reference image as [1, 3, 1, H, W] and gets [1, 257, 1280]
        at full size.
        """
        # 1. resize and normalise as the official CLIP transform does: [B*T, 3, S, S]
        pixels = clip_preprocess(image, self.config.image_size)
        # 2. tokens: [B*T, 1 + patches, dim]
        tokens: torch.Tensor = self(pixels)
        return tokens


def split_visual_state(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Split a full CLIP state dict into the visual tower's keys (prefix stripped) and the
    names of the keys deliberately ignored (the text tower and ``log_scale``)."""
    visual = {
        key[len(VISUAL_PREFIX) :]: value
        for key, value in state.items()
        if key.startswith(VISUAL_PREFIX)
    }
    ignored = sorted(key for key in state if not key.startswith(VISUAL_PREFIX))
    return visual, ignored


def load_clip_visual(
    path: Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    config: CLIPVisionConfig | None = None,
) -> CLIPVisionEncoder:
    """Load the ``visual.*`` subset of the official CLIP checkpoint strictly (mmapped).

    Every other key (the XLM-RoBERTa text tower, ``log_scale``) is ignored on purpose: the
    pipeline only needs image features. ``config`` defaults to ``CLIPVisionConfig.vit_h_14()``;
    the official pipeline runs it in ``OFFICIAL_CLIP_DTYPE`` on the GPU.
    """
    config = config or CLIPVisionConfig.vit_h_14()
    state = read_torch_state(Path(path), "CLIP checkpoint")
    visual, ignored = split_visual_state(state)
    if not visual:
        raise CheckpointError(
            f"CLIP checkpoint {path} holds no '{VISUAL_PREFIX}*' tensors; expected "
            f"{CLIP_CHECKPOINT_FILE}. Check the model directory with "
            f"`headcast doctor --model-dir {Path(path).parent}`."
        )
    logger.info(
        "loading CLIP visual tower from %s (%d tensors; %d non-visual tensors ignored) as %s",
        path,
        len(visual),
        len(ignored),
        dtype,
    )
    encoder = materialize(
        lambda: CLIPVisionEncoder(config),
        visual,
        device=device,
        dtype=dtype,
        what=f"CLIP visual tower in {path}",
    )
    return encoder.eval().requires_grad_(False)

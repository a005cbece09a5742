"""Random full-size weights built directly on the device, for timing without a checkpoint.

Owns ``random_generator`` (a full-size FlashTalk generator of seeded random weights), its
parts (``random_dit``: made block by block, each block fused and quantised before the next
exists, so the load peak stays near the final size; ``random_vae``; ``RandomEncoders``: noise
of the real T5/CLIP output shapes) and ``init_random_``. Weight values do not change speed,
so ``headcast bench`` and the ``flashtalk`` engine's ``random_weights`` setting use them to
measure a GPU before the official checkpoint is there; the pictures are noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from headcast.pipeline.audio import Wav2VecStreamEncoder
from headcast.pipeline.config import PipelineConfig
from headcast.pipeline.dit import (
    CLIP_EMBED_DIM,
    CLIP_IMAGE_TOKENS,
    FLOAT32_SUBMODULES,
    FlashTalkDiT,
)
from headcast.pipeline.generator import FlashTalkGenerator
from headcast.pipeline.speedups import SpeedOptions, prepare_dit_block
from headcast.pipeline.tiny import ONE_INIT_NAMES
from headcast.pipeline.vae import WanVAE

RANDOM_PROMPT_TOKENS = 32
"""Tokens of the random stand-in for a T5 prompt embedding (padded to ``text_len`` anyway)."""


def init_random_(module: nn.Module, seed: int) -> None:
    """Fill ``module``'s parameters in place on their device: gains 1, biases 0, the rest
    N(0, 1/fan_in) from a generator seeded with ``seed`` (as ``pipeline.tiny`` does on CPU)."""
    params = list(module.named_parameters())
    if not params:
        return
    generator = torch.Generator(device=params[0][1].device).manual_seed(seed)
    with torch.no_grad():
        for name, param in params:
            leaf = name.rsplit(".", 1)[-1]
            is_norm = "norm" in name and param.ndim == 1
            if leaf in ONE_INIT_NAMES or (is_norm and leaf == "weight"):
                param.fill_(1.0)
            elif leaf == "bias":
                param.zero_()
            else:
                fan_in = param[0].numel() if param.ndim > 1 else param.numel()
                param.normal_(0.0, 1.0 / math.sqrt(max(fan_in, 1)), generator=generator)


def random_dit(
    config: PipelineConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    prepare_block: Callable[[nn.Module], None],
) -> FlashTalkDiT:
    """A random-weight DiT made on ``device`` block by block; ``prepare_block`` runs on each
    block right after it is filled (fusion, quantisation), before the next one exists."""
    with torch.device("meta"):
        dit = FlashTalkDiT(config.dit).to(dtype)
    return fill_random_blockwise(
        dit, FLOAT32_SUBMODULES, device=device, seed=seed, prepare_block=prepare_block
    )


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def fill_random_blockwise(
    model: ModuleT,
    float32_submodules: tuple[str, ...],
    *,
    device: torch.device,
    seed: int,
    prepare_block: Callable[[nn.Module], None],
) -> ModuleT:
    """A meta-built DiT (with ``model.blocks``) materialised on ``device`` with random
    weights: ``float32_submodules`` in float32, the other children first, then each block,
    ``prepare_block`` running on it before the next one exists."""
    for name in float32_submodules:
        getattr(model, name).float()
    for index, (name, child) in enumerate(model.named_children()):
        if name != "blocks":
            child.to_empty(device=device)
            init_random_(child, seed + index)
    for index, block in enumerate(model.blocks):  # type: ignore[arg-type]
        block.to_empty(device=device)
        init_random_(block, seed + 1000 + index)
        prepare_block(block)
    return model.eval().requires_grad_(False)


def random_vae(
    config: PipelineConfig, *, device: torch.device, dtype: torch.dtype, seed: int
) -> WanVAE:
    """A random-weight full-size VAE made on ``device``."""
    with torch.device("meta"):
        vae = WanVAE(config.vae)
    vae = vae.to(dtype).to_empty(device=device)
    init_random_(vae, seed)
    return vae.eval().requires_grad_(False)


class RandomEncoders:
    """Stand-ins for T5 and CLIP (not resident while streaming anyway): seeded noise of the
    real shapes, so the per-avatar conditioning path runs without their weights."""

    def __init__(
        self, config: PipelineConfig, device: torch.device, dtype: torch.dtype, seed: int
    ) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.seed = seed

    def _randn(self, *shape: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """-> [RANDOM_PROMPT_TOKENS, text_dim]."""
        return self._randn(RANDOM_PROMPT_TOKENS, self.config.dit.text_dim)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """-> [1, 257, 1280]."""
        return self._randn(1, CLIP_IMAGE_TOKENS, CLIP_EMBED_DIM)


def random_generator(
    config: PipelineConfig, options: SpeedOptions, *, device: torch.device, seed: int
) -> FlashTalkGenerator:
    """A full-size generator of random weights (bf16 DiT and VAE, float32 wav2vec2 base)."""
    dtype = torch.bfloat16
    dit = random_dit(
        config, device=device, dtype=dtype, seed=seed,
        prepare_block=lambda block: prepare_dit_block(block, options),
    )  # fmt: skip
    vae = random_vae(config, device=device, dtype=dtype, seed=seed + 1)
    wav2vec = config.wav2vec or {}  # {}: transformers' defaults are wav2vec2 base
    audio = Wav2VecStreamEncoder.tiny(wav2vec, seed=seed + 2, device=device, config=config.audio)
    return FlashTalkGenerator(
        config,
        dit=dit,
        vae=vae,
        audio_encoder=audio,
        encoders=RandomEncoders(config, device, dtype, seed + 3),
        device=device,
        dtype=dtype,
    )

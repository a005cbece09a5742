"""Random-weight models of the ``tiny`` preset: real code paths, noise pictures.

Owns the seeded initialisation of every model part and the assembly of a
``FlashTalkGenerator`` from them. Used by the ``tiny`` engine, ``headcast generate --engine
tiny``, ``headcast bench`` on CPU and the tests. The pictures it makes are noise: the weights
are random, not trained.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from headcast.pipeline.audio import Wav2VecStreamEncoder
from headcast.pipeline.config import PipelineConfig
from headcast.pipeline.dit import FlashTalkDiT
from headcast.pipeline.encoders import OnDemandEncoders
from headcast.pipeline.generator import FlashTalkGenerator
from headcast.pipeline.image import CLIPVisionEncoder
from headcast.pipeline.text import HashTokenizer, PromptEncoder, T5Encoder
from headcast.pipeline.vae import WanVAE

ModuleT = TypeVar("ModuleT", bound=nn.Module)

ONE_INIT_NAMES = ("gamma",)
"""Parameter names (last component) that scale activations and start at one."""


def random_init(module: ModuleT, seed: int) -> ModuleT:
    """Fill every parameter deterministically: scales 1, biases 0, the rest N(0, 1/fan_in).

    Works on modules built on the meta device too (they are materialised on the CPU).
    """
    generator = torch.Generator().manual_seed(seed)
    if any(p.is_meta for p in module.parameters()):
        module = module.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = "norm" in name and param.ndim == 1
            if leaf in ONE_INIT_NAMES or (is_norm and leaf == "weight"):
                param.fill_(1.0)
            elif leaf == "bias" or (is_norm and leaf == "bias"):
                param.zero_()
            else:
                fan_in = param[0].numel() if param.ndim > 1 else param.numel()
                sample = torch.randn(param.shape, generator=generator) / math.sqrt(max(fan_in, 1))
                param.copy_(sample.to(param.dtype))
    reset = getattr(module, "reset_buffers", None)
    if callable(reset):
        reset()
    return module.eval().requires_grad_(False)


def build_tiny_generator(
    config: PipelineConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    cache_dir: Path | None = None,
) -> FlashTalkGenerator:
    """A generator of random tiny models (deterministic for a given ``seed``), float32."""
    if config.wav2vec is None:
        raise ValueError(f"preset {config.preset!r} has no wav2vec2 config for random weights")
    dtype = torch.float32
    dit = random_init(FlashTalkDiT(config.dit), seed + 1).to(device)
    vae = random_init(WanVAE(config.vae), seed + 2).to(device)
    audio_encoder = Wav2VecStreamEncoder.tiny(
        config.wav2vec, seed=seed + 3, device=device, config=config.audio
    )

    def prompt_encoder() -> PromptEncoder:
        encoder = random_init(T5Encoder(config.t5), seed + 4).to(device)
        return PromptEncoder(HashTokenizer(config.t5.vocab, config.dit.text_len), encoder)

    def clip() -> CLIPVisionEncoder:
        return random_init(CLIPVisionEncoder(config.clip), seed + 5).to(device)

    return FlashTalkGenerator(
        config,
        dit=dit,
        vae=vae,
        audio_encoder=audio_encoder,
        encoders=OnDemandEncoders(prompt_encoder, clip, device),
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
    )

"""Assembling the real FlashTalk generator from an official checkpoint directory.

Owns where each official file lives in the model directory and in which dtype each part
runs (bf16 DiT and VAE on the GPU, the T5 and CLIP towers in their official dtypes, loaded
only while an avatar is prepared). Knows nothing about sessions or serving.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from headcast.pipeline.audio import Wav2VecStreamEncoder
from headcast.pipeline.checkpoint import CheckpointError
from headcast.pipeline.config import PipelineConfig
from headcast.pipeline.dit import FlashTalkDiT, load_dit
from headcast.pipeline.encoders import OnDemandEncoders
from headcast.pipeline.generator import FlashTalkGenerator
from headcast.pipeline.image import (
    CLIP_CHECKPOINT_FILE,
    OFFICIAL_CLIP_DTYPE,
    CLIPVisionEncoder,
    load_clip_visual,
)
from headcast.pipeline.speedups import SpeedOptions, apply_speedups, prepare_dit_block
from headcast.pipeline.text import OFFICIAL_T5_DTYPE, PromptEncoder
from headcast.pipeline.vae import VAE_CHECKPOINT_NAME, load_vae

logger = logging.getLogger(__name__)


def load_dit_prepared(
    model_dir: Path, *, device: torch.device | str, dtype: torch.dtype, speed: SpeedOptions
) -> tuple[FlashTalkDiT, bool]:
    """The DiT on ``device``; returns it and whether its blocks were fused/quantised already.

    With quantisation or fusion asked for, the checkpoint is mapped on the host and moved to
    the device one block at a time, each block prepared as it arrives: the device never holds
    the whole bf16 model (36 GB), so int4/nf4 fit a 24 GB card.
    """
    if speed.quantize == "none" and not speed.fuse_projections:
        return load_dit(model_dir, device=device, dtype=dtype), False
    dit = load_dit(model_dir, device="cpu", dtype=dtype)  # mmapped: no copy of the file
    for block in dit.blocks:
        block.to(device)
        prepare_dit_block(block, speed)
    dit.to(device)  # embeddings, projections and head
    return dit, True


def load_flashtalk_generator(
    config: PipelineConfig,
    model_dir: Path,
    wav2vec_dir: Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    cache_dir: Path | None = None,
    speed: SpeedOptions | None = None,
) -> FlashTalkGenerator:
    """Load the DiT, VAE and wav2vec2 resident and apply ``speed`` (default: as the official
    code runs); T5 and CLIP are loaded per avatar."""
    speed = speed or SpeedOptions.official()
    model_dir, wav2vec_dir = Path(model_dir), Path(wav2vec_dir)
    if not model_dir.is_dir():
        raise CheckpointError(
            f"model directory {model_dir} does not exist; point --model-dir at the "
            "SoulX-FlashTalk checkpoint and check it with `headcast doctor`"
        )
    started = time.perf_counter()
    dit, blocks_prepared = load_dit_prepared(model_dir, device=device, dtype=dtype, speed=speed)
    vae = load_vae(model_dir / VAE_CHECKPOINT_NAME, device=device, dtype=dtype, config=config.vae)
    audio_encoder = Wav2VecStreamEncoder.from_dir(wav2vec_dir, device, torch.float32, config.audio)
    logger.info("FlashTalk models loaded in %.1f s", time.perf_counter() - started)

    def prompt_encoder() -> PromptEncoder:
        return PromptEncoder.from_model_dir(model_dir, device=device, dtype=OFFICIAL_T5_DTYPE)

    def clip() -> CLIPVisionEncoder:
        return load_clip_visual(
            model_dir / CLIP_CHECKPOINT_FILE,
            device=device,
            dtype=OFFICIAL_CLIP_DTYPE,
            config=config.clip,
        )

    generator = FlashTalkGenerator(
        config,
        dit=dit,
        vae=vae,
        audio_encoder=audio_encoder,
        encoders=OnDemandEncoders(prompt_encoder, clip, device),
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
    )
    apply_speedups(generator, speed, blocks_prepared=blocks_prepared)
    return generator

"""The OmniAvatar models of one size, built three ways, and the speed options applied to them.

Owns: ``OmniModels`` (DiT, tiled VAE, audio encoder, prompt source), ``prompt_context``
(a prompt's umT5 rows zero-padded to ``text_len``: the official ``encode_prompt``),
``OnDemandPrompts`` (umT5 built or loaded only while prompts are encoded, results cached
per prompt), and the builders: ``tiny_models`` (seeded random weights of the tiny size, CPU,
no files), ``load_models`` (the official folders under one model folder) and
``random_models`` (random full-size weights made on the GPU, for timing before the weights
are there). ``apply_speedups`` puts FlashTalk's ``SpeedOptions`` on them: fp8/int linears
per block, compiled blocks, channels-last VAE with fused norms, cuDNN autotuning.

Knows nothing about the recipe, files on the output side or the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from headcast.pipeline.audio import Wav2VecStreamEncoder
from headcast.pipeline.encoders import release_device_memory
from headcast.pipeline.omniavatar.audio import OmniAudioEncoder
from headcast.pipeline.omniavatar.config import OmniSize
from headcast.pipeline.omniavatar.dit import FLOAT32_SUBMODULES, OmniAvatarDiT
from headcast.pipeline.omniavatar.loader import OmniFolders, load_omni_dit
from headcast.pipeline.omniavatar.tiled_vae import TiledVAE
from headcast.pipeline.random_weights import (
    RANDOM_PROMPT_TOKENS,
    fill_random_blockwise,
    init_random_,
)
from headcast.pipeline.speedups import SpeedOptions, check_attention_fp8, prepare_dit_block
from headcast.pipeline.text import (
    OFFICIAL_T5_DTYPE,
    T5_CHECKPOINT_FILE,
    T5_TOKENIZER_DIR,
    HashTokenizer,
    PromptEncoder,
    T5Encoder,
    Umt5Tokenizer,
    load_t5,
)
from headcast.pipeline.tiny import random_init
from headcast.pipeline.vae import VAE_CHECKPOINT_NAME, WanVAE, load_vae
from headcast.pipeline.vae_kernels import norm_silu

logger = logging.getLogger(__name__)


def prompt_context(encoder: PromptEncoder, prompt: str, text_len: int) -> torch.Tensor:
    """``[1, text_len, dim]``: the prompt's rows, every row from the prompt length on zero."""
    rows = encoder.encode(prompt)  # [L_valid, dim]
    return F.pad(rows, (0, 0, 0, text_len - rows.shape[0]))[None]


class OnDemandPrompts:
    """A ``PromptSource``: the text encoder exists only while new prompts are encoded."""

    def __init__(
        self, factory: Callable[[], PromptEncoder], text_len: int, device: torch.device
    ) -> None:
        self._factory = factory
        self._text_len = text_len
        self._device = device
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._cache]
        if missing:
            encoder = self._factory()
            try:
                for prompt in missing:
                    self._cache[prompt] = prompt_context(encoder, prompt, self._text_len)
            finally:
                del encoder
                release_device_memory(self._device)
        return [self._cache[prompt] for prompt in prompts]


class RandomPrompts:
    """A ``PromptSource`` of seeded noise rows of the umT5 width (random-weight timing)."""

    def __init__(self, text_dim: int, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        self._shape = (1, RANDOM_PROMPT_TOKENS, text_dim)
        self._device, self._dtype, self._seed = device, dtype, seed

    def __call__(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        generator = torch.Generator(device=self._device).manual_seed(self._seed)
        return [
            torch.randn(self._shape, generator=generator, device=self._device, dtype=self._dtype)
            for _ in prompts
        ]


@dataclass
class OmniModels:
    """What a renderer needs, resident on one device."""

    size: OmniSize
    dit: OmniAvatarDiT
    vae: TiledVAE
    audio: OmniAudioEncoder
    prompts: Callable[[Sequence[str]], list[torch.Tensor]]
    weights: str
    """Where the weights came from, in words (logs and reports)."""


def tiny_models(
    size: OmniSize, *, seed: int = 0, device: torch.device | str = "cpu", tiled_vae: bool = True
) -> OmniModels:
    """Seeded random float32 models of a random-weight size (``tiny``): no files needed."""
    if size.wav2vec is None:
        raise ValueError(f"size {size.name!r} has real weights; load it with load_models()")
    device = torch.device(device)
    dit = random_init(OmniAvatarDiT(size.dit), seed + 1).to(device)
    vae = random_init(WanVAE(size.vae), seed + 2).to(device)
    audio = OmniAudioEncoder(
        Wav2VecStreamEncoder.tiny(dict(size.wav2vec), seed=seed + 3, device=device).model
    )

    def encoder() -> PromptEncoder:
        t5 = random_init(T5Encoder(size.t5), seed + 4).to(device)
        return PromptEncoder(HashTokenizer(size.t5.vocab, size.dit.text_len), t5)

    prompts = OnDemandPrompts(encoder, size.dit.text_len, device)
    return OmniModels(
        size, dit, TiledVAE(vae, tiled=tiled_vae), audio, prompts, "random (tiny, float32)"
    )


def load_models(
    model_dir: Path,
    size: OmniSize,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    speed: SpeedOptions | None = None,
    tiled_vae: bool = True,
    wav2vec_dir: Path | None = None,
) -> OmniModels:
    """The official models of ``size`` from ``model_dir`` (the ``pretrained_models`` folder;
    ``wav2vec_dir`` replaces its ``wav2vec2-base-960h``); DiT blocks are prepared
    (quantised) one by one as they arrive on the device."""
    device = torch.device(device)
    folders = OmniFolders.under(model_dir, size, wav2vec_dir=wav2vec_dir)
    speed = speed or SpeedOptions.official()
    dit = load_omni_dit(
        folders,
        size,
        device=device,
        dtype=dtype,
        prepare_block=lambda block: prepare_dit_block(block, speed),
    )
    vae = load_vae(folders.base / VAE_CHECKPOINT_NAME, device=device, dtype=dtype, config=size.vae)
    audio = OmniAudioEncoder.from_dir(folders.wav2vec, device=device)

    def encoder() -> PromptEncoder:
        tokenizer = Umt5Tokenizer.from_dir(folders.base / T5_TOKENIZER_DIR, size.dit.text_len)
        t5 = load_t5(
            folders.base / T5_CHECKPOINT_FILE,
            device=device,
            dtype=OFFICIAL_T5_DTYPE,
            config=size.t5,
        )
        return PromptEncoder(tokenizer, t5)

    prompts = OnDemandPrompts(encoder, size.dit.text_len, device)
    return OmniModels(
        size, dit, TiledVAE(vae, tiled=tiled_vae), audio, prompts, f"checkpoint {model_dir}"
    )


def random_models(
    size: OmniSize,
    *,
    device: torch.device,
    speed: SpeedOptions,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    tiled_vae: bool = True,
) -> OmniModels:
    """Random full-size models made on ``device`` (the DiT block by block, each block
    prepared before the next exists); the text encoder is a noise stand-in."""
    with torch.device("meta"):
        dit = OmniAvatarDiT(size.dit).to(dtype)
        vae = WanVAE(size.vae).to(dtype)
    dit = fill_random_blockwise(
        dit,
        FLOAT32_SUBMODULES,
        device=device,
        seed=seed,
        prepare_block=lambda block: prepare_dit_block(block, speed),
    )
    vae = vae.to_empty(device=device)
    init_random_(vae, seed + 1)
    stream = Wav2VecStreamEncoder.tiny(dict(size.wav2vec or {}), seed=seed + 2, device=device)
    prompts = RandomPrompts(size.dit.text_dim, device, dtype, seed + 3)
    return OmniModels(
        size,
        dit,
        TiledVAE(vae.eval().requires_grad_(False), tiled=tiled_vae),
        OmniAudioEncoder(stream.model),
        prompts,
        f"random (full-size {size.name}, {dtype})",
    )


def apply_speedups(models: OmniModels, options: SpeedOptions, *, blocks_prepared: bool) -> None:
    """Apply ``options`` in place (the attention preference is the renderer's); compilation
    happens on the first segment."""
    check_attention_fp8(options, next(models.dit.parameters()).device)
    if options.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if not blocks_prepared:
        for block in models.dit.blocks:
            prepare_dit_block(block, options)
    if options.vae_channels_last:
        models.vae.vae.to_channels_last()
    if options.vae_fused_norms:
        models.vae.vae.fuse_norms(norm_silu)
    if options.compile_mode is not None:
        models.dit.compile_blocks(
            None if options.compile_mode == "default" else options.compile_mode
        )
    logger.info("OmniAvatar speed options: %s", options)


def build_models(
    size: OmniSize,
    *,
    model_dir: Path | None,
    device: torch.device,
    speed: SpeedOptions,
    random_weights: bool = False,
    tiled_vae: bool = True,
    wav2vec_dir: Path | None = None,
    seed: int = 0,
) -> OmniModels:
    """The models a run asks for: tiny random (no folder), random full size (GPU) or the
    official weights from ``model_dir``; ``speed`` applied."""
    if size.is_random:
        models = tiny_models(size, seed=seed, device=device, tiled_vae=tiled_vae)
        apply_speedups(models, speed, blocks_prepared=False)
        return models
    if random_weights:
        if device.type != "cuda":
            raise ValueError(
                f"random full-size {size.name} weights are built on a CUDA GPU; "
                "on CPU use --size tiny"
            )
        models = random_models(size, device=device, speed=speed, seed=seed, tiled_vae=tiled_vae)
    elif model_dir is None:
        raise ValueError(
            f"OmniAvatar {size.name} needs --model-dir (the folder holding {size.base_dir}/, "
            f"{size.omni_dir}/ and {size.wav2vec_dir}/), or --random-weights to time it"
        )
    else:
        models = load_models(
            model_dir,
            size,
            device=device,
            speed=speed,
            tiled_vae=tiled_vae,
            wav2vec_dir=wav2vec_dir,
        )
    apply_speedups(models, speed, blocks_prepared=True)
    return models

"""The ``tiny`` and ``flashtalk`` engines: the diffusion generator behind the Engine protocol.

Owns building the generator on the device thread (``load``), warming it up with one chunk,
measuring its real-time factor, and adapting ``FlashTalkGenerator`` sessions to chunk jobs
and re-seeds. Frames are resized to the engine's output size when the preset generates
another size (on the device, before the copy to the host; a re-seed's frames back to the
generated size).
Created with a ``parallel`` group of N > 1 ranks, the engine is one rank of a
sequence-parallel group (``pipeline.parallel``): every rank calls ``load``,
``open_session``, ``step``, ``reseed`` and ``close_session`` in lockstep with the same arguments;
rank 0's chunks carry the frames, the other ranks' chunks carry none.
Knows nothing about asyncio or WebRTC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headcast.pipeline.avatar_art import draw_default_avatar
from headcast.pipeline.config import PipelineConfig, preset
from headcast.pipeline.engine_options import FlashTalkOptions, TinyOptions
from headcast.pipeline.generator import FlashTalkGenerator, StreamState, conditioning_assets
from headcast.pipeline.media import (
    CHUNK_SAMPLES,
    CHUNK_SECONDS,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    Avatar,
    Chunk,
    ChunkJob,
    PreparationStep,
    Reseed,
)
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.speedups import SpeedOptions, apply_speedups, engine_speed_options
from headcast.pipeline.stepwise import relay

logger = logging.getLogger(__name__)

WARMUP_CHUNKS = 2
"""Chunks generated at load time so the first session does not pay for warm-up. The first
pays for ``torch.compile`` and cuDNN autotuning; the last one's time is the measured RTF."""


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, h, w, 3] uint8 -> [T, height, width, 3] uint8 (bilinear, on the CPU); unchanged if
    equal. For the few frames of a re-seed; chunks are resized on the device."""
    if frames.shape[1:3] == (height, width):
        return frames
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [T, 3, h, w]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class DiffusionEngine:
    """A FlashTalk generator (tiny random weights or the real checkpoint) as an Engine."""

    def __init__(
        self,
        *,
        name: str,
        config: PipelineConfig,
        height: int = DEFAULT_HEIGHT,
        width: int = DEFAULT_WIDTH,
        model_dir: Path | None = None,
        wav2vec_dir: Path | None = None,
        device: str | None = None,
        cache_dir: Path | None = None,
        speed: SpeedOptions | None = None,
        random_weights: bool = False,
        parallel: ParallelGroup | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.height = height
        self.width = width
        self.model_dir = model_dir
        self.wav2vec_dir = wav2vec_dir
        self.parallel = parallel
        """This process's rank of a sequence-parallel group (None: computes alone)."""
        self.device = _device(device, parallel)
        self.cache_dir = cache_dir
        self.speed = speed
        self.random_weights = random_weights
        self.generator: FlashTalkGenerator | None = None
        self.warmup_rtf: float | None = None
        if name == "tiny":
            self.description = (
                "tiny: the real FlashTalk code path with random tiny weights; the pictures "
                "are noise, not a face"
            )
        else:
            quantized = "" if speed is None or speed.quantize == "none" else f", {speed.quantize}"
            self.description = (
                f"flashtalk: SoulX-FlashTalk {config.preset}, {config.steps} steps, "
                f"{config.height}x{config.width}{quantized}"
            )
            if random_weights:
                self.description += (
                    "; RANDOM full-size weights (random_weights): the speed of the real model, "
                    "but the pictures are noise"
                )

    def load(self) -> None:
        """Build or load the models on this (the device) thread, then warm up."""
        started = time.perf_counter()
        device = torch.device(self.device)
        if device.type == "cuda" and device.index is not None:  # cuda:3: this thread's default
            torch.cuda.set_device(device)
        if self.name == "tiny":
            from headcast.pipeline.tiny import build_tiny_generator

            self.generator = build_tiny_generator(
                self.config, seed=0, device=self.device, cache_dir=self.cache_dir
            )
            if self.speed is not None:
                apply_speedups(self.generator, self.speed)
        elif self.random_weights:
            self.generator = self._random_generator()
        else:
            from headcast.pipeline.flashtalk import load_flashtalk_generator

            if self.model_dir is None or self.wav2vec_dir is None:
                raise ValueError(
                    "the flashtalk engine needs --model-dir and --wav2vec-dir "
                    "(check them with `headcast doctor`)"
                )
            self.generator = load_flashtalk_generator(
                self.config,
                self.model_dir,
                self.wav2vec_dir,
                device=self.device,
                cache_dir=self.cache_dir,
                speed=self.speed,
            )
        if self.parallel is not None:
            self.generator.use_parallel(self.parallel)
        logger.info(
            "%s engine built in %.1f s; warming up", self.name, time.perf_counter() - started
        )
        state = self.generator.prepare(draw_default_avatar(self.config.height, self.config.width))
        silence = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
        for number in range(1, WARMUP_CHUNKS + 1):
            clock = time.perf_counter()
            self.generator.step(state, silence, self.output_size)
            self.warmup_rtf = (time.perf_counter() - clock) / CHUNK_SECONDS
            logger.info(
                "%s engine warm-up chunk %d/%d: %.2f s (RTF %.2f)",
                self.name, number, WARMUP_CHUNKS, self.warmup_rtf * CHUNK_SECONDS, self.warmup_rtf,
            )  # fmt: skip
        logger.info("%s engine warm: RTF %.2f per chunk", self.name, self.warmup_rtf)

    def _random_generator(self) -> FlashTalkGenerator:
        """Full-size random weights made on the GPU (``random_weights``), sped up as asked."""
        from headcast.pipeline.random_weights import random_generator

        device = torch.device(self.device)
        if device.type != "cuda":
            raise ValueError(
                "random_weights builds the full-size model on a CUDA GPU (26 to 40 GB of its "
                f"memory); this engine runs on {self.device!r}. On a CPU use the tiny engine "
                "(--engine tiny)"
            )
        speed = self.speed or SpeedOptions.official()
        generator = random_generator(self.config, speed, device=device, seed=self.config.seed)
        apply_speedups(generator, speed, blocks_prepared=True)
        return generator

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the frames the engine hands back."""
        return self.height, self.width

    def _require_generator(self) -> FlashTalkGenerator:
        if self.generator is None:
            raise RuntimeError(f"the {self.name} engine is not loaded")
        return self.generator

    @property
    def avatar_cache_evictions(self) -> int:
        """Avatars' conditioning dropped from the device cache since the engine loaded."""
        return 0 if self.generator is None else self.generator.avatars.evictions

    def prepare_avatar(self, avatar: Avatar) -> Iterator[PreparationStep]:
        """Compute ``avatar``'s conditioning in short steps of device work (CLIP, T5, one
        causal VAE chunk each); the last step hands over its host copy as the assets (empty
        on ranks other than 0 of a group, whose copy nobody reads)."""
        steps = self._require_generator().condition_steps(avatar.image, avatar.prompt)
        conditioning = yield from relay(steps, PreparationStep)
        hand_over = self._require_generator().hands_back_frames
        yield PreparationStep(1.0, conditioning_assets(conditioning) if hand_over else {})

    def open_session(self, avatar: Avatar, seed: int) -> StreamState:
        """A seeded stream on ``avatar``'s conditioning: cached on the device, or from its
        assets, or computed now."""
        return self._require_generator().prepare(
            avatar.image, avatar.prompt, seed=seed, assets=avatar.assets
        )

    def step(self, state: Any, job: ChunkJob) -> Chunk:
        """One chunk of the session's stream, resized to the engine's output size."""
        started = time.perf_counter()
        output = self._require_generator().step(state, job.audio, self.output_size)
        return Chunk(
            index=job.index,
            frames=output.frames,  # at the output size (resized on the device)
            audio=job.audio,
            compute_seconds=time.perf_counter() - started,
            stats=output.timings,
        )

    def reseed(self, state: Any, reseed: Reseed) -> None:
        """Motion latents from the VAE encode of the frames shown (resized to the generated
        size), the silence that played into the audio ring."""
        config = self.config
        frames = resize_frames(reseed.frames, config.height, config.width)  # [5, h, w, 3]
        self._require_generator().reseed(state, frames, reseed.silent_samples)

    def close_session(self, state: Any) -> None:
        """Nothing to free: the state's tensors go with the state."""


def tiny_engine(options: TinyOptions, parallel: ParallelGroup | None = None) -> DiffusionEngine:
    """The ``tiny`` engine: the ``tiny`` preset (steps, seed) at ``options``' output size;
    ``parallel``: one rank of a sequence-parallel group."""
    return DiffusionEngine(
        name="tiny",
        config=preset("tiny", steps=options.steps, seed=options.seed),
        height=options.height,
        width=options.width,
        device=options.device,
        cache_dir=options.cache_dir,
        parallel=parallel,
    )


def flashtalk_engine(
    options: FlashTalkOptions, parallel: ParallelGroup | None = None
) -> DiffusionEngine:
    """The ``flashtalk`` engine: the official 14B recipe, with the speed options asked for.

    ``gen_height``/``gen_width`` set the generated size (frames are resized to ``height`` x
    ``width``); ``speedups`` is ``fast`` (bf16-exact speed-ups, the default) or ``official``;
    ``quantize``, ``attention_fp8`` and ``compile`` choose the DiT's precision and
    compilation;
    ``random_weights`` builds the full-size model with random weights on the GPU instead of
    loading the checkpoint (speed and capacity without the weights; the pictures are noise);
    ``parallel`` makes the engine one rank of a sequence-parallel group (on its device).
    """
    config = preset(
        "flashtalk-14b",
        steps=options.steps,
        seed=options.seed,
        height=options.gen_height or options.height,
        width=options.gen_width or options.width,
    )
    device = _device(options.device, parallel)
    speed = engine_speed_options(
        options.speedups,
        device,
        quantize=options.quantize,
        compile=options.compile,
        attention_fp8=options.attention_fp8,
    )
    return DiffusionEngine(
        name="flashtalk",
        config=config,
        height=options.height,
        width=options.width,
        model_dir=options.model_dir,
        wav2vec_dir=options.wav2vec_dir,
        device=options.device,
        cache_dir=options.cache_dir,
        speed=speed,
        random_weights=options.random_weights,
        parallel=parallel,
    )


def _device(device: str | None, parallel: ParallelGroup | None) -> str:
    """Where the engine computes: the rank's device in a group, else ``device``, else CUDA
    when present, else the CPU."""
    if parallel is not None:
        return str(parallel.device)
    return device or ("cuda" if torch.cuda.is_available() else "cpu")

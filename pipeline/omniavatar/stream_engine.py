"""The ``omniavatar`` engine: OmniAvatar as a streaming engine behind the Engine protocol.

Each chunk job is one segment of the official segment loop (``segments.SegmentChain``):
41 frames of which the first 13 are the previous segment's last 13 frames re-encoded as the
fixed lead (with the mask), so each chunk yields 28 new frames = 1.12 s, the FlashTalk
chunk. The first segment starts from the reference picture as the official code does
(its latent fixed, mask 0 on latent frame 0); the stream's audio starts with 12 silent
frames (``recipe.STREAM_LEAD_FRAMES``) so that the first segment is the reference frame,
those 12 frames and the first chunk's 28: chunk k is always segment k's last 28 frames,
the same frames the offline render of the same recipe (``stream_recipe``, stream-mode
audio) gives.

Owns: building the models of the asked size (tiny random on the CPU, the official folders,
or random full-size weights on the GPU) with the speed options, the warm-up and its
real-time factor, per-avatar conditioning (the reference latent and the two prompt
embeddings, computed in steps and cached on the device), per-session state
(``OmniStreamState``: the segment carry, the audio ring, the seeded noise), the per-chunk
audio (``stream_audio.StreamAudio`` on the session's ring) and the output resize. A re-seed
(``idle_mode: loop``) makes the frames on screen the next segment's lead (the 5 frames
shown, the oldest repeated to fill the 13-frame overlap) and its audio window the silence
that played.

Created with a ``parallel`` group of N > 1 ranks, the engine is one rank of a
sequence-parallel group: every rank is called in lockstep with the same arguments, the DiT
splits its tokens among the ranks (``OmniAvatarDiT.run_blocks``), everything else (audio,
VAE, noise from the same seed) runs whole on every rank; rank 0's chunks carry the frames,
the other ranks' chunks carry none. Knows nothing about asyncio or WebRTC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from headcast.pipeline.audio import AudioRing
from headcast.pipeline.avatar_art import draw_default_avatar
from headcast.pipeline.avatar_cache import AvatarCache, avatar_key
from headcast.pipeline.diffusion_engine import resize_frames
from headcast.pipeline.engine_options import OmniAvatarOptions
from headcast.pipeline.imaging import PIXEL_MAX
from headcast.pipeline.media import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    CHUNK_SECONDS,
    Avatar,
    AvatarAssets,
    Chunk,
    ChunkJob,
    PreparationStep,
    Reseed,
)
from headcast.pipeline.omniavatar.audio import next_window
from headcast.pipeline.omniavatar.config import omni_size
from headcast.pipeline.omniavatar.models import OmniModels, build_models
from headcast.pipeline.omniavatar.recipe import (
    BUCKETS_480P,
    DEFAULT_PROMPT,
    STREAM_OVERLAP,
    STREAM_SEGMENT_FRAMES,
    TINY_STREAM_BUCKETS,
    Recipe,
    stream_recipe,
)
from headcast.pipeline.omniavatar.reference_image import Bucket, choose_bucket, reference_video
from headcast.pipeline.omniavatar.render import frames_to_uint8
from headcast.pipeline.omniavatar.segments import (
    NoiseSource,
    SegmentCarry,
    SegmentChain,
    carry_from_reference,
    seeded_noise,
)
from headcast.pipeline.omniavatar.stream_audio import StreamAudio
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.speedups import SpeedOptions, engine_speed_options

logger = logging.getLogger(__name__)

WARMUP_CHUNKS = 2
"""Chunks generated at load time: the first pays for compilation and autotuning, the last
one's time is the measured RTF."""

AVATAR_CACHE_SIZE = 8
"""Prepared avatars kept on the device (a reference latent and two prompt embeddings each)."""

ASSET_NAMES = ("reference_latent", "context", "negative_context")
"""The per-avatar conditioning handed back as assets, by name."""

if STREAM_SEGMENT_FRAMES - STREAM_OVERLAP != CHUNK_FRAMES:  # pragma: no cover - constants
    raise AssertionError("a streaming segment must add exactly one chunk of frames")


@dataclass
class OmniConditioning:
    """One avatar's conditioning on the device."""

    reference_latent: torch.Tensor
    """VAE latent of the reference picture at the generation size ``[1, 16, 1, h, w]``."""
    context: torch.Tensor
    """Prompt embedding ``[1, text_len, text_dim]``."""
    negative_context: torch.Tensor
    """Negative prompt embedding ``[1, text_len, text_dim]``."""

    def assets(self) -> AvatarAssets:
        """Float32 host copies, by field name."""
        return {name: getattr(self, name).float().cpu().numpy() for name in ASSET_NAMES}

    @classmethod
    def from_assets(cls, assets: AvatarAssets, device: torch.device) -> OmniConditioning:
        """``assets()``' arrays back on ``device`` (float32: the renderer's dtypes)."""
        missing = [name for name in ASSET_NAMES if name not in assets]
        if missing:
            raise ValueError(
                f"the avatar's stored conditioning lacks {', '.join(missing)} (it was prepared "
                "by another engine); prepare the avatar again"
            )
        return cls(
            *(torch.from_numpy(np.asarray(assets[n], np.float32)).to(device) for n in ASSET_NAMES)
        )


@dataclass
class ChunkTimes:
    """One session's chunk compute times, summed up for its closing log line (the server's
    metrics see only the chunks that were in time; these count every chunk computed)."""

    count: int = 0
    total_s: float = 0.0
    longest_s: float = 0.0
    first_s: float | None = None

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.longest_s = max(self.longest_s, seconds)
        if self.first_s is None:
            self.first_s = seconds

    def summary(self) -> str:
        """``N chunks, compute mean ... (RTF ...), longest ..., first ...``."""
        if not self.count:
            return "no chunks"
        mean = self.total_s / self.count
        return (
            f"{self.count} chunks, compute mean {mean:.3f} s (RTF {mean / CHUNK_SECONDS:.2f}), "
            f"longest {self.longest_s:.3f} s (RTF {self.longest_s / CHUNK_SECONDS:.2f}), "
            f"first {self.first_s or 0.0:.3f} s"
        )


@dataclass
class OmniStreamState:
    """Everything one session's stream carries from chunk to chunk."""

    conditioning: OmniConditioning
    carry: SegmentCarry
    ring: AudioRing
    """The last ``StreamAudio.window_samples`` samples heard (silence at the start)."""
    noise: NoiseSource
    """The session's seeded noise, one draw per segment."""
    times: ChunkTimes
    """Compute time of every chunk of the session."""


def default_bucket(options: OmniAvatarOptions) -> Bucket:
    """The generation size: the options' ``gen_height`` x ``gen_width``, else the size's
    bucket closest to the output's aspect ratio."""
    if options.gen_height is not None and options.gen_width is not None:
        return options.gen_height, options.gen_width
    buckets = TINY_STREAM_BUCKETS if options.size == "tiny" else BUCKETS_480P
    return choose_bucket(options.height, options.width, buckets)


class OmniAvatarStreamEngine:
    """OmniAvatar models + the streaming recipe as an Engine (one loaded model, many sessions)."""

    name = "omniavatar"

    def __init__(self, options: OmniAvatarOptions, parallel: ParallelGroup | None = None) -> None:
        self.options = options
        self.parallel = parallel if parallel is not None and parallel.is_parallel else None
        """This process's rank of a sequence-parallel group (None: computes alone)."""
        self.height = options.height
        self.width = options.width
        self.bucket = default_bucket(options)
        self.recipe: Recipe = stream_recipe(
            self.bucket,
            steps=options.steps,
            guidance=options.guidance,
            tiled_vae=options.tiled_vae,
        )
        self.size = omni_size(options.size)
        self.device = torch.device(
            str(parallel.device)
            if parallel is not None
            else options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.speed = self._speed_options()
        self.models: OmniModels | None = None
        self.chain: SegmentChain | None = None
        self.audio: StreamAudio | None = None
        self.avatars: AvatarCache[OmniConditioning] = AvatarCache(AVATAR_CACHE_SIZE)
        self.warmup_rtf: float | None = None
        passes = len(self.recipe.sampler_options().guidance.passes)
        weights = " with RANDOM full-size weights (the pictures are noise)" * options.random_weights
        self.description = (
            f"omniavatar: OmniAvatar {options.size} streaming, {options.steps} steps, "
            f"{passes} pass(es), 41-frame segments (13 carried over) at "
            f"{self.bucket[0]}x{self.bucket[1]}{weights}"
        )
        if options.size == "tiny":
            self.description += "; tiny random weights: the pictures are noise, not a face"

    def _speed_options(self) -> SpeedOptions:
        options = self.options
        return engine_speed_options(
            options.speedups,
            self.device,
            quantize=options.quantize,
            compile=options.compile,
            attention_fp8=options.attention_fp8,
        )

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Build or load the models on this (the device) thread, then warm up."""
        started = time.perf_counter()
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        options = self.options
        self.models = build_models(
            self.size,
            model_dir=options.model_dir,
            device=self.device,
            speed=self.speed,
            random_weights=options.random_weights,
            tiled_vae=self.recipe.tiled_vae,
            wav2vec_dir=options.wav2vec_dir,
            seed=options.seed or 0,
        )
        self.models.dit.set_parallel(self.parallel)
        self.chain = SegmentChain(
            self.models.dit,
            self.models.vae,
            self.recipe.sampler_options(batch_passes=True),
            overlap=self.recipe.overlap,
            overlap_latents=self.recipe.overlap_latents,
            attention=self.speed.attention,
        )
        self.audio = StreamAudio(
            self.models.audio, segment_frames=STREAM_SEGMENT_FRAMES, overlap=self.recipe.overlap
        )
        logger.info(
            "omniavatar engine built in %.1f s (%s); warming up",
            time.perf_counter() - started,
            self.models.weights,
        )
        state = self.open_session(
            Avatar("warm-up", draw_default_avatar(self.bucket[0], self.bucket[1])), seed=0
        )
        silence = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
        for number in range(1, WARMUP_CHUNKS + 1):
            clock = time.perf_counter()
            self.step(state, ChunkJob(number - 1, silence))
            self.warmup_rtf = (time.perf_counter() - clock) / CHUNK_SECONDS
            logger.info(
                "omniavatar warm-up chunk %d/%d: %.2f s (RTF %.2f)",
                number, WARMUP_CHUNKS, self.warmup_rtf * CHUNK_SECONDS, self.warmup_rtf,
            )  # fmt: skip

    def _parts(self) -> tuple[OmniModels, SegmentChain, StreamAudio]:
        if self.models is None or self.chain is None or self.audio is None:
            raise RuntimeError("the omniavatar engine is not loaded")
        return self.models, self.chain, self.audio

    @property
    def avatar_cache_evictions(self) -> int:
        """Avatars' conditioning dropped from the device cache since the engine loaded."""
        return self.avatars.evictions

    # -- avatars ---------------------------------------------------------------------------

    def prepare_avatar(self, avatar: Avatar) -> Iterator[PreparationStep]:
        """The prompt embeddings (one step), then the reference latent (one step); the last
        step carries their host copies as the assets."""
        models, chain, _ = self._parts()
        prompt = avatar.prompt or DEFAULT_PROMPT
        key = self._avatar_key(avatar)
        context, negative = (
            c.to(self.device) for c in models.prompts([prompt, self.recipe.negative_prompt])
        )
        yield PreparationStep(0.5)
        reference = reference_video(avatar.image, self.recipe.buckets).to(self.device)
        with torch.no_grad():
            latent = chain.vae.encode(reference)  # [1, 16, 1, h, w]
        conditioning = OmniConditioning(latent, context, negative)
        self.avatars.put(key, conditioning)
        yield PreparationStep(1.0, conditioning.assets())

    def _avatar_key(self, avatar: Avatar) -> str:
        """The device cache's key: the picture, the prompt, the generated size and the VAE
        tiling (the reference latent differs near the seams)."""
        prompt = avatar.prompt or DEFAULT_PROMPT
        tiling = "tiled" if self.recipe.tiled_vae else "whole"
        return avatar_key(
            avatar.image, prompt, f"omniavatar-{self.size.name}:{self.bucket}:{tiling}"
        )

    def _conditioning(self, avatar: Avatar) -> OmniConditioning:
        key = self._avatar_key(avatar)
        cached = self.avatars.get(key)
        if cached is not None:
            return cached
        if avatar.assets is not None:
            conditioning = OmniConditioning.from_assets(avatar.assets, self.device)
            self._check_latent(conditioning.reference_latent)
            self.avatars.put(key, conditioning)
            return conditioning
        for _ in self.prepare_avatar(avatar):  # computed now, cached by the last step
            pass
        cached = self.avatars.get(key)
        if cached is None:  # pragma: no cover - prepare_avatar always caches
            raise RuntimeError(f"avatar {avatar.name!r} was not prepared")
        return cached

    def _check_latent(self, latent: torch.Tensor) -> None:
        """Stored assets must be of this engine's generated size."""
        stride = self.size.vae.spatial_stride
        expected = (self.bucket[0] // stride, self.bucket[1] // stride)
        if tuple(latent.shape[-2:]) != expected:
            raise ValueError(
                f"the avatar's stored conditioning is for latents {tuple(latent.shape[-2:])}, "
                f"this engine generates {self.bucket[0]}x{self.bucket[1]} (latents {expected}): "
                "it was prepared for another size; prepare the avatar again"
            )

    # -- sessions --------------------------------------------------------------------------

    def open_session(self, avatar: Avatar, seed: int) -> OmniStreamState:
        """A seeded stream on ``avatar``'s conditioning (cached, from its assets, or now)."""
        models, _, audio = self._parts()
        conditioning = self._conditioning(avatar)
        latent_frames = self.recipe.latent_frames(self.bucket)
        return OmniStreamState(
            conditioning=conditioning,
            carry=carry_from_reference(conditioning.reference_latent, latent_frames),
            ring=AudioRing(audio.window_samples),
            noise=seeded_noise(seed, self.device, models.dit.dtype),
            times=ChunkTimes(),
        )

    def step(self, state: OmniStreamState, job: ChunkJob) -> Chunk:
        """One segment: the chunk's audio rows, the segment, its last 28 frames resized."""
        _, chain, audio = self._parts()
        started = time.perf_counter()
        carry = state.carry
        state.ring.push(job.audio)
        rows = audio.rows(state.ring.window(), audio.new_rows(first=carry.tail is None))
        window = next_window(carry.window, rows, self.recipe.overlap)  # [41, C]
        conditioning = state.conditioning
        frames = chain.next(
            carry, window, conditioning.context, conditioning.negative_context, state.noise
        )  # [1, 3, 41, H, W] in [0, 1]
        new = frames[0, :, -CHUNK_FRAMES:].transpose(0, 1)  # [28, 3, H, W]
        if self.parallel is not None and not self.parallel.is_primary:
            new = new[:0]  # rank 0 hands back the group's frames
        elif new.shape[-2:] != (self.height, self.width):
            new = F.interpolate(
                new, size=(self.height, self.width), mode="bilinear", align_corners=False
            )
        pixels = frames_to_uint8(new)  # [28, height, width, 3]; the copy waits for the device
        seconds = time.perf_counter() - started
        state.times.add(seconds)
        logger.debug("omniavatar chunk %d: %.3f s", job.index, seconds)
        return Chunk(index=job.index, frames=pixels, audio=job.audio, compute_seconds=seconds)

    def reseed(self, state: OmniStreamState, reseed: Reseed) -> None:
        """The frames shown become the next segment's lead (the oldest repeated to fill the
        13-frame overlap), the silence that played its audio window."""
        _, _, audio = self._parts()
        shown = resize_frames(reseed.frames, *self.bucket)  # [5, h, w, 3] uint8
        lead_in = np.concatenate(
            [np.repeat(shown[:1], self.recipe.overlap - shown.shape[0], axis=0), shown]
        )  # [13, h, w, 3]
        tail = torch.from_numpy(lead_in).to(self.device).permute(3, 0, 1, 2)[None]
        state.carry.tail = (tail.float() / PIXEL_MAX * 2 - 1).contiguous()  # [1, 3, 13, h, w]
        state.ring.push(np.zeros(reseed.silent_samples, dtype=np.float32))
        state.carry.window = audio.rows(state.ring.window(), STREAM_SEGMENT_FRAMES)  # [41, C]

    def close_session(self, state: OmniStreamState) -> None:
        """Log the session's chunk times; its tensors go with the state."""
        logger.info("omniavatar session closed: %s", state.times.summary())


def omniavatar_engine(
    options: OmniAvatarOptions, parallel: ParallelGroup | None = None
) -> OmniAvatarStreamEngine:
    """The ``omniavatar`` engine made (not loaded) from its options."""
    return OmniAvatarStreamEngine(options, parallel)

"""The streaming FlashTalk generator: prepare an avatar once, then step chunk by chunk.

Owns the official per-chunk recipe (audio features of the 8 s ring, 4 sampling steps with
motion-frame carryover, VAE decode, colour correction, re-encode of the last 5 frames as the
next chunk's motion latents, conversion to uint8 frames) and the per-session ``StreamState``.
One loaded model serves every session: nothing per session is stored on the modules.

Per-avatar conditioning (T5 prompt embedding, CLIP features, VAE latents of the reference
image) is computed once per avatar and kept in a bounded cache on the device
(``pipeline.avatar_cache``); it never runs per chunk. ``condition_steps`` computes it in short
steps (CLIP, T5, one causal VAE chunk at a time) so the device thread can run chunks of live
sessions between them; ``conditioning_assets`` / ``conditioning_from_assets`` turn it into
host arrays and back, for the server's avatar store. Prompt embeddings are cached by prompt
too (most avatars share the default prompt). Knows nothing about threads, asyncio or codecs.

With ``use_parallel`` every rank of a group runs ``step`` in lockstep on the same inputs:
the DiT splits its tokens (``pipeline.sequence_parallel``), the VAE its rows
(``pipeline.vae_parallel``), and every rank draws the same noise from the same seeded
generator in the same order, so the sampler's latents are the same on every rank (the
per-step velocity is gathered on all of them). Colour correction runs on every rank (its
result feeds the motion re-encode); only rank 0 converts the frames to uint8 and copies
them to the host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from headcast.pipeline import sampler
from headcast.pipeline.attention import sdpa_backends
from headcast.pipeline.audio import AudioRing, Wav2VecStreamEncoder
from headcast.pipeline.avatar_cache import AvatarCache, avatar_key
from headcast.pipeline.color import match_and_blend_colors
from headcast.pipeline.config import PipelineConfig
from headcast.pipeline.dit import FlashTalkDiT
from headcast.pipeline.imaging import resize_and_centercrop, to_model_range, to_uint8
from headcast.pipeline.media import AvatarAssets
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.stepwise import finish, relay
from headcast.pipeline.timing import StageTimer, stage_timer
from headcast.pipeline.vae import WanVAE
from headcast.pipeline.vae_parallel import ParallelVAE

logger = logging.getLogger(__name__)

MASK_CHANNELS = 4
"""First-frame mask channels in ``y`` (one per frame of the first latent's 4-frame group)."""

AVATAR_CACHE_SIZE = 16
"""Avatars whose conditioning is kept on the device (least recently used ones are dropped).
At 768x448 one avatar's conditioning is about 9 MB of bf16."""

PROMPT_CACHE_SIZE = 4
"""Prompt embeddings kept on the device ([512, 4096] bf16: 4 MB each), so an avatar with an
already seen prompt (the default one, mostly) needs no T5 run."""

ConditioningSteps = Generator[float, None, "AvatarConditioning"]
"""Yields the progress in (0, 1) after each step of device work; returns the conditioning."""

NoiseSource = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]
"""Draws standard normal noise of a shape and dtype (the session's generator, or a golden's)."""

ColorCorrection = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
"""(video [B, 3, T, H, W], reference [B, 3, 1, H, W], strength) -> corrected video."""


@dataclass(frozen=True)
class AvatarConditioning:
    """What an avatar contributes to every chunk; computed once per avatar."""

    context: torch.Tensor  # [1, L_text, text_dim] T5 prompt embedding
    clip_fea: torch.Tensor  # [1, 257, 1280] CLIP features of the reference image
    y: torch.Tensor  # [1, 4 + z, T_lat, h, w] first-frame mask + VAE latents of image + zeros
    first_motion: torch.Tensor  # [z, 1, h, w] VAE latent of the reference image
    reference: torch.Tensor  # [1, 3, 1, H, W] reference image in [-1, 1] (colour target)

    def to(self, device: torch.device | str) -> AvatarConditioning:
        """The same tensors on ``device``."""
        return AvatarConditioning(
            *(getattr(self, name).to(device) for name in self.__dataclass_fields__)
        )


FLOAT32_CONDITIONING = frozenset({"first_motion"})
"""Conditioning fields kept in float32 (the VAE's latents); the others are in the model's
dtype."""


def conditioning_assets(conditioning: AvatarConditioning) -> AvatarAssets:
    """The conditioning as float32 host arrays (bf16 converts exactly), by field name."""
    return {
        name: getattr(conditioning, name).detach().float().cpu().numpy()
        for name in conditioning.__dataclass_fields__
    }


def conditioning_from_assets(
    assets: AvatarAssets, device: torch.device, dtype: torch.dtype
) -> AvatarConditioning:
    """``conditioning_assets``' arrays back on ``device``, each field in its own dtype."""
    missing = [name for name in AvatarConditioning.__dataclass_fields__ if name not in assets]
    if missing:
        raise ValueError(
            f"the avatar's stored conditioning lacks {', '.join(missing)}; prepare the avatar "
            "again (delete it and upload the picture anew)"
        )
    tensors = {
        name: torch.from_numpy(np.array(assets[name], dtype=np.float32)).to(
            device, torch.float32 if name in FLOAT32_CONDITIONING else dtype
        )
        for name in AvatarConditioning.__dataclass_fields__
    }
    return AvatarConditioning(**tensors)


@dataclass
class StreamState:
    """Everything one session's stream carries from chunk to chunk."""

    conditioning: AvatarConditioning
    motion: torch.Tensor  # [z, M, h, w] latents of the previous chunk's last motion frames
    ring: AudioRing
    noise: torch.Generator
    chunk_index: int = 0


@dataclass
class ChunkOutput:
    """One generated chunk on the host, with stage timings in seconds.

    Stage names: ``audio_s``, ``dit_step{i}_s``, ``vae_decode_s``, ``color_s``,
    ``motion_encode_s``, ``to_host_s`` (uint8 conversion and the copy to the host). On a GPU
    they are CUDA-event times on the device timeline.
    """

    frames: np.ndarray  # [new_frames, H, W, 3] uint8 RGB ([0, H, W, 3] on ranks other than 0)
    timings: dict[str, float] = field(default_factory=dict)


class VideoCodec(Protocol):
    """The VAE's two per-chunk calls (the VAE itself, or a ``ParallelVAE`` around it)."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, z, T', h, w]`` -> video ``[B, 3, T, H, W]`` float32 in [-1, 1]."""
        ...

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1] -> latents ``[B, z, T', h, w]`` float32."""
        ...


class AvatarEncoders(Protocol):
    """Computes the text and image conditioning; loads its models only while it runs."""

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """prompt -> [L_text, text_dim]."""
        ...

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[1, 3, 1, H, W] in [-1, 1] -> CLIP features [1, 257, 1280]."""
        ...


def frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8 (truncating, as the official code)."""
    return to_uint8(video).permute(1, 2, 3, 0)


def resize_video(video: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """[3, T, h, w] -> [3, T, H, W] (bilinear, on the video's device); unchanged when ``size``
    is ``None`` or already the video's size."""
    if size is None or tuple(video.shape[2:]) == tuple(size):
        return video
    frames = video.float().transpose(0, 1)  # [T, 3, h, w]
    resized = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
    return resized.transpose(0, 1)  # [3, T, H, W]


def first_frame_mask(latent_frames: int, height: int, width: int) -> torch.Tensor:
    """The 4-channel mask that marks the first video frame as given: [1, 4, T_lat, h, w]."""
    mask = torch.zeros(1, MASK_CHANNELS, latent_frames, height, width)
    mask[:, :, 0] = 1.0  # the first latent frame stands for the reference image x 4 frames
    return mask


class FlashTalkGenerator:
    """Prepares avatars and generates chunks with one shared set of models."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        dit: FlashTalkDiT,
        vae: WanVAE,
        audio_encoder: Wav2VecStreamEncoder,
        encoders: AvatarEncoders,
        device: torch.device | str,
        dtype: torch.dtype,
        cache_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.dit = dit
        self.vae = vae
        self.audio_encoder = audio_encoder
        self.encoders = encoders
        self.device = torch.device(device)
        self.dtype = dtype
        self.cache_dir = cache_dir
        self._timesteps = sampler.timesteps(config.steps, config.shift)
        # [1] float32 per step, made once on the device: a per-step torch.tensor() would be
        # a blocking host-to-device copy (a host sync) inside the sampling loop
        self._timestep_tensors = [
            torch.full((1,), t, dtype=torch.float32, device=self.device)
            for t in self._timesteps[:-1]
        ]
        self.avatars: AvatarCache[AvatarConditioning] = AvatarCache(AVATAR_CACHE_SIZE)
        """Conditioning of recently used avatars, on the device."""
        self._prompts: AvatarCache[torch.Tensor] = AvatarCache(PROMPT_CACHE_SIZE)
        self.attention_backend = "auto"
        """SDPA kernel preference for the DiT (see ``pipeline.attention.sdpa_backends``)."""
        self.color_correct: ColorCorrection = match_and_blend_colors
        """The colour correction (replaceable by a compiled version of the same function)."""
        self.parallel: ParallelGroup | None = None
        """The group this generator's chunks are split among (None: computed here alone)."""
        self.codec: VideoCodec = vae
        """Decodes and re-encodes each chunk: the VAE, or a ``ParallelVAE`` in a group."""

    def use_parallel(self, parallel: ParallelGroup | None) -> None:
        """Split every later chunk among ``parallel``'s ranks (None or a group of one: not).

        Every rank of the group must then call ``prepare`` and ``step`` in lockstep with the
        same arguments; rank 0's frames are the group's (the others return no frames).
        """
        self.parallel = parallel if parallel is not None and parallel.is_parallel else None
        self.dit.set_parallel(self.parallel)
        self.codec = self.vae if self.parallel is None else ParallelVAE(self.vae, self.parallel)

    @property
    def hands_back_frames(self) -> bool:
        """True unless this is a rank other than 0 of a parallel group."""
        return self.parallel is None or self.parallel.is_primary

    # -- per avatar -----------------------------------------------------------------------

    def _avatar_key(self, image: np.ndarray, prompt: str) -> str:
        setup = f"{self.config.preset}:{self.config.height}x{self.config.width}"
        return avatar_key(image, prompt, setup)

    def condition(
        self,
        image: np.ndarray,
        prompt: str | None = None,
        assets: AvatarAssets | None = None,
    ) -> AvatarConditioning:
        """The avatar's conditioning, from the device cache, ``assets`` (what
        ``conditioning_assets`` made of it before), the disk cache, or computed now.

        ``image`` is ``[H, W, 3]`` uint8 RGB of any size (resized and centre-cropped).
        """
        return finish(self.condition_steps(image, prompt, assets))

    def condition_steps(
        self,
        image: np.ndarray,
        prompt: str | None = None,
        assets: AvatarAssets | None = None,
    ) -> ConditioningSteps:
        """``condition`` in short steps of device work (see ``ConditioningSteps``): none
        when the avatar is cached or ``assets`` are given, else CLIP, T5 and one step per
        causal VAE chunk. The result is in the device cache afterwards."""
        prompt = prompt or self.config.prompt
        key = self._avatar_key(image, prompt)
        cached = self.avatars.get(key)
        if cached is not None:
            return cached
        if assets is not None:
            conditioning = conditioning_from_assets(assets, self.device, self.dtype)
            self._check_shapes(conditioning)
        else:
            stored = self._load_cached(key)
            if stored is None:
                conditioning = yield from self._conditioning_steps(image, prompt)
                self._store_cached(key, conditioning)
            else:
                conditioning = stored
        self.avatars.put(key, conditioning)
        return conditioning

    def _check_shapes(self, conditioning: AvatarConditioning) -> None:
        cfg = self.config
        expected = (cfg.latent_frames, cfg.latent_height, cfg.latent_width)
        if tuple(conditioning.y.shape[2:]) != expected:
            raise ValueError(
                f"the avatar's stored conditioning is for latents {tuple(conditioning.y.shape[2:])}"
                f", this engine makes {expected}: it was prepared for another size; prepare the "
                "avatar again"
            )

    @torch.no_grad()
    def _conditioning_steps(self, image: np.ndarray, prompt: str) -> ConditioningSteps:
        cfg = self.config
        started = time.perf_counter()
        frames = cfg.audio.chunk_frames  # y: the image, then chunk_frames - 1 zero frames
        total = 2 + self.vae.encode_chunk_count(frames) + self.vae.encode_chunk_count(1)
        done = 0

        def step() -> float:
            nonlocal done
            done += 1
            return done / (total + 1)  # the caller's hand-over of the result is the last step

        def encode(video: torch.Tensor) -> Generator[float, None, torch.Tensor]:
            return relay(self.vae.encode_steps(video), lambda _done: step())

        # 1. reference image: resize to cover, centre-crop, scale to [-1, 1]; its CLIP features
        pixels = resize_and_centercrop(PIL.Image.fromarray(image), (cfg.height, cfg.width))
        reference = to_model_range(pixels).to(self.device, self.dtype)  # [1, 3, 1, H, W]
        clip_fea = self.encoders.encode_image(reference).to(self.device, self.dtype)
        yield step()
        # 2. the prompt's T5 embedding (cached by prompt)
        context = self._prompts.get(prompt)
        if context is None:
            context = self.encoders.encode_prompt(prompt)[None].to(self.device, self.dtype)
            self._prompts.put(prompt, context)
        yield step()
        # 3. y: VAE latents of the image followed by zero frames, behind the first-frame mask
        zeros = torch.zeros(
            1, 3, frames - 1, cfg.height, cfg.width, device=self.device, dtype=self.dtype
        )
        latents = yield from encode(torch.cat([reference, zeros], dim=2))  # [1, z, T_lat, h, w]
        mask = first_frame_mask(cfg.latent_frames, cfg.latent_height, cfg.latent_width)
        y = torch.cat([mask.to(latents), latents], dim=1).to(self.dtype)  # [1, 4 + z, T_lat, h, w]
        # 4. the first chunk's motion latent: the image alone
        first_motion = (yield from encode(reference))[0]  # [z, 1, h, w]
        logger.info("avatar conditioning computed in %.2f s", time.perf_counter() - started)
        return AvatarConditioning(context, clip_fea, y, first_motion, reference)

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"avatar-{key}.pt"

    def _load_cached(self, key: str) -> AvatarConditioning | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
            conditioning = AvatarConditioning(**tensors).to(self.device)
        except Exception:  # a stale or corrupt cache entry is recomputed, never fatal
            logger.warning("ignoring unreadable avatar cache entry %s", path, exc_info=True)
            return None
        logger.info("avatar conditioning read from %s", path)
        return conditioning

    def _store_cached(self, key: str, conditioning: AvatarConditioning) -> None:
        path = self._cache_path(key)
        if path is None or not self.hands_back_frames:  # one writer per group
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = conditioning.to("cpu")
        tmp = path.with_suffix(".tmp")
        torch.save({name: getattr(cpu, name) for name in cpu.__dataclass_fields__}, tmp)
        tmp.replace(path)

    # -- per session ----------------------------------------------------------------------

    def prepare(
        self,
        image: np.ndarray,
        prompt: str | None = None,
        seed: int | None = None,
        assets: AvatarAssets | None = None,
    ) -> StreamState:
        """A new stream for an avatar: conditioning (cached, or from ``assets``), silent
        ring, seeded noise."""
        conditioning = self.condition(image, prompt, assets)
        noise = torch.Generator(device=self.device)
        noise.manual_seed(self.config.seed if seed is None else seed)
        return StreamState(
            conditioning=conditioning,
            motion=conditioning.first_motion.clone(),
            ring=AudioRing(self.config.audio.window_samples),
            noise=noise,
        )

    @torch.no_grad()
    def reseed(self, state: StreamState, frames: np.ndarray, silent_samples: int) -> None:
        """Continue ``state`` from ``frames`` after ``silent_samples`` of silence.

        ``frames`` is ``[motion_frames, H, W, 3]`` uint8 RGB at the generated size: the
        last frames the viewer saw (a session's idle loop played while the engine made
        nothing for it). Their VAE encode becomes the motion latents, exactly as a chunk's
        own last frames are re-encoded in ``generate_chunk``; the silence that played goes
        into the audio ring, so the next chunk's audio features see what was heard.
        """
        cfg = self.config
        expected = (cfg.audio.motion_frames, cfg.height, cfg.width, 3)
        if frames.shape != expected:
            raise ValueError(f"re-seed frames must be {list(expected)} uint8, got {frames.shape}")
        # 1. uint8 RGB -> [-1, 1] video, the inverse of frames_to_uint8
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)  # [M, H, W, 3]
        video = pixels.permute(3, 0, 1, 2)[None].float() / 255.0 * 2.0 - 1.0  # [1, 3, M, H, W]
        # 2. the motion latents the next chunk starts from
        state.motion = self.codec.encode(video.to(self.dtype))[0]  # [z, M', h, w]
        # 3. the silence that played, as the ring's newest samples
        heard = min(silent_samples, state.ring.capacity)
        state.ring.push(np.zeros(heard, dtype=np.float32))

    @torch.no_grad()
    def step(
        self,
        state: StreamState,
        audio: np.ndarray,
        output_size: tuple[int, int] | None = None,
    ) -> ChunkOutput:
        """One chunk: 17,920 new samples (float32, 16 kHz) -> 28 new frames; advances state.

        ``output_size`` ``(height, width)``: the frames are resized to it on the device before
        the copy to the host (``None``: the generated size).
        """
        timer = stage_timer(self.device)
        timer.start()
        # 1. audio features of the 8 s ring window, for the chunk's 33 frames
        state.ring.push(audio)
        features = self.audio_encoder.chunk_features(state.ring.window())  # [1, 33, 5, L, C]
        timer.mark("audio_s")

        def draw(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.randn(shape, generator=state.noise, device=self.device, dtype=dtype)

        # 2. sampling, decode, colour correction and motion re-encode
        video, state.motion = self.generate_chunk(
            state.conditioning, state.motion, features, draw, timer
        )
        # 3. the new frames at the output size as uint8 on the host (the copy waits for the
        #    chunk's GPU work); in a group only rank 0 hands frames back
        if self.hands_back_frames:
            video = resize_video(video, output_size)  # [3, 28, H_out, W_out]
            frames = frames_to_uint8(video).contiguous().cpu().numpy()  # [28, H_out, W_out, 3]
        else:
            height, width = output_size or video.shape[2:]
            frames = np.zeros((0, height, width, video.shape[0]), dtype=np.uint8)
        timer.mark("to_host_s")
        state.chunk_index += 1
        return ChunkOutput(frames=frames, timings=timer.read())

    def generate_chunk(
        self,
        conditioning: AvatarConditioning,
        motion: torch.Tensor,
        audio_features: torch.Tensor,
        draw: NoiseSource,
        timer: StageTimer | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official chunk: returns (new frames [3, 28, H, W] in [-1, 1], next motion).

        ``motion`` is ``[z, M, h, w]``; ``audio_features`` ``[1, 33, 5, L, C]``; ``draw``
        gives the noise in the official order (initial latent, then one per step). ``timer``
        (started by the caller) gets a mark at the end of every stage.
        """
        cfg = self.config
        if timer is None:
            timer = stage_timer(self.device)
            timer.start()
        latent_shape = (cfg.vae.z_dim, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
        # 1. start from noise with the motion latents in front
        latent = sampler.overwrite_motion(draw(latent_shape, self.dtype), motion)  # [z, T, h, w]
        features = audio_features.to(self.device, self.dtype)
        # 2. sampling steps: velocity, x0, re-noise, motion overwrite
        steps = zip(self._timestep_tensors, self._timesteps, self._timesteps[1:])
        for i, (timestep, t, t_next) in enumerate(steps):
            with sdpa_backends(self.attention_backend):
                velocity = self.dit(
                    latent[None].to(self.dtype),
                    timestep,  # [1]
                    conditioning.context,
                    conditioning.clip_fea,
                    conditioning.y,
                    features,
                )[0]  # [z, T, h, w]
            latent = sampler.flow_step(latent, velocity, t, t_next, draw(latent_shape, self.dtype))
            latent = sampler.overwrite_motion(latent, motion)
            timer.mark(f"dit_step{i}_s")
        # 3. decode all 33 frames, match colours to the reference image
        video = self.codec.decode(latent[None].to(self.dtype))  # [1, 3, 33, H, W]
        timer.mark("vae_decode_s")
        if cfg.color_correction > 0:
            video = self.color_correct(video, conditioning.reference, cfg.color_correction)
        timer.mark("color_s")
        # 4. the last motion frames become the next chunk's motion latents
        motion_video = video[:, :, -cfg.audio.motion_frames :].to(self.dtype)  # [1, 3, 5, H, W]
        next_motion = self.codec.encode(motion_video)[0]  # [z, M, h, w]
        timer.mark("motion_encode_s")
        return video[0, :, cfg.audio.motion_frames :], next_motion  # [3, 28, H, W], [z, M, h, w]

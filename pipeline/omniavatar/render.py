"""An OmniAvatar video from a picture and a whole audio clip, segment by segment.

Owns: ``RenderPlan`` (bucket, frames per segment, overlap, audio frames and padding,
segment count, output frames = audio frames + 1: frame 0 is the reconstructed reference)
and ``OmniAvatarRenderer.render``, the official segment loop over a whole clip: the
reference picture -> its bucket -> ``SegmentChain.start``; the whole clip's audio features
once (``ClipFeatures``: the official whole-clip wav2vec2, or the stream's per-segment
windows); per segment its audio window and ``SegmentChain.next`` (the overlap re-encode,
the mask, one noise draw, the denoising loop, the tiled decode); segment 0 yields all its
frames, later ones drop their first ``overlap``; the last is cut at the output length. The
leading silence of the recipe is put before the audio here.

A ``Probe`` sees the intermediate tensors under the goldens' names (``encode0.latent``,
``seg1.lat``...). Knows nothing about files, codecs or progress bars.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from headcast.pipeline.imaging import PIXEL_MAX
from headcast.pipeline.media import SAMPLE_RATE_HZ
from headcast.pipeline.omniavatar.audio import (
    clip_frames,
    padded_frames,
    segment_audio,
    segment_count,
)
from headcast.pipeline.omniavatar.dit import OmniAvatarDiT
from headcast.pipeline.omniavatar.recipe import Recipe
from headcast.pipeline.omniavatar.reference_image import Bucket, choose_bucket, reference_video
from headcast.pipeline.omniavatar.segments import (
    NoiseSource,
    Probe,
    SegmentChain,
    no_probe,
    seeded_noise,
)
from headcast.pipeline.omniavatar.tiled_vae import TiledVAE

logger = logging.getLogger(__name__)

PromptSource = Callable[[Sequence[str]], list[torch.Tensor]]
"""Prompts -> their embeddings, each ``[1, <= text_len, text_dim]`` (rows after the prompt
zero or absent); one call per render, so a text encoder need be resident only meanwhile."""

__all__ = [
    "ClipFeatures",
    "NoiseSource",
    "OmniAvatarRenderer",
    "Probe",
    "RenderPlan",
    "SegmentOutput",
    "frames_to_uint8",
    "seeded_noise",
    "silence_prefixed",
]


class ClipFeatures(Protocol):
    """A whole clip's audio features, one row per video frame (``OmniAudioEncoder``: the
    official whole-clip wav2vec2; ``StreamAudio``: the stream's per-segment windows)."""

    def encode(self, samples: np.ndarray, frames: int) -> torch.Tensor:
        """16 kHz mono samples -> ``[frames, features]`` float32 on the model's device."""
        ...


@dataclass(frozen=True)
class RenderPlan:
    """The shape of one render, fixed by the picture's bucket, the audio length and the recipe."""

    bucket: Bucket
    segment_frames: int
    """L: video frames each segment generates."""
    latent_frames: int
    """T = (L - 1) / 4 + 1."""
    overlap: int
    """Frames each later segment re-encodes from its predecessor (and drops from its output)."""
    overlap_latents: int
    audio_frames: int
    """Frames the (silence-prefixed) audio covers at 25 fps."""
    padded_audio_frames: int
    """``audio_frames`` rounded up to whole segments."""
    segments: int
    output_frames: int
    """Frames of the finished video (``audio_frames + 1``)."""

    @classmethod
    def make(cls, recipe: Recipe, image_hw: tuple[int, int], samples: int) -> RenderPlan:
        """The plan for a ``image_hw`` picture and ``samples`` 16 kHz samples (with silence)."""
        bucket = choose_bucket(image_hw[0], image_hw[1], recipe.buckets)
        frames = recipe.segment_frames(bucket)
        audio = clip_frames(samples)
        return cls(
            bucket=bucket,
            segment_frames=frames,
            latent_frames=recipe.latent_frames(bucket),
            overlap=recipe.overlap,
            overlap_latents=recipe.overlap_latents,
            audio_frames=audio,
            padded_audio_frames=padded_frames(audio, frames, recipe.overlap),
            segments=segment_count(audio, frames, recipe.overlap),
            output_frames=audio + 1,
        )

    def first_output_frame(self, segment: int) -> int:
        """Index in the output video of the first frame ``segment`` adds."""
        if segment == 0:
            return 0
        return self.segment_frames + (segment - 1) * (self.segment_frames - self.overlap)


@dataclass
class SegmentOutput:
    """The frames one segment adds to the video."""

    index: int
    first_frame: int
    """Index of ``frames[0]`` in the output video."""
    frames: torch.Tensor
    """``[n, 3, H, W]`` float32 in [0, 1] (the official ``(decode + 1) / 2``)."""
    seconds: float
    """Wall time of this segment (sampling + decode + the lead encode)."""


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[n, 3, H, W]`` in [0, 1] -> ``[n, H, W, 3]`` uint8 (``255 x``, truncated, as the
    official writer does)."""
    scaled = (frames.float().clamp(0.0, 1.0) * PIXEL_MAX).to(torch.uint8)  # [n, 3, H, W]
    return scaled.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def silence_prefixed(speech: np.ndarray, silence_s: float) -> np.ndarray:
    """``silence_s`` seconds of zeros, then the 16 kHz mono ``speech``: float32 ``[N]``."""
    silence = np.zeros(round(silence_s * SAMPLE_RATE_HZ), dtype=np.float32)
    return np.concatenate([silence, np.asarray(speech, dtype=np.float32)])


class OmniAvatarRenderer:
    """Loaded models + a recipe: renders pictures and clips into frames (no state kept)."""

    def __init__(
        self,
        dit: OmniAvatarDiT,
        vae: TiledVAE,
        audio: ClipFeatures,
        prompts: PromptSource,
        recipe: Recipe,
        *,
        batch_passes: bool = False,
        attention: str = "auto",
    ) -> None:
        self.dit = dit
        self.vae = vae
        self.audio = audio
        self.prompts = prompts
        self.recipe = recipe
        self.options = recipe.sampler_options(batch_passes=batch_passes)
        self.attention = attention
        """SDPA kernel preference while sampling (``pipeline.attention.sdpa_backends``)."""
        self.device = dit.patch_embedding.weight.device

    def plan(self, image_hw: tuple[int, int], speech_samples: int) -> RenderPlan:
        """The plan of a render (the recipe's silence is counted in)."""
        silence = round(self.recipe.silence_s * SAMPLE_RATE_HZ)
        return RenderPlan.make(self.recipe, image_hw, silence + speech_samples)

    @torch.no_grad()
    def render(
        self,
        image: np.ndarray,
        speech: np.ndarray,
        prompt: str,
        *,
        noise: NoiseSource | None = None,
        probe: Probe | None = None,
    ) -> Iterator[SegmentOutput]:
        """Yield the video's frames segment by segment.

        Args:
            image: the reference picture, RGB ``[H, W, 3]`` uint8 (any size).
            speech: 16 kHz mono float32 ``[N]`` (the recipe's silence is prepended here).
            prompt: what the video shows (the negative prompt comes from the recipe).
            noise: the segments' noise (default: the recipe's seed on the DiT's device).
            probe: sees the intermediate tensors.
        """
        recipe, device = self.recipe, self.device
        see = probe or no_probe
        samples = silence_prefixed(speech, recipe.silence_s)
        plan = RenderPlan.make(recipe, image.shape[:2], samples.size)
        noise = noise or seeded_noise(recipe.seed, device, self.dit.dtype)
        logger.info("OmniAvatar render: %s", plan)
        chain = SegmentChain(
            self.dit,
            self.vae,
            self.options,
            overlap=plan.overlap,
            overlap_latents=plan.overlap_latents,
            attention=self.attention,
        )
        # 1. the reference picture: bucket, latent, and y = latent over T + mask
        reference = reference_video(image, recipe.buckets).to(device)  # [1, 3, 1, H, W]
        carry = chain.start(reference, plan.latent_frames, see)
        # 2. prompts and the whole clip's audio features, once
        context, negative = (c.to(device) for c in self.prompts([prompt, recipe.negative_prompt]))
        embeddings = self.audio.encode(samples, plan.padded_audio_frames)  # [F, C] float32
        see("audio.embeddings", embeddings)
        for index in range(plan.segments):
            started = time.perf_counter()
            # 3. this segment's audio, then the segment (lead, mask, denoise, decode)
            window = segment_audio(
                embeddings, index, plan.segment_frames, plan.overlap, carry.window
            )  # [L, C]
            frames = chain.next(
                carry, window, context, negative, noise, see, observe_steps=probe is not None
            )  # [1, 3, L, H, W] in [0, 1]
            # 4. the frames this segment adds, cut at the output length
            first = plan.first_output_frame(index)
            skip = 0 if index == 0 else plan.overlap
            count = min(plan.segment_frames - skip, plan.output_frames - first)
            new = frames[0, :, skip : skip + count].transpose(0, 1)  # [n, 3, H, W]
            yield SegmentOutput(index, first, new, time.perf_counter() - started)

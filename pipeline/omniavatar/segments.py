"""One step of OmniAvatar's segment loop, shared by the offline render and the stream.

Owns ``SegmentCarry`` (what a segment leaves for the next: the reference conditioning ``y``
with its mask, the fixed lead latents, the last ``overlap`` frames to re-encode, the audio
window, the segment count) and ``SegmentChain``: ``start`` encodes the reference picture
into the first lead latent and ``y`` (the latent repeated over T, plus the mask: 0 on latent
frame 0), ``next`` samples one segment as the official loop does it: from the second
segment on, the previous segment's last ``overlap`` frames are VAE-encoded as the fixed
lead latents and the mask is 0 on those latent frames (the image channels of ``y`` stay
the reference's); ``lat`` is the lead padded with zeros; one noise draw; the denoising loop
(``denoise.SegmentRun``); the tiled decode. ``pipeline.omniavatar.render`` loops it over a
whole clip, ``pipeline.omniavatar.stream_engine`` once per 1.12 s chunk.

A ``Probe`` sees the intermediate tensors under the goldens' names (``encode0.latent``,
``seg1.lat``...). Knows nothing about audio files, prompts' text, frames on the host or
sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from headcast.pipeline.attention import sdpa_backends
from headcast.pipeline.omniavatar.audio import FIRST_FIXED_FRAMES
from headcast.pipeline.omniavatar.denoise import (
    SamplerOptions,
    SegmentInputs,
    SegmentRun,
    StepObserver,
    StepResult,
)
from headcast.pipeline.omniavatar.dit import OmniAvatarDiT
from headcast.pipeline.omniavatar.tiled_vae import TiledVAE

NoiseSource = Callable[[int, tuple[int, ...]], torch.Tensor]
"""(segment index, latent shape) -> that segment's starting noise."""

Probe = Callable[[str, torch.Tensor], None]
"""Sees intermediate tensors by name (the goldens' names)."""


def no_probe(_name: str, _value: torch.Tensor) -> None:
    """A probe that looks at nothing."""


def seeded_noise(seed: int, device: torch.device, dtype: torch.dtype) -> NoiseSource:
    """One generator for a whole render (or stream), one draw per segment in ``dtype`` (the
    official ``randn_like`` of the bf16 latents on the GPU), returned as float32."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def draw(_segment: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype).float()

    return draw


def step_probe(see: Probe, segment: int) -> StepObserver:
    """A step observer that shows each step's tensors to ``see`` under the goldens' names."""

    def observe(step: int, latents: torch.Tensor, result: StepResult) -> None:
        prefix = f"seg{segment}.step{step}"
        see(f"{prefix}.x_in", latents)
        for kind, velocity in result.velocities.items():
            see(f"{prefix}.v_{kind.value}", velocity)
        see(f"{prefix}.v_guided", result.guided)
        see(f"{prefix}.x_out", result.latents)

    return observe


@dataclass
class SegmentCarry:
    """What one segment leaves for the next (one render's, or one stream session's)."""

    y: torch.Tensor
    """Reference latent repeated over T plus the mask ``[1, 17, T, h, w]``."""
    lead: torch.Tensor
    """The first segment's fixed lead latent ``[1, 16, 1, h, w]`` (the reference's)."""
    index: int = 0
    """Segments sampled so far (the next segment's index)."""
    tail: torch.Tensor | None = None
    """The last ``overlap`` frames of the previous segment ``[1, 3, overlap, H, W]`` in
    [-1, 1] (re-encoded as the next segment's lead); None before the first segment."""
    window: torch.Tensor | None = None
    """The previous segment's audio window ``[L, C]`` (its last ``overlap`` rows start the
    next window); None before the first segment."""


def carry_from_reference(lead: torch.Tensor, latent_frames: int) -> SegmentCarry:
    """The carry before the first segment from the reference picture's latent ``lead``
    ``[1, 16, 1, h, w]``: ``y`` is it repeated over T = ``latent_frames`` plus the mask (0 on
    latent frame 0: the picture itself is the first segment's fixed frame)."""
    mask = torch.ones_like(lead[:, :1]).repeat(1, 1, latent_frames, 1, 1)  # [1, 1, T, h, w]
    mask[:, :, :FIRST_FIXED_FRAMES] = 0
    y = torch.cat([lead.repeat(1, 1, latent_frames, 1, 1), mask], dim=1)  # [1, 17, T, h, w]
    return SegmentCarry(y=y, lead=lead)


class SegmentChain:
    """Loaded DiT and VAE + sampling options + the overlap: samples segment after segment.

    Stateless itself (every session's state is its ``SegmentCarry``), so one chain serves
    every render and stream on its device.
    """

    def __init__(
        self,
        dit: OmniAvatarDiT,
        vae: TiledVAE,
        options: SamplerOptions,
        *,
        overlap: int,
        overlap_latents: int,
        attention: str = "auto",
    ) -> None:
        self.dit = dit
        self.vae = vae
        self.options = options
        self.overlap = overlap
        """Frames each later segment re-encodes from its predecessor."""
        self.overlap_latents = overlap_latents
        """Latent frames the overlap encodes to (the fixed lead of a later segment)."""
        self.attention = attention
        """SDPA kernel preference while sampling (``pipeline.attention.sdpa_backends``)."""

    @torch.no_grad()
    def start(
        self, reference: torch.Tensor, latent_frames: int, see: Probe = no_probe
    ) -> SegmentCarry:
        """The carry before the first segment, from the one-frame reference video
        ``[1, 3, 1, H, W]`` in [-1, 1] at the bucket size and T = ``latent_frames``."""
        see("encode0.video", reference)
        lead = self.vae.encode(reference)  # [1, 16, 1, h, w]
        see("encode0.latent", lead)
        return carry_from_reference(lead, latent_frames)

    @torch.no_grad()
    def next(
        self,
        carry: SegmentCarry,
        window: torch.Tensor,
        context: torch.Tensor,
        negative: torch.Tensor,
        noise: NoiseSource,
        see: Probe = no_probe,
        *,
        observe_steps: bool = False,
    ) -> torch.Tensor:
        """Sample segment ``carry.index`` on its audio ``window`` ``[L, C]``; advance ``carry``.

        Returns the segment's frames ``[1, 3, L, H, W]`` float32 in [0, 1] (the official
        ``(decode + 1) / 2``); the caller keeps the ones it adds to its video.
        """
        index = carry.index
        y = carry.y
        frames_t = y.shape[2]
        # 1. this segment's fixed lead latents and mask
        lead = carry.lead
        if carry.tail is not None:
            see(f"encode{index}.video", carry.tail)
            lead = self.vae.encode(carry.tail)  # [1, 16, overlap_latents, h, w]
            see(f"encode{index}.latent", lead)
            y[:, -1:, : self.overlap_latents] = 0
        fixed = lead.shape[2]
        lat = torch.cat(
            [lead, lead.new_zeros(*lead.shape[:2], frames_t - fixed, *lead.shape[3:])], dim=2
        )  # [1, 16, T, h, w]
        audio = window[None]  # [1, L, C]
        for name, value in (("lat", lat), ("y", y), ("audio_emb", audio)):
            see(f"seg{index}.{name}", value)
        # 2. denoise, decode
        inputs = SegmentInputs(
            lat, fixed, y, audio, context, negative, noise(index, tuple(lat.shape))
        )
        with sdpa_backends(self.attention):
            run = SegmentRun(self.dit, self.options, inputs)
            observer = step_probe(see, index) if observe_steps else None
            latents = run.run(observer)  # [1, 16, T, h, w]
        see(f"seg{index}.latents", latents)
        frames = (self.vae.decode(latents) + 1) / 2  # [1, 3, L, H, W] in [0, 1]
        see(f"seg{index}.frames", frames.transpose(1, 2))
        # 3. what the next segment takes over
        carry.tail = (frames[:, :, -self.overlap :].clamp(0, 1) * 2 - 1).contiguous()
        carry.window = window
        carry.index = index + 1
        return frames

"""One OmniAvatar segment's denoising loop (the official ``log_video`` without its decode).

Owns: ``SegmentInputs`` (fixed latents and how many lead frames they pin, the reference
conditioning ``y``, the segment's audio, both prompts, the noise), ``SamplerOptions``
(steps, shift, guidance, TeaCache threshold, batched passes) and ``SegmentRun``: per step,
pin the fixed frames, evaluate the guidance passes (one batched forward, or one forward
per pass as the official code does), mix them, take the Euler step; after the last step
pin the fixed frames again. The prompt and audio conditioning is embedded once per
segment; the latent embedding once per step for all passes. TeaCache skips the block
stack on the steps its schedule names, per pass, reusing the residual of the last computed
step; passes without a cache run alone on those steps.

``SegmentRun.step`` takes the step's input latents, so a test can drive every step from
recorded inputs (teacher forcing). Knows nothing about the VAE, audio files or frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from headcast.pipeline.omniavatar.dit import Conditions, Embedded, OmniAvatarDiT
from headcast.pipeline.omniavatar.guidance import Guidance, Pass
from headcast.pipeline.omniavatar.schedule import (
    euler_step,
    flow_sigmas,
    flow_timesteps,
    next_sigmas,
)
from headcast.pipeline.omniavatar.teacache import (
    TeaCacheSchedule,
    passes_with_cache,
    teacache_schedule,
)
from headcast.pipeline.sampler import DEFAULT_SHIFT


@dataclass(frozen=True)
class SamplerOptions:
    """How a segment is sampled (the official defaults)."""

    steps: int = 50
    """Euler steps per segment (official ``num_steps``)."""
    guidance: Guidance = Guidance()
    """Prompt / audio guidance scales."""
    teacache: float = 0.0
    """TeaCache threshold (official ``tea_cache_l1_thresh``; 0 = off)."""
    shift: float = DEFAULT_SHIFT
    """Timestep shift of the FlowMatch schedule."""
    batch_passes: bool = False
    """Evaluate the guidance passes as one batch (same result, fewer, larger kernels)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be at least 1")
        if self.teacache < 0:
            raise ValueError(f"teacache={self.teacache} must be 0 (off) or positive")
        if self.shift <= 0:
            raise ValueError(f"shift={self.shift} must be positive")


@dataclass
class SegmentInputs:
    """What one segment is sampled from (batch 1)."""

    lat: torch.Tensor
    """Latents ``[1, 16, T, h, w]`` whose first ``fixed`` frames are pinned every step."""
    fixed: int
    """Lead latent frames taken from ``lat`` (1 in the first segment, overlap after)."""
    y: torch.Tensor
    """Reference latent repeated over T plus the mask, ``[1, 17, T, h, w]``."""
    audio: torch.Tensor
    """The segment's per-video-frame audio features ``[1, 4T - 3, C]``."""
    context: torch.Tensor
    """Prompt embedding ``[1, <= text_len, text_dim]``."""
    negative_context: torch.Tensor
    """Negative prompt embedding ``[1, <= text_len, text_dim]``."""
    noise: torch.Tensor
    """Starting noise ``[1, 16, T, h, w]``."""


@dataclass
class StepResult:
    """One step: each pass's velocity, the guided velocity and the updated latents."""

    velocities: dict[Pass, torch.Tensor]
    guided: torch.Tensor
    latents: torch.Tensor


StepObserver = Callable[[int, torch.Tensor, StepResult], None]
"""Called after each step with (index, input latents, result): tests and recorders."""


class SegmentRun:
    """The state of one segment's sampling: conditioning, schedule, TeaCache residuals."""

    def __init__(self, dit: OmniAvatarDiT, options: SamplerOptions, inputs: SegmentInputs) -> None:
        self.dit = dit
        self.options = options
        self.inputs = inputs
        self.passes = options.guidance.passes
        device = inputs.lat.device
        self.sigmas = flow_sigmas(options.steps, options.shift).to(device)  # [steps]
        self.targets = next_sigmas(self.sigmas)  # [steps]
        self.timesteps = flow_timesteps(self.sigmas)  # [steps]
        self._sigma_values = self.sigmas.tolist()
        self._target_values = self.targets.tolist()
        # 1. prompt and audio of every pass, embedded once for the segment
        zero_audio = torch.zeros_like(inputs.audio)
        self.conditions = Conditions.cat(
            [
                dit.conditions(
                    inputs.context if p.positive_prompt else inputs.negative_context,
                    inputs.audio if p.with_audio else zero_audio,
                )
                for p in self.passes
            ]
        )  # batch = passes
        # 2. TeaCache: decided from the timesteps alone
        _, t_mods = dit.time_modulation(self.timesteps)  # [steps, 6, dim]
        self.schedule = (
            teacache_schedule(t_mods, options.teacache)
            if options.teacache > 0
            else TeaCacheSchedule.never(options.steps)
        )
        self.cached = passes_with_cache(self.passes)
        self._residuals: dict[Pass, torch.Tensor] = {}

    def pin(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents`` with its first ``fixed`` frames replaced by ``lat``'s (in place)."""
        fixed = self.inputs.fixed
        latents[:, :, :fixed] = self.inputs.lat[:, :, :fixed]
        return latents

    def _hidden(self, embedded: Embedded, rows: list[int], skip: bool) -> torch.Tensor:
        """Hidden states of the passes ``rows`` (a batch in that order); skipped cached
        passes reuse their residual, the rest run the blocks (alone, as one batch)."""
        batch = embedded.expand(len(rows))
        reuse = [i for i, row in enumerate(rows) if skip and self.passes[row] in self.cached]
        compute = [i for i in range(len(rows)) if i not in reuse]
        pieces: dict[int, torch.Tensor] = {}
        if compute:
            part = batch if len(compute) == len(rows) else batch.select(compute)
            hidden = self.dit.run_blocks(part, self.conditions.select([rows[i] for i in compute]))
            for position, i in enumerate(compute):
                pieces[i] = hidden[position : position + 1]
                if self.passes[rows[i]] in self.cached and self.options.teacache > 0:
                    self._residuals[self.passes[rows[i]]] = pieces[i] - batch.tokens[i : i + 1]
        for i in reuse:
            pieces[i] = batch.tokens[i : i + 1] + self._residuals[self.passes[rows[i]]]
        return torch.cat([pieces[i] for i in range(len(rows))])  # [len(rows), L, dim]

    def velocities(self, index: int, latents: torch.Tensor) -> dict[Pass, torch.Tensor]:
        """Each pass's velocity at step ``index`` for pinned ``latents``."""
        t = self.timesteps[index : index + 1]  # [1]
        embedded = self.dit.embed(latents, t, self.inputs.y)  # batch 1, shared by the passes
        skip = self.schedule.skip[index]
        groups = (
            [list(range(len(self.passes)))]
            if self.options.batch_passes
            else [[i] for i in range(len(self.passes))]
        )
        out: dict[Pass, torch.Tensor] = {}
        for rows in groups:
            hidden = self._hidden(embedded, rows, skip)  # [len(rows), L, dim]
            velocity = self.dit.project(
                hidden, embedded.expand(len(rows))
            )  # [len(rows), 16, T, h, w]
            for position, row in enumerate(rows):
                out[self.passes[row]] = velocity[position : position + 1]
        return out

    def step(self, index: int, latents: torch.Tensor) -> StepResult:
        """Step ``index`` from ``latents`` (pinned here): velocities, mix, Euler update."""
        latents = self.pin(latents.clone())
        velocities = self.velocities(index, latents)
        guided = self.options.guidance.combine(velocities)  # float32
        updated = euler_step(
            latents.float(), guided, self._sigma_values[index], self._target_values[index]
        )
        return StepResult(velocities, guided, updated)

    def run(self, observer: StepObserver | None = None) -> torch.Tensor:
        """All steps from the noise; the final latents ``[1, 16, T, h, w]`` float32, pinned."""
        latents = self.inputs.noise.float()
        for index in range(self.options.steps):
            pinned = self.pin(latents.clone())
            result = self.step(index, pinned)
            if observer is not None:
                observer(index, pinned, result)
            latents = result.latents
        return self.pin(latents)

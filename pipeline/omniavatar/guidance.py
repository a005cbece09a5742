"""Classifier-free guidance of OmniAvatar: which DiT passes a step needs and their mix.

Owns: the passes (``cond``: prompt + audio; ``uncond_audio``: prompt, zero audio;
``uncond``: negative prompt, zero audio), which of them a ``(guidance, audio_guidance)``
pair needs (guidance 1: ``cond`` only; audio guidance unset or equal: two passes,
``v = v_u + g (v_c - v_u)``; otherwise three, ``v = v_u + g (v_t - v_u) + a (v_c - v_t)``)
and the mix itself, computed in float32. Knows nothing about the DiT or batching.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import torch


class Pass(str, Enum):
    """One DiT evaluation of a guided step."""

    COND = "cond"
    """Prompt and audio."""
    UNCOND_AUDIO = "uncond_audio"
    """Prompt, zero audio (three-pass guidance only)."""
    UNCOND = "uncond"
    """Negative prompt, zero audio."""

    @property
    def with_audio(self) -> bool:
        """True when the pass sees the real audio (otherwise zeros)."""
        return self is Pass.COND

    @property
    def positive_prompt(self) -> bool:
        """True when the pass sees the prompt (otherwise the negative prompt)."""
        return self is not Pass.UNCOND


NO_GUIDANCE = 1.0
"""A guidance scale of 1 turns guidance off (one pass)."""


@dataclass(frozen=True)
class Guidance:
    """Guidance scales: ``scale`` for the prompt (and the audio when ``audio_scale`` is None)."""

    scale: float = 4.5
    """Prompt guidance (official ``guidance_scale``)."""
    audio_scale: float | None = None
    """Audio guidance (official ``audio_scale``); None: the same as ``scale``."""

    @property
    def effective_audio_scale(self) -> float:
        """The audio scale in use (``scale`` when unset)."""
        return self.scale if self.audio_scale is None else self.audio_scale

    @property
    def passes(self) -> tuple[Pass, ...]:
        """The passes a step runs, in the official order."""
        if self.scale == NO_GUIDANCE:
            return (Pass.COND,)
        if self.effective_audio_scale == self.scale:
            return (Pass.COND, Pass.UNCOND)
        return (Pass.COND, Pass.UNCOND_AUDIO, Pass.UNCOND)

    def combine(self, velocities: Mapping[Pass, torch.Tensor]) -> torch.Tensor:
        """The guided velocity (float32) from each pass's velocity."""
        cond = velocities[Pass.COND].float()
        passes = self.passes
        if len(passes) == 1:
            return cond
        uncond = velocities[Pass.UNCOND].float()
        if len(passes) == 2:
            return uncond + self.scale * (cond - uncond)
        text = velocities[Pass.UNCOND_AUDIO].float()
        return uncond + self.scale * (text - uncond) + self.effective_audio_scale * (cond - text)

"""The FlashTalk pipeline's configuration: one frozen dataclass and its presets.

Owns: ``PipelineConfig`` (model-part configs plus resolution, frames, steps, shift, seed and
colour correction) and the named presets ``flashtalk-14b`` (the official sizes) and
``tiny`` (random-weight models of the goldens' widths, consistent end to end, for tests
and CPU smoke runs). ``validate()`` names every bad value. Knows nothing about devices,
files or sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from headcast.pipeline.audio import TINY_WAV2VEC2_CONFIG, AudioConfig
from headcast.pipeline.dit import CLIP_EMBED_DIM, CLIP_IMAGE_TOKENS, DiTConfig
from headcast.pipeline.image import CLIPVisionConfig
from headcast.pipeline.media import DEFAULT_HEIGHT, DEFAULT_WIDTH
from headcast.pipeline.sampler import DEFAULT_SHIFT
from headcast.pipeline.text import DEFAULT_PROMPT, T5Config
from headcast.pipeline.vae import VAEConfig

DEFAULT_SEED = 9999
"""The official ``base_seed``."""

DEFAULT_STEPS = 4
"""Sampling steps per chunk (4 or 2 in the official recipe)."""

DEFAULT_COLOR_CORRECTION = 1.0
"""Strength of the Lab colour match of decoded frames to the reference image."""

SIZE_MULTIPLE_PX = 16
"""Height and width must be multiples of this (VAE stride 8 x patch 2)."""

TINY_HEIGHT = 64
"""Generated frame height of the ``tiny`` preset, in pixels."""

TINY_WIDTH = 32
"""Generated frame width of the ``tiny`` preset, in pixels."""


class ConfigError(ValueError):
    """A pipeline configuration value is out of range or inconsistent."""


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the generator needs to know, apart from where the weights are."""

    preset: str
    """Name of the preset this config came from (for logs and cache keys)."""

    dit: DiTConfig
    """The diffusion transformer."""

    vae: VAEConfig
    """The causal video VAE."""

    t5: T5Config
    """The umt5 text encoder (used once per avatar)."""

    clip: CLIPVisionConfig
    """The CLIP visual tower (used once per avatar)."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    """Audio timing: 8 s ring, 33-frame chunks with 5 motion frames, 5-frame windows."""

    wav2vec: dict[str, Any] | None = None
    """A transformers ``Wav2Vec2Config`` dict for random-weight presets; None = load from disk."""

    height: int = DEFAULT_HEIGHT
    """Generated frame height in pixels (multiple of 16)."""

    width: int = DEFAULT_WIDTH
    """Generated frame width in pixels (multiple of 16)."""

    steps: int = DEFAULT_STEPS
    """Sampling steps per chunk."""

    shift: float = DEFAULT_SHIFT
    """Timestep shift of the schedule."""

    seed: int = DEFAULT_SEED
    """Seed of a session's noise generator (one generator for the whole stream)."""

    color_correction: float = DEFAULT_COLOR_CORRECTION
    """Colour-match strength in [0, 1]; 0 turns it off."""

    prompt: str = DEFAULT_PROMPT
    """Default text prompt for avatars that bring none."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def latent_height(self) -> int:
        """Latent rows (height / 8)."""
        return self.height // self.vae.spatial_stride

    @property
    def latent_width(self) -> int:
        """Latent columns (width / 8)."""
        return self.width // self.vae.spatial_stride

    @property
    def latent_frames(self) -> int:
        """Latent frames per chunk (33 frames -> 9)."""
        return (self.audio.chunk_frames - 1) // self.vae.temporal_stride + 1

    def validate(self) -> None:
        """Raise ConfigError naming every bad or inconsistent value."""
        problems: list[str] = []
        for name in ("height", "width"):
            value = getattr(self, name)
            if value <= 0 or value % SIZE_MULTIPLE_PX:
                problems.append(f"{name}={value} must be a positive multiple of {SIZE_MULTIPLE_PX}")
        if self.steps < 1:
            problems.append(f"steps={self.steps} must be at least 1")
        if self.shift <= 0:
            problems.append(f"shift={self.shift} must be positive")
        if not 0.0 <= self.color_correction <= 1.0:
            problems.append(f"color_correction={self.color_correction} must be in [0, 1]")
        stride = self.vae.temporal_stride
        for name in ("chunk_frames", "motion_frames"):
            frames = getattr(self.audio, name)
            if (frames - 1) % stride:
                problems.append(f"audio.{name}={frames} must be 1 + a multiple of {stride}")
        if self.dit.audio_window != self.audio.audio_window:
            problems.append(
                f"dit.audio_window={self.dit.audio_window} != audio.audio_window="
                f"{self.audio.audio_window}"
            )
        if self.dit.vae_scale != stride:
            problems.append(f"dit.vae_scale={self.dit.vae_scale} != VAE temporal stride {stride}")
        if self.dit.text_dim != self.t5.dim:
            problems.append(f"dit.text_dim={self.dit.text_dim} != t5.dim={self.t5.dim}")
        if self.clip.dim != CLIP_EMBED_DIM or self.clip.num_tokens != CLIP_IMAGE_TOKENS:
            problems.append(
                f"the CLIP tower must give {CLIP_IMAGE_TOKENS} tokens of {CLIP_EMBED_DIM} "
                f"channels, this one gives {self.clip.num_tokens} of {self.clip.dim}"
            )
        if self.dit.in_dim != 2 * self.vae.z_dim + stride:
            problems.append(
                f"dit.in_dim={self.dit.in_dim} != 2 x VAE z_dim + mask channels "
                f"({2 * self.vae.z_dim + stride})"
            )
        if self.wav2vec is not None:
            layers = self.wav2vec.get("num_hidden_layers")
            hidden = self.wav2vec.get("hidden_size")
            if (layers, hidden) != (self.dit.audio_proj_blocks, self.dit.audio_proj_channels):
                problems.append(
                    f"wav2vec2 gives {layers} layers x {hidden} channels, the DiT expects "
                    f"{self.dit.audio_proj_blocks} x {self.dit.audio_proj_channels}"
                )
        if problems:
            raise ConfigError(f"invalid {self.preset} pipeline config: " + "; ".join(problems))

    def with_overrides(self, **values: Any) -> PipelineConfig:
        """A copy with some top-level fields replaced (None values are ignored), validated."""
        unknown = sorted(set(values) - set(self.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown pipeline settings: {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def flashtalk_14b() -> PipelineConfig:
    """The official SoulX-FlashTalk 14B recipe: 768x448, 33/5 frames, 4 steps, shift 5."""
    return PipelineConfig(
        preset="flashtalk-14b",
        dit=DiTConfig.flashtalk_14b(),
        vae=VAEConfig.wan21(),
        t5=T5Config.umt5_xxl(),
        clip=CLIPVisionConfig.vit_h_14(),
    )


def tiny() -> PipelineConfig:
    """Random-weight models with the goldens' DiT/VAE/wav2vec2 widths, consistent end to end.

    The T5 width follows the DiT's ``text_dim`` and the CLIP tower keeps the real token
    count and width (257 x 1280, two thin layers) because the DiT's image projection
    expects them. Frames are 64x32: on CPU, PyTorch runs the thin VAE convolutions on its slow 3-D
    path, so the tiny preset keeps frames small (a few seconds a chunk on 2 cores).
    """
    dit = DiTConfig.tiny()
    clip = CLIPVisionConfig.vit_h_14()
    return PipelineConfig(
        preset="tiny",
        dit=dit,
        vae=VAEConfig.tiny(),
        t5=replace(T5Config.tiny(), dim=dit.text_dim, dim_attn=dit.text_dim),
        clip=replace(clip, num_layers=2, mlp_ratio=1, out_dim=16),
        wav2vec=dict(TINY_WAV2VEC2_CONFIG),
        height=TINY_HEIGHT,
        width=TINY_WIDTH,
    )


PRESETS = {"flashtalk-14b": flashtalk_14b, "tiny": tiny}
"""Preset name -> builder."""


def preset(name: str, **overrides: Any) -> PipelineConfig:
    """The named preset with top-level overrides (e.g. ``height``, ``steps``, ``seed``)."""
    try:
        builder = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    return builder().with_overrides(**overrides)

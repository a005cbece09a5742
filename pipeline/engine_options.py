"""The typed options of each engine headcast ships.

Owns ``PuppetOptions``, ``TinyOptions``, ``FlashTalkOptions`` and ``OmniAvatarOptions``:
frozen, picklable records (they travel to engine-group worker processes) with a docstring
per field (the OmniAvatar options check their values and name the bad ones), and
``EngineOptions``, their union. Free of torch, so the server can build them without loading
any model code.

Knows nothing about how the options are turned into an engine (``pipeline.engine``'s
registry and the engines' factories do that) or where they come from (``server.engines``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from headcast.pipeline.media import DEFAULT_HEIGHT, DEFAULT_WIDTH

Quantize = Literal["none", "fp8", "int8", "int4", "nf4"]
Speedups = Literal["fast", "official"]
Steps = Literal[4, 2]
OmniSizeName = Literal["tiny", "1.3b", "14b"]
OMNI_SIZES: tuple[OmniSizeName, ...] = ("tiny", "1.3b", "14b")
"""The OmniAvatar sizes (``pipeline.omniavatar.config.SIZES``' names)."""
OMNI_QUANTIZE: tuple[Quantize, ...] = ("none", "fp8")
"""DiT precisions the OmniAvatar engine offers (what its offline path was measured with)."""
NO_GUIDANCE = 1.0
"""Guidance scale 1: one DiT pass per step, no guidance."""


@dataclass(frozen=True)
class PuppetOptions:
    """Options of the ``puppet`` engine."""

    height: int = DEFAULT_HEIGHT
    """Output frame height in pixels."""

    width: int = DEFAULT_WIDTH
    """Output frame width in pixels."""


@dataclass(frozen=True)
class TinyOptions:
    """Options of the ``tiny`` engine (the FlashTalk code with tiny random weights)."""

    height: int = DEFAULT_HEIGHT
    """Output frame height in pixels (the preset's frames are resized to it)."""

    width: int = DEFAULT_WIDTH
    """Output frame width in pixels."""

    steps: Steps | None = None
    """Sampling steps per chunk; ``None``: the preset's."""

    seed: int | None = None
    """Seed of the random weights; ``None``: the preset's."""

    cache_dir: Path | None = None
    """Folder of the per-avatar conditioning cache; ``None``: memory only."""

    device: str | None = None
    """Torch device outside an engine group; ``None``: CUDA when present, else the CPU. In a
    group the rank's device is used instead."""


@dataclass(frozen=True)
class FlashTalkOptions:
    """Options of the ``flashtalk`` engine (the official 14B model)."""

    height: int = DEFAULT_HEIGHT
    """Output frame height in pixels."""

    width: int = DEFAULT_WIDTH
    """Output frame width in pixels."""

    steps: Steps | None = None
    """Sampling steps per chunk; ``None``: the preset's 4."""

    seed: int | None = None
    """Sampling seed of the preset; ``None``: the official one."""

    gen_height: int | None = None
    """Height the model generates at; ``None``: ``height`` (frames are resized to it)."""

    gen_width: int | None = None
    """Width the model generates at; ``None``: ``width``."""

    model_dir: Path | None = None
    """FlashTalk checkpoint directory (needed unless ``random_weights``)."""

    wav2vec_dir: Path | None = None
    """wav2vec 2.0 audio-encoder directory (needed unless ``random_weights``)."""

    cache_dir: Path | None = None
    """Folder of the per-avatar conditioning cache; ``None``: memory only."""

    device: str | None = None
    """Torch device outside an engine group; ``None``: CUDA when present. In a group the
    rank's device is used instead."""

    quantize: Quantize = "none"
    """Precision of the DiT's linear layers."""

    attention_fp8: bool = False
    """Self-attention through cuDNN's fp8 kernel (``pipeline.attention_fp8``)."""

    compile: bool = False
    """``torch.compile`` the DiT blocks."""

    speedups: Speedups = "fast"
    """``fast`` (bf16-exact speed-ups) or ``official`` (run as the official code does)."""

    random_weights: bool = False
    """Full-size random weights made on the GPU instead of the checkpoint (speed only)."""


@dataclass(frozen=True)
class OmniAvatarOptions:
    """Options of the ``omniavatar`` engine (OmniAvatar as a streaming engine).

    Each chunk is one 41-frame segment of which 13 frames are carried over from the previous
    one (28 new frames = 1.12 s). Invalid values raise ``ValueError`` naming each of them.
    """

    height: int = DEFAULT_HEIGHT
    """Output frame height in pixels (the generated frames are resized to it)."""

    width: int = DEFAULT_WIDTH
    """Output frame width in pixels."""

    size: OmniSizeName = "1.3b"
    """Model size: ``tiny`` (random tiny weights, CPU, no model folder), ``1.3b`` or ``14b``."""

    steps: int = 4
    """Sampling steps per segment (the official recipe has 50)."""

    guidance: float = NO_GUIDANCE
    """Guidance scale: 1 runs one DiT pass per step (no guidance); above 1, two passes
    (prompt and audio guidance at this scale), batched into one forward."""

    gen_height: int | None = None
    """Height the model generates at (a multiple of 16); ``None``: the size's bucket
    closest to the output's aspect ratio (720x400 portrait for 1.3b/14b)."""

    gen_width: int | None = None
    """Width the model generates at (a multiple of 16); ``None``: see ``gen_height``."""

    seed: int | None = None
    """Seed of the random weights (tiny, ``random_weights``); ``None``: 0."""

    model_dir: Path | None = None
    """The folder holding the size's Wan 2.1 base, OmniAvatar and wav2vec2 folders (the
    official ``pretrained_models``); needed unless ``size`` is tiny or ``random_weights``."""

    wav2vec_dir: Path | None = None
    """wav2vec2-base-960h folder when it is not in ``model_dir``."""

    device: str | None = None
    """Torch device outside an engine group; ``None``: CUDA when present, else the CPU."""

    quantize: Quantize = "none"
    """Precision of the DiT's linear layers: ``none`` (bf16) or ``fp8`` (Hopper)."""

    attention_fp8: bool = False
    """Self-attention through cuDNN's fp8 kernel (``pipeline.attention_fp8``)."""

    compile: bool = False
    """``torch.compile`` the DiT blocks (the warm-up pays the compile time)."""

    speedups: Speedups = "fast"
    """``fast`` (bf16-exact speed-ups) or ``official`` (run as the official code does)."""

    random_weights: bool = False
    """Full-size random weights made on the GPU instead of the model folder (speed only)."""

    tiled_vae: bool = False
    """Run the VAE in the official blended tiles; ``False``: on whole frames, about half the
    VAE time (measured on an H200 at 720x400: decode 0.32 vs 0.93 s per segment, BENCHMARKS.md
    section 7), pixels differ from the tiled result near the tile seams."""

    def __post_init__(self) -> None:
        problems = []
        if self.size not in OMNI_SIZES:
            problems.append(f"size={self.size!r} must be one of {', '.join(OMNI_SIZES)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps={self.steps!r} must be a whole number of at least 1")
        if not self.guidance >= NO_GUIDANCE:
            problems.append(
                f"guidance={self.guidance!r} must be 1 (one pass, no guidance) or more (two "
                "passes, batched)"
            )
        for name in ("height", "width", "gen_height", "gen_width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 16):
                problems.append(f"{name}={value} must be a positive multiple of 16")
        if (self.gen_height is None) != (self.gen_width is None):
            problems.append("gen_height and gen_width must be given together (or neither)")
        if self.quantize not in OMNI_QUANTIZE:
            problems.append(
                f"quantize={self.quantize!r} is not offered by the omniavatar engine; use one "
                f"of {', '.join(OMNI_QUANTIZE)}"
            )
        if self.size != "tiny" and not self.random_weights and self.model_dir is None:
            problems.append(
                f"size={self.size} needs model_dir (the folder holding Wan2.1-T2V-*, "
                "OmniAvatar-* and wav2vec2-base-960h; check it with `headcast doctor --engine "
                f"omniavatar --size {self.size} --model-dir DIR`) or random_weights: true to "
                "time it without weights"
            )
        if problems:
            raise ValueError("invalid omniavatar engine options: " + "; ".join(problems))


EngineOptions = PuppetOptions | TinyOptions | FlashTalkOptions | OmniAvatarOptions
"""The options of any shipped engine."""

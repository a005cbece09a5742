"""The typed options of each engine headcast ships.

Owns ``PuppetOptions``, ``TinyOptions`` and ``FlashTalkOptions``: frozen, picklable records
(they travel to engine-group worker processes) with a docstring per field, and
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

    compile: bool = False
    """``torch.compile`` the DiT blocks."""

    speedups: Speedups = "fast"
    """``fast`` (bf16-exact speed-ups) or ``official`` (run as the official code does)."""

    random_weights: bool = False
    """Full-size random weights made on the GPU instead of the checkpoint (speed only)."""


EngineOptions = PuppetOptions | TinyOptions | FlashTalkOptions
"""The options of any shipped engine."""

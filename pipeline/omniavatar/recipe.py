"""OmniAvatar's sampling recipe: the official defaults and the named fast presets.

Owns: ``Recipe`` (steps, guidance, audio guidance, TeaCache, max tokens, overlap, shift,
seed, resolution buckets, negative prompt, leading silence, tiled VAE),
the frames-per-segment formula (``L = int(max_tokens * 16 * 16 * 4 / h / w)`` rounded to
``4n + 1``), ``RECIPES`` (``official``; ``fast-14b`` and ``fast-1.3b``, each with the trade
it makes), ``validate()`` and the streaming recipe (``stream_recipe``: 41-frame segments
with the official 13-frame overlap, 28 new frames = the 1.12 s FlashTalk chunk, few steps,
the lead silence that makes a stream's chunk k the offline render's segment k). Knows
nothing about models or devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from headcast.pipeline.omniavatar.denoise import SamplerOptions
from headcast.pipeline.omniavatar.guidance import Guidance
from headcast.pipeline.omniavatar.reference_image import Bucket
from headcast.pipeline.sampler import DEFAULT_SHIFT

OFFICIAL_NEGATIVE_PROMPT = (
    "Vivid color tones, background/camera moving quickly, screen switching, subtitles and "
    "special effects, mutation, overexposed, static, blurred details, subtitles, style, work, "
    "painting, image, still, overall grayish, worst quality, low quality, JPEG compression "
    "residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly drawn face, deformed, "
    "disfigured, malformed limbs, fingers merging, motionless image, chaotic background, three "
    "legs, crowded background with many people, walking backward"
)
"""The official configs' negative prompt."""

DEFAULT_PROMPT = "A person is talking to the camera, natural expressions and lip movements."
"""Prompt used when none is given (the official recipe has none: prompts come per line)."""

BUCKETS_480P: tuple[Bucket, ...] = ((400, 720), (720, 720), (720, 400))
"""Official ``image_sizes_720`` (``max_hw: 720``, "480p"): (height, width)."""

BUCKETS_720P: tuple[Bucket, ...] = ((720, 720), (528, 960), (960, 528), (720, 1280), (1280, 720))
"""Official ``image_sizes_1280`` (``max_hw: 1280``)."""

TINY_BUCKETS: tuple[Bucket, ...] = ((16, 32),)
"""The tiny size's one bucket (the goldens use 32 x 48; smaller frames keep the CPU VAE,
PyTorch's slow 3-D convolution path there, at about a second per segment)."""

TINY_MAX_TOKENS = 13
"""25 frames (7 latent frames) per segment at 16 x 32, as the goldens' segments."""

TOKEN_SIDE_PX = 16
"""Pixels per token side (VAE stride 8 x patch 2)."""

FRAMES_PER_LATENT = 4
"""Video frames per latent frame after the first (the VAE's temporal stride)."""

OFFICIAL_SEED = 42
"""``set_seed(42)``: seeds the one noise generator of a run."""


@dataclass(frozen=True)
class Recipe:
    """How a video is sampled; the defaults are the official ``configs/inference.yaml``."""

    steps: int = 50
    """Euler steps per segment."""
    guidance: float = 4.5
    """Prompt guidance (and audio guidance when ``audio_guidance`` is None); 1 = off."""
    audio_guidance: float | None = None
    """Separate audio guidance (three passes per step); None = two passes."""
    teacache: float = 0.0
    """TeaCache threshold; 0 = off (the README suggests 0.05-0.15)."""
    max_tokens: int = 30_000
    """DiT tokens per segment; sets the frames per segment (105 at 400 x 720)."""
    overlap: int = 13
    """Frames each segment re-encodes from the previous one (1 + 4n)."""
    shift: float = DEFAULT_SHIFT
    """FlowMatch timestep shift."""
    seed: int = OFFICIAL_SEED
    """Seed of the noise (one draw per segment)."""
    buckets: tuple[Bucket, ...] = BUCKETS_480P
    """Generation sizes (height, width); the image picks the closest aspect ratio."""
    negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT
    """The prompt the unconditional pass sees."""
    silence_s: float = 0.3
    """Silence put before the audio (the video's frame 0 is the reference image)."""
    tiled_vae: bool = True
    """Encode/decode in blended tiles as the official code does (False: whole frames)."""
    name: str = field(default="official", compare=False)
    trade: str = field(default="the official recipe: best quality, slowest", compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming every bad value."""
        problems = []
        if self.steps < 1:
            problems.append(f"steps={self.steps} must be at least 1")
        if self.guidance <= 0 or (self.audio_guidance is not None and self.audio_guidance <= 0):
            problems.append(
                f"guidance={self.guidance}, audio_guidance={self.audio_guidance} must be positive"
            )
        if self.teacache < 0:
            problems.append(f"teacache={self.teacache} must be 0 (off) or positive")
        if self.max_tokens < 1:
            problems.append(f"max_tokens={self.max_tokens} must be positive")
        if self.overlap < 1 or (self.overlap - 1) % FRAMES_PER_LATENT:
            problems.append(
                f"overlap={self.overlap} must be 1 + a multiple of {FRAMES_PER_LATENT} "
                "(1, 5, 9, 13, ...)"
            )
        if self.silence_s < 0:
            problems.append(f"silence_s={self.silence_s} must not be negative")
        if not self.buckets or any(
            h <= 0 or w <= 0 or h % TOKEN_SIDE_PX or w % TOKEN_SIDE_PX for h, w in self.buckets
        ):
            problems.append(
                f"buckets={self.buckets} must be (height, width) multiples of {TOKEN_SIDE_PX}"
            )
        if not problems:
            for bucket in self.buckets:
                frames = self.segment_frames(bucket)
                if frames <= self.overlap:
                    problems.append(
                        f"max_tokens={self.max_tokens} gives {frames} frames per segment at "
                        f"{bucket[0]}x{bucket[1]}, not more than overlap={self.overlap}: "
                        "raise max_tokens"
                    )
        if problems:
            raise ValueError("invalid OmniAvatar recipe: " + "; ".join(problems))

    def segment_frames(self, bucket: Bucket) -> int:
        """Video frames per segment at ``bucket`` (``4n + 1``)."""
        frames = int(
            self.max_tokens
            * TOKEN_SIDE_PX
            * TOKEN_SIDE_PX
            * FRAMES_PER_LATENT
            / bucket[0]
            / bucket[1]
        )
        if frames % FRAMES_PER_LATENT:
            return frames // FRAMES_PER_LATENT * FRAMES_PER_LATENT + 1
        return frames - (FRAMES_PER_LATENT - 1)

    def latent_frames(self, bucket: Bucket) -> int:
        """Latent frames per segment at ``bucket``."""
        return (self.segment_frames(bucket) - 1) // FRAMES_PER_LATENT + 1

    @property
    def overlap_latents(self) -> int:
        """Latent frames the overlap encodes to."""
        return (self.overlap - 1) // FRAMES_PER_LATENT + 1

    def sampler_options(self, *, batch_passes: bool = False) -> SamplerOptions:
        """The per-segment sampling options (``batch_passes``: a speed option, same result)."""
        return SamplerOptions(
            steps=self.steps,
            guidance=Guidance(self.guidance, self.audio_guidance),
            teacache=self.teacache,
            shift=self.shift,
            batch_passes=batch_passes,
        )

    def with_overrides(self, **values: Any) -> Recipe:
        """A copy with the given fields replaced (None values are ignored), validated."""
        unknown = sorted(set(values) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown OmniAvatar recipe settings: {', '.join(unknown)}")
        return replace(self, **{key: value for key, value in values.items() if value is not None})


OFFICIAL = Recipe()
"""``configs/inference.yaml``: 50 steps, guidance 4.5 (two passes), no TeaCache, 30,000
tokens (105 frames at 400 x 720), overlap 13."""

FAST_14B = Recipe(
    steps=20,
    guidance=3.5,
    teacache=0.14,
    max_tokens=20_000,
    overlap=9,
    name="fast-14b",
    trade=(
        "for the 14B: 20 steps instead of 50 (less fine detail), guidance 3.5 instead of 4.5 "
        "(a little less prompt and lip adherence), TeaCache 0.14 (steps whose timestep "
        "embedding barely changes reuse the previous residual: slight smoothing), 20,000 "
        "tokens per segment instead of 30,000 (69-frame segments at 400x720: more seams), "
        "a 9-frame overlap instead of 13 (less motion carried across a seam) and the VAE on "
        "whole frames instead of the official blended tiles (a third of the VAE time; pixels "
        "differ from the official near the tile seams; 0.2 GiB more peak GPU memory at 400x720)"
    ),
    tiled_vae=False,
)
"""The seed guide's fast 14B configuration."""

FAST_1_3B = Recipe(
    steps=15,
    guidance=3.0,
    teacache=0.14,
    max_tokens=15_000,
    overlap=5,
    name="fast-1.3b",
    trade=(
        "for the 1.3B: 15 steps instead of 50 (softer detail), guidance 3.0 instead of 4.5 "
        "(weaker prompt and lip adherence), TeaCache 0.14 (reused residuals: slight "
        "smoothing), 15,000 tokens per segment (53-frame segments at 400x720: more seams), "
        "a 5-frame overlap (the least motion carried across a seam) and the VAE on whole "
        "frames instead of the official blended tiles (a third of the VAE time; pixels "
        "differ from the official near the tile seams; 1.4 GiB more peak GPU memory at "
        "400x720)"
    ),
    tiled_vae=False,
)
"""The seed guide's fast 1.3B configuration."""

RECIPES = {recipe.name: recipe for recipe in (OFFICIAL, FAST_14B, FAST_1_3B)}
"""Recipe name -> recipe."""

TINY = replace(
    OFFICIAL,
    buckets=TINY_BUCKETS,
    max_tokens=TINY_MAX_TOKENS,
    name="tiny",
    trade="the official recipe at the tiny size's one 16x32 bucket (random weights)",
)
"""The official recipe at the tiny size's bucket (25-frame segments)."""


def recipe(name: str, **overrides: Any) -> Recipe:
    """The named recipe with overrides; ValueError lists the names for an unknown one."""
    try:
        base = RECIPES[name]
    except KeyError:
        raise ValueError(
            f"unknown OmniAvatar recipe {name!r}; choose one of {', '.join(RECIPES)}"
        ) from None
    return base.with_overrides(**overrides)


STREAM_SEGMENT_FRAMES = 41
"""Streaming segment: 41 frames, 13 carried over, 28 new (the 1.12 s FlashTalk chunk)."""

STREAM_OVERLAP = 13
"""Frames a streaming segment carries over (the official overlap)."""

STREAM_LEAD_FRAMES = STREAM_OVERLAP - 1
"""Silent frames before a stream's first audio: the first segment is the reference frame,
these 12 frames and the first chunk's 28, so every chunk is a segment's last 28 frames."""

STREAM_LEAD_S = STREAM_LEAD_FRAMES / 25
"""``STREAM_LEAD_FRAMES`` in seconds at 25 fps (0.48 s: the recipe's ``silence_s``)."""

DEFAULT_STREAM_STEPS = 4
"""Sampling steps per streaming segment."""

TINY_STREAM_BUCKETS: tuple[Bucket, ...] = ((16, 32), (16, 16), (32, 16))
"""The tiny size's streaming buckets (height, width): landscape, square, portrait."""


def max_tokens_for(frames: int, bucket: Bucket) -> int:
    """The smallest ``max_tokens`` whose segment has ``frames`` frames at ``bucket``."""
    tokens = math.ceil(
        frames * bucket[0] * bucket[1] / (TOKEN_SIDE_PX * TOKEN_SIDE_PX * FRAMES_PER_LATENT)
    )
    probe = Recipe(max_tokens=tokens, overlap=1, buckets=(bucket,))
    while probe.segment_frames(bucket) < frames:
        tokens += 1
        probe = replace(probe, max_tokens=tokens)
    return tokens


def stream_recipe(
    bucket: Bucket,
    *,
    steps: int = DEFAULT_STREAM_STEPS,
    guidance: float = 1.0,
    seed: int = OFFICIAL_SEED,
    tiled_vae: bool = False,
) -> Recipe:
    """The streaming recipe at one generation size: 41-frame segments, 13 carried over,
    ``steps`` steps, ``guidance`` 1 (one pass) or > 1 (two passes), no TeaCache, the 0.48 s
    lead silence, the VAE on whole frames unless ``tiled_vae`` (the official blended tiles:
    about three times the VAE time per segment at 720x400). Rendered offline with
    stream-mode audio it gives the stream's frames."""
    passes = "one pass, no guidance" if guidance == 1.0 else f"guidance {guidance}, two passes"
    vae = "the official tiled VAE" if tiled_vae else "whole-frame VAE calls instead of tiles"
    return Recipe(
        steps=steps,
        guidance=guidance,
        teacache=0.0,
        max_tokens=max_tokens_for(STREAM_SEGMENT_FRAMES, bucket),
        overlap=STREAM_OVERLAP,
        seed=seed,
        buckets=(bucket,),
        silence_s=STREAM_LEAD_S,
        tiled_vae=tiled_vae,
        name="stream",
        trade=(
            f"streaming: {STREAM_SEGMENT_FRAMES}-frame segments with {STREAM_OVERLAP} carried "
            f"over (28 new = 1.12 s), {steps} steps instead of 50, {passes}, {vae}"
        ),
    )

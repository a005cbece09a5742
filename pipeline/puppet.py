"""The ``puppet`` engine: a CPU stand-in that animates the avatar image from audio energy.

Owns the puppet's per-session state, the mapping from each 40 ms frame's audio energy to a
mouth opening, the idle motion (head sway, breathing bob, blinks), the "puppet" corner label,
``mouth_open_metric``, which measures the mouth opening back from a (possibly lossy
decoded) frame, and the re-seed: reading the head's position and the mouth back from frames
shown so the next chunk continues from them. No weights and no torch (numpy and PIL only, so a
puppet-only server starts fast); real time on a couple of CPU cores with several sessions. It is a
demo and integration target, not the FlashTalk model, and says so.

Where the face is: the puppet has no landmarks. It assumes ``FaceLayout`` (from
``pipeline.avatar_art``) for every image: a portrait centred horizontally, eyes at 47 % and
the mouth at 62 % of the frame height, mouth 17 % of the width wide. The drawn default avatar
is made to that layout; other pictures get a drawn mouth and eyelids at those positions.

Must not know about threads, queues, asyncio or codecs: the device worker calls it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from headcast.pipeline.avatar_art import (
    DEFAULT_AVATAR_NAME,
    LASH,
    LIPS,
    FaceLayout,
    draw_default_avatar,
)
from headcast.pipeline.avatar_cache import AvatarCache
from headcast.pipeline.engine_api import EngineNotReady
from headcast.pipeline.engine_options import PuppetOptions
from headcast.pipeline.media import (
    CHUNK_FRAMES,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    SAMPLES_PER_FRAME,
    VIDEO_FPS,
    Avatar,
    AvatarAssets,
    Chunk,
    ChunkJob,
    PreparationStep,
    Reseed,
    frame_levels_dbfs,
)

if TYPE_CHECKING:
    from headcast.pipeline.parallel import ParallelGroup

logger = logging.getLogger(__name__)

PUPPET_NAME = "puppet"
PUPPET_DESCRIPTION = "puppet: CPU stand-in driven by audio energy — not the FlashTalk model"
LABEL_TEXT = "puppet"

# -- mouth ------------------------------------------------------------------------------------

SILENT_DBFS = -50.0
"""Frame RMS level (dB re full scale) at or below which the mouth is closed."""
FULL_OPEN_DBFS = -10.0
"""Frame RMS level (dB re full scale) at or above which the mouth is fully open."""
MOUTH_RELEASE_PER_FRAME = 0.35
"""When energy falls, the level keeps this fraction of the previous frame's level (at most).

Opening is immediate (no attack delay); closing decays over about one frame, so the mouth
lags the audio by at most one 40 ms frame and only while closing.
"""
MOUTH_CLOSED_BELOW = 0.02
"""Mouth levels below this (under one pixel of opening at 768 px) count as closed."""
LIP_THICKNESS_Y = 0.008
"""Lip thickness around the opening, as a fraction of the frame height (6 px at 768)."""
CLOSED_MOUTH_WIDTH = 0.82
"""Width of the opening at the smallest level, relative to its width at full level."""
MOUTH_INTERIOR: tuple[int, int, int] = (42, 14, 22)
"""Colour of the open mouth: dark (luma ~23), so it survives lossy video coding."""
DARK_LUMA_MAX = 80.0
"""``mouth_open_metric`` counts pixels with Rec. 601 luma below this (0..255) as mouth."""
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""Rec. 601 luma weights of R, G, B."""

# -- idle motion --------------------------------------------------------------------------------

SWAY_AMPLITUDE_X = 0.007
"""Head sway amplitude as a fraction of the frame width (3 px at 448)."""
SWAY_PERIOD_S = 4.7
BOB_AMPLITUDE_Y = 0.0026
"""Breathing bob amplitude as a fraction of the frame height (2 px at 768)."""
BOB_PERIOD_S = 3.4
HEAD_REGION_SCALE = 1.3
"""The moving head region: the layout's head ellipse scaled by this (covers hair and chin)."""
HEAD_FEATHER_PX = 20
"""Width of the soft edge between the moving head region and the still background."""
BLEND_SHIFT = 8
BLEND_ONE = 1 << BLEND_SHIFT
"""Fixed-point 1.0 of the head blend weights (uint16 arithmetic, no overflow at 255*256)."""
BLINK_CLOSURE = (0.6, 1.0, 1.0, 0.5)
"""Eyelid closure per frame of one blink (4 frames = 160 ms)."""
BLINK_INTERVAL_S = (2.0, 5.5)
"""Range of the random pause between blinks, in seconds."""
FIRST_BLINK_S = (0.4, 2.5)
"""Range of the random delay of a session's first blink, in seconds."""
EYELID_SCALE = 1.2
"""The eyelid covers the layout's eye ellipse scaled by this."""

# -- re-seed ------------------------------------------------------------------------------------

RESEED_SEARCH_S = 30.0
"""How far ahead of the session's idle clock a re-seed looks for the moment whose head
positions match the frames shown, in seconds (sway and bob repeat within it)."""
RESEED_SUBSAMPLE = 4
"""A re-seed compares every 4th pixel of the head region (both axes) with each candidate."""

# -- label and caches -------------------------------------------------------------------------

LABEL_FONT_PX = 13
LABEL_MARGIN_PX = 6
LABEL_PADDING_PX = 3
LABEL_RGBA = (255, 255, 255, 150)
LABEL_BOX_RGBA = (0, 0, 0, 70)
AVATAR_CACHE_SIZE = 4
"""Prepared avatars the engine keeps, keyed by ``Avatar.name`` (as the design's per-avatar
cache is). At 768x448 each is a 1 MB background plus at most 18 MB of shifted head regions."""

BACKGROUND_ASSET = "background"
"""Asset: the prepared background [H, W, 3] uint8 (cropped, closed lips, labelled)."""
LID_COLOURS_ASSET = "lid_colours"
"""Asset: the eyelid colours [2, 3] float32 (the skin under each eye)."""


def mouth_targets(levels_dbfs: np.ndarray) -> np.ndarray:
    """Map frame levels to mouth openings in [0, 1], monotonic (-50 dBFS..-10 dBFS -> 0..1)."""
    span = FULL_OPEN_DBFS - SILENT_DBFS
    return np.clip((levels_dbfs - SILENT_DBFS) / span, 0.0, 1.0).astype(np.float32)


def smooth_mouth(targets: np.ndarray, previous: float) -> np.ndarray:
    """Instant attack, one-frame release: level = max(target, previous * release). [F] -> [F].

    Levels below ``MOUTH_CLOSED_BELOW`` snap to 0, so the mouth rests fully closed."""
    levels = np.empty_like(targets)  # [F]
    level = previous
    for i, target in enumerate(targets.tolist()):
        level = max(target, level * MOUTH_RELEASE_PER_FRAME)
        if level < MOUTH_CLOSED_BELOW:
            level = 0.0
        levels[i] = level
    return levels


def _mouth_metric_box(layout: FaceLayout) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the box ``mouth_open_metric`` inspects."""
    lip = _lip_px(layout)
    half_h = layout.mouth_max_half_height + lip + _bob_px(layout) + 2
    half_w = layout.mouth_half_width + lip + _sway_px(layout) + 2
    top = max(0, layout.mouth_centre_y - half_h)
    left = max(0, layout.centre_x - half_w)
    return (
        top,
        min(layout.height, layout.mouth_centre_y + half_h + 1),
        left,
        min(layout.width, layout.centre_x + half_w + 1),
    )


def mouth_open_metric(frame: np.ndarray, height: int, width: int) -> float:
    """How open the puppet's mouth is in ``frame``: about 0 closed, about 1 fully open.

    Counts dark pixels (luma < ``DARK_LUMA_MAX``) in a box around the layout's mouth position
    and divides by the share a fully open mouth covers. ``height`` x ``width`` is the size the
    engine rendered at; a frame received at another size (a scaling decoder) is measured in
    the proportionally scaled box. ``frame`` is [h, w, 3] uint8 RGB.
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame [H, W, 3], got shape {frame.shape}")
    layout = FaceLayout.for_frame(height, width)
    top, bottom, left, right = _mouth_metric_box(layout)
    scale_y, scale_x = frame.shape[0] / height, frame.shape[1] / width
    box = frame[
        round(top * scale_y) : max(round(bottom * scale_y), round(top * scale_y) + 1),
        round(left * scale_x) : max(round(right * scale_x), round(left * scale_x) + 1),
    ]  # [h, w, 3]
    luma = box.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)  # [h, w]
    dark_share = float(np.mean(luma < DARK_LUMA_MAX))
    open_area = math.pi * layout.mouth_half_width * layout.mouth_max_half_height
    open_share = open_area / ((bottom - top) * (right - left))
    return dark_share / open_share


def _check_rgb(image: np.ndarray, what: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(
            f"{what}: the image must be a non-empty RGB uint8 array [H, W, 3], "
            f"got {image.dtype} {image.shape}; convert it with np.asarray(PIL_image.convert('RGB'))"
        )


def _lip_px(layout: FaceLayout) -> int:
    return max(1, round(LIP_THICKNESS_Y * layout.height))


def _sway_px(layout: FaceLayout) -> int:
    return max(1, round(SWAY_AMPLITUDE_X * layout.width))


def _bob_px(layout: FaceLayout) -> int:
    return max(1, round(BOB_AMPLITUDE_Y * layout.height))


def _soft_ellipse(ys: np.ndarray, xs: np.ndarray, half_h: float, half_w: float) -> np.ndarray:
    """Coverage in [0, 1] of an ellipse centred at 0 with a one-pixel soft edge. [h, w].

    A half-axis under half a pixel draws nothing."""
    if half_h < 0.5 or half_w < 0.5:
        return np.zeros(np.broadcast_shapes(ys.shape, xs.shape), dtype=np.float32)
    radius = np.sqrt((ys / half_h) ** 2 + (xs / half_w) ** 2)  # [h, w]
    return np.clip((1.0 - radius) * min(half_h, half_w) + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class _Prepared:
    """One avatar made ready for a frame size: the labelled background with closed lips,
    the eyelid colours, and the head region blended at each idle offset (filled lazily:
    at most 7 x 5 offsets of about 0.5 MB each at 768x448)."""

    background: np.ndarray  # [H, W, 3] uint8, resized, cropped, lips drawn, labelled
    lid_colours: tuple[np.ndarray, np.ndarray]  # 2 x [3] float32, skin under each eye
    moved_heads: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    """(dy, dx) -> the head region [h, w, 3] uint8 shifted by (dy, dx), edges blended."""


@dataclass
class PuppetState:
    """Per-session state: the prepared avatar, idle-motion clock, blink timer, mouth level."""

    avatar_name: str
    prepared: _Prepared
    rng: np.random.Generator
    sway_phase: float
    bob_phase: float
    next_blink_frame: int
    frame_count: int = 0
    """Frames rendered so far: the idle-motion clock (continuous across interrupts)."""
    mouth_level: float = 0.0
    blink_start: int | None = None
    """Frame at which the current blink began, or None between blinks."""


class PuppetEngine:
    """The puppet engine (see the module docstring). Implements ``pipeline.engine.Engine``.

    Args:
        height, width: output frame size in pixels.
        image: picture of the engine's default avatar ([H, W, 3] uint8, any size); ``None``
            draws the default face. ``load`` warms up on it; ``default_avatar`` returns it.
        fps: video frame rate; must equal the media clock's 25 fps (28 frames per chunk).
    """

    name = PUPPET_NAME
    description = PUPPET_DESCRIPTION
    warmup_rtf: float | None = None
    """The puppet measures no RTF: capacity comes from ``max_sessions_fallback``."""

    def __init__(
        self,
        height: int = DEFAULT_HEIGHT,
        width: int = DEFAULT_WIDTH,
        image: np.ndarray | None = None,
        fps: int = VIDEO_FPS,
    ) -> None:
        if fps != VIDEO_FPS:
            raise ValueError(
                f"the puppet renders on the media clock of {VIDEO_FPS} fps "
                f"({CHUNK_FRAMES} frames per chunk); got fps={fps}. Leave fps at {VIDEO_FPS}."
            )
        if image is not None:
            _check_rgb(image, "the puppet's default image")
        self.layout = FaceLayout.for_frame(height, width)
        self.height = height
        self.width = width
        self.fps = fps
        self._image = image
        self._label: np.ndarray | None = None  # [h, w, 4] uint8 RGBA, made by load()
        self._prepared: AvatarCache[_Prepared] = AvatarCache(AVATAR_CACHE_SIZE)
        self._head = self._head_region()
        self._mouth_grid = self._mouth_box_grid()

    # -- Engine protocol ---------------------------------------------------------------------

    def load(self) -> None:
        """Render the corner label and warm up on the default avatar (one chunk)."""
        started = time.perf_counter()
        self._label = _render_label(LABEL_TEXT)
        state = self.open_session(self.default_avatar(), seed=0)
        silence = np.zeros(CHUNK_FRAMES * SAMPLES_PER_FRAME, dtype=np.float32)
        self.step(state, ChunkJob(0, silence))
        self.close_session(state)
        logger.info("puppet warmed up in %.3f s", time.perf_counter() - started)

    def default_avatar(self) -> Avatar:
        """The engine's default avatar: ``image`` if given, else the drawn face."""
        if self._image is None:
            self._image = draw_default_avatar(self.height, self.width)  # drawn once
        return Avatar(name=DEFAULT_AVATAR_NAME, image=self._image)

    def open_session(self, avatar: Avatar, seed: int) -> PuppetState:
        """Prepare (or reuse) the avatar's background; seed the session's idle motion.

        Prepared avatars are cached by ``avatar.name``: a new picture needs a new name.
        """
        if self._label is None:
            raise EngineNotReady("the puppet engine is not loaded; call load() first")
        prepared = self._prepare(avatar)
        rng = np.random.default_rng(seed)
        return PuppetState(
            avatar_name=avatar.name,
            prepared=prepared,
            rng=rng,
            sway_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
            bob_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
            next_blink_frame=round(rng.uniform(*FIRST_BLINK_S) * self.fps),
        )

    def step(self, state: PuppetState, job: ChunkJob) -> Chunk:
        """Render 28 frames: frame i's mouth follows samples [640*i, 640*(i+1)) of the job."""
        started = time.perf_counter()
        targets = mouth_targets(frame_levels_dbfs(job.audio))  # [28]
        levels = smooth_mouth(targets, state.mouth_level)  # [28]
        background = state.prepared.background  # [H, W, 3]
        frames = np.empty((CHUNK_FRAMES, self.height, self.width, 3), dtype=np.uint8)
        frames[:] = background  # [28, H, W, 3]
        for i in range(CHUNK_FRAMES):
            t = state.frame_count + i
            dy, dx = self._idle_offset(state, t)
            frame = frames[i]  # [H, W, 3] view
            self._paste_head(frame, state.prepared, dy, dx)
            self._draw_eyelids(frame, state, self._blink_closure(state, t), dy, dx)
            if levels[i] > 0.0:  # the closed lips are part of the background
                self._draw_mouth(frame, float(levels[i]), dy, dx)
        state.frame_count += CHUNK_FRAMES
        state.mouth_level = float(levels[-1])
        elapsed = time.perf_counter() - started
        return Chunk(
            index=job.index,
            frames=frames,
            audio=job.audio,
            compute_seconds=elapsed,
            stats={"mouth_level_mean": float(levels.mean())},
        )

    def reseed(self, state: PuppetState, reseed: Reseed) -> None:
        """Continue from the frames shown: the idle clock moves to the first moment (within
        ``RESEED_SEARCH_S``) whose head positions match theirs, the mouth level and a blink
        under way are read back from the last one, and the next blink is scheduled afresh.
        ``silent_samples`` changes nothing: the puppet keeps no audio history."""
        frames = reseed.frames  # [5, H, W, 3]
        if frames.shape[1:3] != (self.height, self.width):
            raise ValueError(
                f"re-seed frames must be {self.height}x{self.width} (the puppet's size), got "
                f"{frames.shape[2]}x{frames.shape[1]}"
            )
        shown = [self._head_offset_of(frame, state.prepared) for frame in frames]
        last = self._idle_clock_matching(state, shown)
        state.frame_count = last + 1
        level = min(mouth_open_metric(frames[-1], self.height, self.width), 1.0)
        state.mouth_level = level if level >= MOUTH_CLOSED_BELOW else 0.0
        phase = self._blink_phase_of(frames[-1], state, *shown[-1])
        state.blink_start = None if phase is None else last - phase  # a blink goes on
        pause = state.rng.uniform(*BLINK_INTERVAL_S)
        state.next_blink_frame = state.frame_count + round(pause * self.fps)

    def close_session(self, state: PuppetState) -> None:
        """Nothing to release: the state holds no resources; the avatar cache stays warm."""

    @property
    def avatar_cache_evictions(self) -> int:
        """Prepared avatars dropped from the cache since the engine was made."""
        return self._prepared.evictions

    def prepare_avatar(self, avatar: Avatar) -> Iterator[PreparationStep]:
        """Prepare ``avatar``'s art (one step of a few ms) and hand it over as its assets:
        the background with closed lips and the label, and the eyelid colours."""
        prepared = self._prepare(avatar)
        yield PreparationStep(
            1.0,
            {
                BACKGROUND_ASSET: prepared.background,
                LID_COLOURS_ASSET: np.stack(prepared.lid_colours),  # [2, 3]
            },
        )

    # -- preparation -------------------------------------------------------------------------

    def _prepare(self, avatar: Avatar) -> _Prepared:
        key = avatar.name
        cached = self._prepared.get(key)
        if cached is not None:
            return cached
        if avatar.assets is not None:
            prepared = self._from_assets(avatar.name, avatar.assets)
            self._prepared.put(key, prepared)
            return prepared
        image = avatar.image
        _check_rgb(image, f"avatar {avatar.name!r}")
        if image.shape[:2] == (self.height, self.width):
            background = image.copy()  # [H, W, 3]
        else:
            background = _cover_and_crop(image, self.height, self.width)  # [H, W, 3]
        lids = self._lid_colours(background)
        self._draw_mouth(background, 0.0, 0, 0)  # closed lips; open mouths are drawn over them
        if self._label is None:
            raise EngineNotReady("the puppet engine is not loaded; call load() first")
        _stamp_label(background, self._label)
        prepared = _Prepared(background=background, lid_colours=lids)
        self._prepared.put(key, prepared)
        return prepared

    def _from_assets(self, name: str, assets: AvatarAssets) -> _Prepared:
        """The prepared art ``prepare_avatar`` handed over before (checked against this
        engine's frame size)."""
        background = assets.get(BACKGROUND_ASSET)
        lids = assets.get(LID_COLOURS_ASSET)
        if background is None or lids is None:
            raise ValueError(
                f"avatar {name!r}: its stored assets are not the puppet's; prepare it again"
            )
        if background.shape != (self.height, self.width, 3) or lids.shape != (2, 3):
            raise ValueError(
                f"avatar {name!r} was prepared for {background.shape[1]}x{background.shape[0]} "
                f"frames, this puppet draws {self.width}x{self.height}; prepare it again"
            )
        lid_colours = np.asarray(lids, dtype=np.float32)
        return _Prepared(
            background=np.asarray(background, dtype=np.uint8),
            lid_colours=(lid_colours[0], lid_colours[1]),
        )

    def _lid_colours(self, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Median colour of the skin just under each eye. Returns 2 x [3] float32."""
        layout = self.layout
        top = layout.eye_centre_y + round(1.6 * layout.eye_half_height)
        bottom = top + max(2, layout.eye_half_height)
        half = max(1, layout.eye_half_width // 2)
        colours = []
        for ex in layout.eye_centres_x:
            patch = background[top:bottom, ex - half : ex + half + 1]  # [h, w, 3]
            colours.append(np.median(patch.reshape(-1, 3), axis=0).astype(np.float32))
        return colours[0], colours[1]

    def _head_region(self) -> tuple[slice, slice, np.ndarray]:
        """The moving head region and its blend weights [h, w, 1] uint16 in 0..256."""
        layout = self.layout
        sway, bob = _sway_px(layout), _bob_px(layout)
        half_h = HEAD_REGION_SCALE * layout.head_half_height
        half_w = HEAD_REGION_SCALE * layout.head_half_width
        top = max(bob, round(layout.head_centre_y - half_h - HEAD_FEATHER_PX))
        bottom = min(layout.height - bob, round(layout.head_centre_y + half_h + HEAD_FEATHER_PX))
        left = max(sway, round(layout.centre_x - half_w - HEAD_FEATHER_PX))
        right = min(layout.width - sway, round(layout.centre_x + half_w + HEAD_FEATHER_PX))
        ys = np.arange(top, bottom, dtype=np.float32)[:, None] - layout.head_centre_y  # [h, 1]
        xs = np.arange(left, right, dtype=np.float32)[None, :] - layout.centre_x  # [1, w]
        radius = np.sqrt((ys / half_h) ** 2 + (xs / half_w) ** 2)  # [h, w]
        outside_px = (radius - 1.0) * min(half_h, half_w)
        weight = np.clip(1.0 - outside_px / HEAD_FEATHER_PX, 0.0, 1.0)  # [h, w]
        weights = np.round(weight * BLEND_ONE).astype(np.uint16)[..., None]  # [h, w, 1]
        return slice(top, bottom), slice(left, right), weights

    def _mouth_box_grid(self) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Half-size of the mouth drawing box and its pixel offsets from the mouth centre."""
        layout = self.layout
        lip = _lip_px(layout)
        half_h = layout.mouth_max_half_height + lip + 2
        half_w = layout.mouth_half_width + lip + 2
        ys = np.arange(-half_h, half_h + 1, dtype=np.float32)[:, None]  # [h, 1]
        xs = np.arange(-half_w, half_w + 1, dtype=np.float32)[None, :]  # [1, w]
        return half_h, half_w, ys, xs

    # -- per frame ---------------------------------------------------------------------------

    def _idle_offset(self, state: PuppetState, t: int) -> tuple[int, int]:
        """Integer (dy, dx) of the head at frame ``t``: a slow sway and a breathing bob."""
        seconds = t / self.fps
        sway = math.sin(2 * math.pi * seconds / SWAY_PERIOD_S + state.sway_phase)
        bob = math.sin(2 * math.pi * seconds / BOB_PERIOD_S + state.bob_phase)
        return round(_bob_px(self.layout) * bob), round(_sway_px(self.layout) * sway)

    def _blink_closure(self, state: PuppetState, t: int) -> float:
        """Eyelid closure in [0, 1] at frame ``t``; schedules the next blink after each one."""
        if state.blink_start is None and t >= state.next_blink_frame:
            state.blink_start = t
        if state.blink_start is None:
            return 0.0
        phase = t - state.blink_start
        if phase < len(BLINK_CLOSURE):
            return BLINK_CLOSURE[phase]
        state.blink_start = None
        pause = state.rng.uniform(*BLINK_INTERVAL_S)
        state.next_blink_frame = t + round(pause * self.fps)
        return 0.0

    def _paste_head(self, frame: np.ndarray, prepared: _Prepared, dy: int, dx: int) -> None:
        """Put the head region, shifted by (dy, dx), into ``frame`` in place (one copy)."""
        if dy == 0 and dx == 0:
            return
        rows, cols, _weights = self._head
        frame[rows, cols] = self._moved_head(prepared, dy, dx)

    def _moved_head(self, prepared: _Prepared, dy: int, dx: int) -> np.ndarray:
        """The head region [h, w, 3] uint8 shifted by (dy, dx), edges blended (cached)."""
        rows, cols, weights = self._head
        background = prepared.background  # [H, W, 3]
        if dy == 0 and dx == 0:
            return background[rows, cols]
        moved_head = prepared.moved_heads.get((dy, dx))
        if moved_head is None:
            still = background[rows, cols].astype(np.uint16)  # [h, w, 3]
            moved = background[
                rows.start - dy : rows.stop - dy, cols.start - dx : cols.stop - dx
            ].astype(np.uint16)  # [h, w, 3]
            blended = moved * weights + still * (BLEND_ONE - weights) + BLEND_ONE // 2
            moved_head = (blended >> BLEND_SHIFT).astype(np.uint8)  # [h, w, 3]
            prepared.moved_heads[(dy, dx)] = moved_head
        return moved_head

    # -- re-seed -----------------------------------------------------------------------------

    def _head_offset_of(self, frame: np.ndarray, prepared: _Prepared) -> tuple[int, int]:
        """The idle offset (dy, dx) whose head region is closest to ``frame``'s (mean absolute
        difference on a subsampled grid; the mouth and eyelids differ alike for every
        candidate, the head's outline only at the right offset)."""
        rows, cols, _weights = self._head
        step = RESEED_SUBSAMPLE
        seen = frame[rows, cols][::step, ::step].astype(np.int16)  # [h/4, w/4, 3]
        bob, sway = _bob_px(self.layout), _sway_px(self.layout)
        best: tuple[int, int] = (0, 0)
        best_error = math.inf
        for dy in range(-bob, bob + 1):
            for dx in range(-sway, sway + 1):
                head = self._moved_head(prepared, dy, dx)[::step, ::step]  # [h/4, w/4, 3]
                error = float(np.mean(np.abs(seen - head)))
                if error < best_error:
                    best, best_error = (dy, dx), error
        return best

    def _blink_phase_of(
        self, frame: np.ndarray, state: PuppetState, dy: int, dx: int
    ) -> int | None:
        """The blink frame (index into ``BLINK_CLOSURE``) ``frame`` shows, or ``None`` when
        its eyes are open: the eye region compared with each closure drawn at (dy, dx)."""
        rows, cols = self._eye_box(dy, dx)
        seen = frame[rows, cols].astype(np.int16)  # [h, w, 3]
        rendered = state.prepared.background.copy()  # [H, W, 3]
        self._paste_head(rendered, state.prepared, dy, dx)
        best: int | None = None
        best_error = math.inf
        for phase, closure in [(None, 0.0), *enumerate(BLINK_CLOSURE)]:
            candidate = rendered.copy()
            self._draw_eyelids(candidate, state, closure, dy, dx)
            error = float(np.mean(np.abs(seen - candidate[rows, cols])))
            if error < best_error:
                best, best_error = phase, error
        return best

    def _eye_box(self, dy: int, dx: int) -> tuple[slice, slice]:
        """Rows and columns around both eyes at head offset (dy, dx)."""
        layout = self.layout
        half_h = math.ceil(EYELID_SCALE * layout.eye_half_height) + 1
        half_w = math.ceil(EYELID_SCALE * layout.eye_half_width) + 1
        left, right = layout.eye_centres_x
        return (
            slice(layout.eye_centre_y + dy - half_h, layout.eye_centre_y + dy + half_h + 1),
            slice(left + dx - half_w, right + dx + half_w + 1),
        )

    def _idle_clock_matching(self, state: PuppetState, shown: list[tuple[int, int]]) -> int:
        """The first idle-clock frame ``t`` from the session's clock on whose last
        ``len(shown)`` head offsets (frames ``t - n + 1 .. t``) are closest to ``shown``."""
        count = len(shown)
        first = state.frame_count + count - 1
        best, best_error = first, math.inf
        for t in range(first, first + round(RESEED_SEARCH_S * self.fps)):
            error = 0
            for back, (dy, dx) in enumerate(reversed(shown)):
                ty, tx = self._idle_offset(state, t - back)
                error += abs(ty - dy) + abs(tx - dx)
            if error < best_error:
                best, best_error = t, error
                if error == 0:
                    break
        return best

    def _draw_eyelids(
        self, frame: np.ndarray, state: PuppetState, closure: float, dy: int, dx: int
    ) -> None:
        """Lower skin-coloured lids over both eyes by ``closure``, with a lash line at the edge."""
        if closure <= 0.0:
            return
        layout = self.layout
        half_h = EYELID_SCALE * layout.eye_half_height
        half_w = EYELID_SCALE * layout.eye_half_width
        top = round(layout.eye_centre_y - half_h) + dy
        bottom = round(layout.eye_centre_y + half_h) + dy + 1
        ys = np.arange(top, bottom, dtype=np.float32)[:, None] - layout.eye_centre_y - dy
        edge = -half_h + closure * 2.0 * half_h  # lid edge, relative to the eye centre
        lash = max(1.0, 0.2 * layout.eye_half_height)
        for ex, colour in zip(layout.eye_centres_x, state.prepared.lid_colours, strict=True):
            left = round(ex - half_w) + dx
            right = round(ex + half_w) + dx + 1
            xs = np.arange(left, right, dtype=np.float32)[None, :] - ex - dx
            inside = _soft_ellipse(ys, xs, half_h, half_w)  # [h, w]
            lid = inside * np.clip(edge - ys + 0.5, 0.0, 1.0)  # [h, w]
            line = inside * np.clip(lash - np.abs(ys - edge), 0.0, 1.0)  # [h, w]
            region = frame[top:bottom, left:right].astype(np.float32)  # [h, w, 3]
            region += (colour - region) * lid[..., None]
            region += (np.asarray(LASH, np.float32) - region) * line[..., None]
            frame[top:bottom, left:right] = (region + 0.5).astype(np.uint8)

    def _draw_mouth(self, frame: np.ndarray, level: float, dy: int, dx: int) -> None:
        """Draw lips around a dark opening whose height grows with ``level`` (0: closed lips)."""
        layout = self.layout
        half_h, half_w, ys, xs = self._mouth_grid
        lip = _lip_px(layout)
        open_half_h = level * layout.mouth_max_half_height
        width_share = CLOSED_MOUTH_WIDTH + (1.0 - CLOSED_MOUTH_WIDTH) * level
        open_half_w = layout.mouth_half_width * width_share
        extent = min(half_h, math.ceil(open_half_h) + lip + 1)  # rows the lips can reach
        ys = ys[half_h - extent : half_h + extent + 1]  # [h, 1]
        cy, cx = layout.mouth_centre_y + dy, layout.centre_x + dx
        rows = slice(cy - extent, cy + extent + 1)
        cols = slice(cx - half_w, cx + half_w + 1)
        region = frame[rows, cols].astype(np.float32)  # [h, w, 3]
        lips = _soft_ellipse(ys, xs, open_half_h + lip, open_half_w + lip)  # [h, w]
        region += (np.asarray(LIPS, np.float32) - region) * lips[..., None]
        opening = _soft_ellipse(ys, xs, open_half_h, open_half_w)  # [h, w]
        region += (np.asarray(MOUTH_INTERIOR, np.float32) - region) * opening[..., None]
        frame[rows, cols] = (region + 0.5).astype(np.uint8)


def puppet_engine(options: PuppetOptions, parallel: ParallelGroup | None = None) -> PuppetEngine:
    """The ``puppet`` engine at ``options``' size. ``parallel`` is ignored: in an engine group
    every rank draws the same frames (the puppet is deterministic per session seed) and
    rank 0's are sent."""
    del parallel  # the puppet has nothing to split across ranks
    return PuppetEngine(height=options.height, width=options.width)


def _cover_and_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize [h, w, 3] to cover ``height`` x ``width``, then crop the centre.

    The same fit as ``pipeline.imaging.resize_and_centercrop`` (which the models use),
    without its torch import. Returns [height, width, 3] uint8.
    """
    scale = max(height / image.shape[0], width / image.shape[1])
    cover_h = math.ceil(scale * image.shape[0])
    cover_w = math.ceil(scale * image.shape[1])
    resized = PIL.Image.fromarray(image).resize(
        (cover_w, cover_h), resample=PIL.Image.Resampling.BILINEAR
    )
    top = int(round((cover_h - height) / 2.0))
    left = int(round((cover_w - width) / 2.0))
    pixels = np.asarray(resized, dtype=np.uint8)  # [cover_h, cover_w, 3]
    return pixels[top : top + height, left : left + width].copy()


def _render_label(text: str) -> np.ndarray:
    """The corner label as an RGBA patch [h, w, 4] uint8: light text on a faint dark box."""
    font = PIL.ImageFont.load_default(size=LABEL_FONT_PX)
    left, top, right, bottom = font.getbbox(text)
    pad = LABEL_PADDING_PX
    # getbbox is typed float (FreeType gives whole pixels): round the box up.
    size = (math.ceil(right - left) + 2 * pad, math.ceil(bottom - top) + 2 * pad)
    patch = PIL.Image.new("RGBA", size, LABEL_BOX_RGBA)
    PIL.ImageDraw.Draw(patch).text((pad - left, pad - top), text, font=font, fill=LABEL_RGBA)
    return np.asarray(patch, dtype=np.uint8).copy()


def _stamp_label(background: np.ndarray, label: np.ndarray) -> None:
    """Alpha-blend ``label`` [h, w, 4] into the bottom-right corner of ``background`` in place."""
    h, w = label.shape[:2]
    height, width = background.shape[:2]
    if h + LABEL_MARGIN_PX > height or w + LABEL_MARGIN_PX > width:
        return  # frame too small for a label; the description still says what this is
    rows = slice(height - LABEL_MARGIN_PX - h, height - LABEL_MARGIN_PX)
    cols = slice(width - LABEL_MARGIN_PX - w, width - LABEL_MARGIN_PX)
    alpha = label[..., 3:4].astype(np.float32) / 255.0  # [h, w, 1]
    region = background[rows, cols].astype(np.float32)  # [h, w, 3]
    region += (label[..., :3].astype(np.float32) - region) * alpha
    background[rows, cols] = (region + 0.5).astype(np.uint8)

"""The drawn default avatar and the face layout the puppet engine assumes for any image.

Owns ``FaceLayout`` (where, in relative frame coordinates, the puppet expects the head, eyes
and mouth of a portrait: centre-x, eyes at 47 % and mouth at 62 % of the height) and
``draw_default_avatar``, a procedurally drawn face whose features sit exactly on that
layout. Deterministic; reads no files. Must not know about engines, sessions or audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter

from headcast.pipeline.media import DEFAULT_HEIGHT, DEFAULT_WIDTH

DEFAULT_AVATAR_NAME = "default"
"""``Avatar.name`` of the drawn default face."""

# -- the layout, as fractions of the frame height (``_Y``) or width (``_X``) -------------------

HEAD_CENTRE_Y = 0.48
HEAD_HALF_HEIGHT_Y = 0.21
HEAD_HALF_WIDTH_X = 0.29
EYE_CENTRE_Y = 0.47
EYE_OFFSET_X = 0.12
"""Horizontal distance of each eye's centre from the frame's centre line."""
EYE_HALF_WIDTH_X = 0.05
EYE_HALF_HEIGHT_Y = 0.018
MOUTH_CENTRE_Y = 0.62
MOUTH_HALF_WIDTH_X = 0.085
MOUTH_MAX_HALF_HEIGHT_Y = 0.036
"""Half-height of the puppet's mouth opening at full level (the drawn lips are thinner)."""

# -- drawing ---------------------------------------------------------------------------------

SUPERSAMPLE = 3
"""The face is drawn this many times larger and downsampled, for smooth edges."""

BLUSH_BLUR_PX = 9.0
"""Gaussian blur radius of the cheek blush, in output pixels."""

Rgb = tuple[int, int, int]
BACKGROUND_TOP: Rgb = (88, 126, 160)
BACKGROUND_BOTTOM: Rgb = (176, 198, 214)
BACKGROUND_GLOW: Rgb = (226, 234, 238)
SKIN: Rgb = (240, 199, 168)
SKIN_SHADE: Rgb = (220, 168, 138)
HAIR: Rgb = (66, 42, 33)
HAIR_SHINE: Rgb = (104, 70, 54)
SHIRT: Rgb = (46, 84, 122)
SHIRT_SHADE: Rgb = (36, 66, 98)
EYE_WHITE: Rgb = (250, 250, 247)
IRIS: Rgb = (92, 130, 96)
PUPIL: Rgb = (24, 20, 22)
LASH: Rgb = (58, 36, 30)
LIPS: Rgb = (196, 100, 104)
LIP_LINE: Rgb = (150, 70, 78)
"""Line between the closed lips: deliberately lighter than the puppet's dark mouth opening."""
BLUSH_RGBA = (238, 128, 128, 55)


@dataclass(frozen=True)
class FaceLayout:
    """Pixel positions of the face features in a ``height`` x ``width`` frame.

    The puppet engine has no landmarks, so it assumes this layout for every avatar image:
    a portrait centred horizontally, eyes at 47 % and the mouth at 62 % of the height.
    """

    height: int
    width: int
    centre_x: int
    head_centre_y: int
    head_half_height: int
    head_half_width: int
    eye_centre_y: int
    eye_offset_x: int
    eye_half_width: int
    eye_half_height: int
    mouth_centre_y: int
    mouth_half_width: int
    mouth_max_half_height: int

    @classmethod
    def for_frame(cls, height: int, width: int) -> FaceLayout:
        """The layout scaled to a ``height`` x ``width`` frame."""
        if height < 16 or width < 16:
            raise ValueError(f"frame too small for a face: {height}x{width}; use at least 16x16")

        def ys(fraction: float) -> int:
            return max(1, round(fraction * height))

        def xs(fraction: float) -> int:
            return max(1, round(fraction * width))

        return cls(
            height=height,
            width=width,
            centre_x=width // 2,
            head_centre_y=ys(HEAD_CENTRE_Y),
            head_half_height=ys(HEAD_HALF_HEIGHT_Y),
            head_half_width=xs(HEAD_HALF_WIDTH_X),
            eye_centre_y=ys(EYE_CENTRE_Y),
            eye_offset_x=xs(EYE_OFFSET_X),
            eye_half_width=xs(EYE_HALF_WIDTH_X),
            eye_half_height=ys(EYE_HALF_HEIGHT_Y),
            mouth_centre_y=ys(MOUTH_CENTRE_Y),
            mouth_half_width=xs(MOUTH_HALF_WIDTH_X),
            mouth_max_half_height=ys(MOUTH_MAX_HALF_HEIGHT_Y),
        )

    @property
    def eye_centres_x(self) -> tuple[int, int]:
        """x of the left and right eye centres (as seen in the picture)."""
        return self.centre_x - self.eye_offset_x, self.centre_x + self.eye_offset_x


class _Canvas:
    """A supersampled PIL drawing surface addressed in output-pixel coordinates."""

    def __init__(self, image: PIL.Image.Image, scale: int) -> None:
        self.image = image
        self.scale = scale
        self.draw = PIL.ImageDraw.Draw(image)

    def _box(self, cx: float, cy: float, rx: float, ry: float) -> list[float]:
        s = self.scale
        return [(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: Rgb) -> None:
        self.draw.ellipse(self._box(cx, cy, rx, ry), fill=fill)

    def chord(
        self, cx: float, cy: float, rx: float, ry: float, start: float, end: float, fill: Rgb
    ) -> None:
        self.draw.chord(self._box(cx, cy, rx, ry), start, end, fill=fill)

    def arc(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        start: float,
        end: float,
        fill: Rgb,
        width: float,
    ) -> None:
        self.draw.arc(
            self._box(cx, cy, rx, ry), start, end, fill=fill, width=round(width * self.scale)
        )

    def polygon(self, points: list[tuple[float, float]], fill: Rgb) -> None:
        s = self.scale
        self.draw.polygon([(x * s, y * s) for x, y in points], fill=fill)

    def rectangle(self, x0: float, y0: float, x1: float, y1: float, fill: Rgb) -> None:
        s = self.scale
        self.draw.rectangle([x0 * s, y0 * s, x1 * s, y1 * s], fill=fill)


def _background(height: int, width: int, layout: FaceLayout) -> np.ndarray:
    """A vertical gradient with a soft light behind the head. Returns [H, W, 3] uint8."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]  # [H, 1, 1]
    top = np.array(BACKGROUND_TOP, dtype=np.float32)
    bottom = np.array(BACKGROUND_BOTTOM, dtype=np.float32)
    gradient = top + (bottom - top) * t  # [H, 1, 3]
    ys = np.arange(height, dtype=np.float32)[:, None]  # [H, 1]
    xs = np.arange(width, dtype=np.float32)[None, :]  # [1, W]
    radius = 1.6 * max(layout.head_half_height, layout.head_half_width)
    distance = np.hypot(ys - layout.head_centre_y, xs - layout.centre_x) / radius  # [H, W]
    glow = (np.clip(1.0 - distance, 0.0, 1.0) * 0.6)[..., None]  # [H, W, 1]
    light = np.array(BACKGROUND_GLOW, dtype=np.float32)
    pixels = gradient * (1.0 - glow) + light * glow  # [H, W, 3]
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def _draw_body(canvas: _Canvas, layout: FaceLayout) -> None:
    cx, h, w = layout.centre_x, layout.height, layout.width
    chin_y = layout.head_centre_y + layout.head_half_height
    neck_half_w = 0.1 * w
    # Neck, with a shadow under the chin.
    canvas.rectangle(cx - neck_half_w, chin_y - 0.05 * h, cx + neck_half_w, 0.86 * h, SKIN)
    canvas.ellipse(cx, chin_y + 0.005 * h, neck_half_w, 0.03 * h, SKIN_SHADE)
    # Shoulders and shirt, with a V-neck collar.
    canvas.ellipse(cx, 1.0 * h, 0.6 * w, 0.25 * h, SHIRT)
    collar_top = 0.765 * h
    trim = 0.012 * h
    canvas.polygon(
        [
            (cx - 1.25 * neck_half_w - trim, collar_top),
            (cx + 1.25 * neck_half_w + trim, collar_top),
            (cx, 0.86 * h + trim),
        ],
        SHIRT_SHADE,
    )
    canvas.polygon(
        [
            (cx - 1.25 * neck_half_w, collar_top),
            (cx + 1.25 * neck_half_w, collar_top),
            (cx, 0.86 * h),
        ],
        SKIN,
    )


def _draw_head(canvas: _Canvas, layout: FaceLayout) -> None:
    cx, cy = layout.centre_x, layout.head_centre_y
    rx, ry = layout.head_half_width, layout.head_half_height
    h = layout.height
    # Hair behind the head: a bob that frames the face.
    canvas.ellipse(cx, cy - 0.03 * h, rx * 1.22, ry * 1.08, HAIR)
    canvas.rectangle(cx - rx * 1.22, cy - 0.03 * h, cx + rx * 1.22, cy + 0.07 * h, HAIR)
    canvas.ellipse(cx, cy + 0.07 * h, rx * 1.22, 0.035 * h, HAIR)
    # Ears at eye level.
    for side in (-1, 1):
        canvas.ellipse(
            cx + side * rx * 0.98, layout.eye_centre_y + 0.012 * h, rx * 0.13, ry * 0.16, SKIN_SHADE
        )
    # Face: a wide cranium ellipse joined to a narrower jaw ellipse.
    canvas.ellipse(cx, cy - 0.02 * h, rx, ry * 0.9, SKIN)
    canvas.ellipse(cx, cy + 0.02 * h, rx * 0.86, ry * 0.98, SKIN)
    # Fringe: a cap over the top of the head, swept a little to one side.
    fringe_y = cy - 0.11 * h
    canvas.chord(cx, fringe_y, rx * 1.04, ry * 0.68, 180, 360, HAIR)
    canvas.chord(cx - rx * 0.3, fringe_y, rx * 0.72, 0.03 * h, 0, 180, HAIR)
    canvas.arc(
        cx + rx * 0.2, fringe_y - 0.02 * h, rx * 0.5, ry * 0.4, 215, 285, HAIR_SHINE, 0.006 * h
    )


def _draw_eyes(canvas: _Canvas, layout: FaceLayout) -> None:
    ey, hw, hh = layout.eye_centre_y, layout.eye_half_width, layout.eye_half_height
    for side, ex in zip((-1, 1), layout.eye_centres_x, strict=True):
        canvas.ellipse(ex, ey, hw, hh, EYE_WHITE)
        iris_r = hh * 0.9
        canvas.ellipse(ex, ey, iris_r, iris_r, IRIS)
        canvas.ellipse(ex, ey, iris_r * 0.45, iris_r * 0.45, PUPIL)
        canvas.ellipse(
            ex + iris_r * 0.35, ey - iris_r * 0.35, iris_r * 0.2, iris_r * 0.2, EYE_WHITE
        )
        # Upper lash line and eyebrow.
        canvas.arc(ex, ey + hh * 0.15, hw * 1.05, hh * 1.2, 195, 345, LASH, hh * 0.28)
        canvas.arc(
            ex + side * hw * 0.1, ey - hh * 0.6, hw * 1.25, hh * 2.0, 215, 325, HAIR, hh * 0.45
        )


def _draw_nose_and_mouth(canvas: _Canvas, layout: FaceLayout) -> None:
    cx, h = layout.centre_x, layout.height
    nose_y = 0.55 * h
    canvas.arc(
        cx + 0.012 * layout.width,
        nose_y - 0.05 * h,
        0.02 * layout.width,
        0.05 * h,
        300,
        60,
        SKIN_SHADE,
        0.004 * h,
    )
    canvas.arc(
        cx, nose_y - 0.008 * h, 0.03 * layout.width, 0.01 * h, 30, 150, SKIN_SHADE, 0.005 * h
    )
    # Closed lips on the puppet's mouth position: upper and lower lip, a line between.
    my, mw = layout.mouth_centre_y, layout.mouth_half_width
    lip = 0.0075 * h
    canvas.ellipse(cx, my - lip * 0.45, mw * 0.92, lip * 0.9, LIPS)
    canvas.ellipse(cx, my + lip * 0.55, mw * 0.8, lip * 1.15, LIPS)
    canvas.arc(cx, my - lip * 1.4, mw, lip * 1.6, 25, 155, LIP_LINE, lip * 0.35)


def _blush(size: tuple[int, int], layout: FaceLayout, scale: int) -> PIL.Image.Image:
    layer = PIL.Image.new("RGBA", size, (0, 0, 0, 0))
    draw = PIL.ImageDraw.Draw(layer)
    cheek_y = (layout.eye_centre_y + layout.mouth_centre_y) / 2
    for ex in layout.eye_centres_x:
        cx = ex + (ex - layout.centre_x) * 0.25
        rx, ry = layout.eye_half_width * 1.1, layout.eye_half_height * 1.6
        draw.ellipse(
            [(cx - rx) * scale, (cheek_y - ry) * scale, (cx + rx) * scale, (cheek_y + ry) * scale],
            fill=BLUSH_RGBA,
        )
    return layer.filter(PIL.ImageFilter.GaussianBlur(BLUSH_BLUR_PX * scale))


def draw_default_avatar(height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """Draw the default face at ``height`` x ``width``. Returns [H, W, 3] uint8 RGB.

    The closed lips sit on ``FaceLayout.for_frame(height, width)``'s mouth position, where
    the puppet engine draws its moving mouth. Deterministic: same size, same pixels.
    """
    layout = FaceLayout.for_frame(height, width)
    s = SUPERSAMPLE
    big_size = (width * s, height * s)
    background = PIL.Image.fromarray(_background(height, width, layout)).resize(
        big_size, PIL.Image.Resampling.BILINEAR
    )
    canvas = _Canvas(background, s)
    _draw_body(canvas, layout)
    _draw_head(canvas, layout)
    face = canvas.image.convert("RGBA")
    face.alpha_composite(_blush(big_size, layout, s))
    canvas = _Canvas(face.convert("RGB"), s)
    _draw_eyes(canvas, layout)
    _draw_nose_and_mouth(canvas, layout)
    small = canvas.image.resize((width, height), PIL.Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8).copy()  # [H, W, 3]

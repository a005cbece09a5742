"""Reference-image loading and image <-> tensor helpers.

Owns: reading an avatar image file as RGB, the cover-resize + centre-crop to the model's
frame size (PIL bilinear, as the official goldens do), and the uint8 <-> model-range
conversion. Must not know about models, devices or sessions: it returns CPU tensors and
the caller moves them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import torch

PIXEL_MAX = 255.0
"""Largest value of an 8-bit channel."""

RESIZE_FILTER = PIL.Image.Resampling.BILINEAR
"""PIL filter for the cover resize (the golden's; the official repo's PIL path uses LANCZOS)."""


class ImageLoadError(ValueError):
    """An avatar image file is missing or cannot be decoded."""


def load_image(path: str | Path) -> PIL.Image.Image:
    """Read an image file fully and return it as an RGB PIL image.

    Raises ImageLoadError naming the file when it is missing or not a readable image.
    """
    file = Path(path)
    if not file.is_file():
        raise ImageLoadError(
            f"avatar image not found: {file}. Pass the path of an existing PNG or JPEG file."
        )
    try:
        with PIL.Image.open(file) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            return image.convert("RGB")
    except (OSError, PIL.UnidentifiedImageError, ValueError) as exc:
        raise ImageLoadError(
            f"cannot read avatar image {file}: {exc}. Use a valid PNG or JPEG file."
        ) from exc


def _cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Smallest (H, W) with the image's aspect ratio that covers (target_h, target_w)."""
    scale = max(target_h / height, target_w / width)
    return math.ceil(scale * height), math.ceil(scale * width)


def _center_crop_offsets(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """Top/left offsets of a centred crop (Python round, as torchvision's center_crop)."""
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))


def resize_and_centercrop(image: PIL.Image.Image, size_hw: tuple[int, int]) -> torch.Tensor:
    """Resize ``image`` to cover ``size_hw`` (bilinear) and crop its centre.

    Args:
        image: any PIL image (converted to RGB).
        size_hw: target (height, width) in pixels.

    Returns:
        uint8 tensor [1, 3, 1, H, W] on the CPU.
    """
    target_h, target_w = size_hw
    if target_h <= 0 or target_w <= 0:
        raise ValueError(f"target size must be positive (height, width), got {size_hw}")
    if image.width <= 0 or image.height <= 0:
        raise ValueError(f"image is empty: {image.width}x{image.height}")

    # 1. Cover-resize, keeping the aspect ratio.
    resized_h, resized_w = _cover_size(image.height, image.width, target_h, target_w)
    resized = image.convert("RGB").resize((resized_w, resized_h), resample=RESIZE_FILTER)
    pixels = torch.from_numpy(np.array(resized, dtype=np.uint8))  # [H', W', 3]

    # 2. Centre crop.
    top, left = _center_crop_offsets(resized_h, resized_w, target_h, target_w)
    cropped = pixels[top : top + target_h, left : left + target_w]  # [H, W, 3]

    # 3. Channels first, add batch and time axes.
    return cropped.permute(2, 0, 1)[None, :, None].contiguous()  # [1, 3, 1, H, W]


def to_model_range(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> ``dtype`` in [-1, 1] (computed in float32), same shape."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return ((pixels.to(torch.float32) / PIXEL_MAX - 0.5) * 2.0).to(dtype)


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Model-range frames in [-1, 1] -> uint8 in [0, 255] (clamped, truncated), same shape.

    Truncation (not rounding) follows the official frame conversion
    ``((x + 1) / 2).clip(0, 1) * 255`` followed by a uint8 cast.
    """
    unit = ((frames.to(torch.float32) + 1.0) / 2.0).clamp(0.0, 1.0)
    return (unit * PIXEL_MAX).to(torch.uint8)

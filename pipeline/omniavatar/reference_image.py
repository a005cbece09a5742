"""The reference image as OmniAvatar takes it: bucket choice, cover resize, centre crop.

Owns: picking the bucket (h, w) whose aspect ratio is closest to the image's (the first such
bucket; a later one wins only when it ties on both the ratio and the size difference, as
the official ``match_size`` loop does), resizing by ``s = max(th / h, tw / w)`` to
``int(h s) x int(w s)`` (bilinear, antialiased: torchvision's ``Resize`` on a tensor), then
the official ``F.pad`` with the (negative) margins, which centre-crops (``pad_top =
pad_h // 2``; a truncated ``int()`` can leave one zero row or column), and the map to
[-1, 1]. Knows nothing about models or files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from headcast.pipeline.imaging import PIXEL_MAX

Bucket = tuple[int, int]
"""A generation size (height, width) in pixels."""


def choose_bucket(height: int, width: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket for an image of ``height`` x ``width``."""
    if not buckets:
        raise ValueError("no buckets to choose from")
    ratio = height / width
    best: Bucket | None = None
    best_ratio = best_size = float("inf")
    for bucket in buckets:
        ratio_gap = abs(bucket[0] / bucket[1] - ratio)
        size_gap = abs(max(bucket) - max(width, height))
        if ratio_gap < best_ratio or (ratio_gap == best_ratio and size_gap == best_size):
            best, best_ratio, best_size = bucket, ratio_gap, size_gap
    assert best is not None
    return best


def scaled_size(height: int, width: int, bucket: Bucket) -> tuple[int, int]:
    """The cover-resize size ``(int(h s), int(w s))``, ``s = max(th / h, tw / w)``."""
    scale = max(bucket[0] / height, bucket[1] / width)
    return int(height * scale), int(width * scale)


def resize_pad(image: torch.Tensor, bucket: Bucket) -> torch.Tensor:
    """``[B, 3, h, w]`` in [0, 1] -> ``[B, 3, th, tw]``: cover resize, then pad/crop."""
    height, width = image.shape[-2:]
    scaled_h, scaled_w = scaled_size(height, width, bucket)
    if (scaled_h, scaled_w) != (height, width):
        image = F.interpolate(
            image, size=(scaled_h, scaled_w), mode="bilinear", align_corners=False, antialias=True
        )
    pad_h, pad_w = bucket[0] - scaled_h, bucket[1] - scaled_w  # <= 0 crops, > 0 pads zeros
    top, left = pad_h // 2, pad_w // 2
    return F.pad(image, (left, pad_w - left, top, pad_h - top), mode="constant", value=0.0)


def reference_video(image: np.ndarray, buckets: Sequence[Bucket]) -> torch.Tensor:
    """An RGB ``[H, W, 3]`` uint8 picture -> the one-frame reference video ``[1, 3, 1, th, tw]``
    float32 in [-1, 1] at its bucket's size."""
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image [H, W, 3], got {pixels.dtype} {pixels.shape}"
        )
    unit = (
        torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / PIXEL_MAX
    )  # [1, 3, H, W]
    bucket = choose_bucket(pixels.shape[0], pixels.shape[1], buckets)
    fitted = resize_pad(unit, bucket)  # [1, 3, th, tw] in [0, 1]
    return (fitted * 2.0 - 1.0)[:, :, None]  # [1, 3, 1, th, tw]

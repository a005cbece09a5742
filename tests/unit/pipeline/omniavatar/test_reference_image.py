"""The reference picture's bucket and cover resize/crop, against the README's formulas.

Not in the goldens (their picture already had the bucket size): the bucket is the one with
the closest h/w ratio; the picture is resized by ``s = max(th / h, tw / w)`` to
``int(h s) x int(w s)`` and ``F.pad`` with the margins centre-crops it (``pad_top =
pad_h // 2``), leaving a zero row where ``int()`` truncated; then ``x 2 - 1``. The resize is
checked on linear ramps, whose bilinear resampling is known in closed form away from edges.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headcast.pipeline.omniavatar.recipe import BUCKETS_480P, BUCKETS_720P
from headcast.pipeline.omniavatar.reference_image import (
    choose_bucket,
    reference_video,
    resize_pad,
    scaled_size,
)

RAMP_TOL = 1e-4
"""Bilinear resampling of a linear ramp is the ramp at the sample's source position."""

EDGE_PX = 4
"""Output pixels near the picture's edges skipped in ramp checks (clamped taps, antialias)."""


@pytest.mark.parametrize(
    ("height", "width", "bucket"),
    [
        (1000, 1800, (400, 720)),
        (800, 800, (720, 720)),
        (1800, 1000, (720, 400)),
        (480, 640, (400, 720)),
        (640, 480, (720, 720)),
    ],
)
def test_bucket_with_the_closest_aspect_ratio(
    height: int, width: int, bucket: tuple[int, int]
) -> None:
    assert choose_bucket(height, width, BUCKETS_480P) == bucket


def test_720p_buckets_and_the_first_wins_a_ratio_tie() -> None:
    assert choose_bucket(1080, 1920, BUCKETS_720P) == (720, 1280)
    assert choose_bucket(540, 960, BUCKETS_720P) == (720, 1280)  # 0.5625 = 720/1280 exactly
    tie = ((100, 200), (200, 400))  # same ratio, different sizes: the first stays
    assert choose_bucket(50, 100, tie) == (100, 200)


def _ramps(height: int, width: int) -> torch.Tensor:
    """[1, 3, H, W] in [0, 1]: channel 0 grows along columns, channel 1 along rows."""
    cols = torch.linspace(0, 1, width).expand(height, width)
    rows = torch.linspace(0, 1, height)[:, None].expand(height, width)
    return torch.stack([cols, rows, torch.full((height, width), 0.5)])[None]


def _source(position: torch.Tensor, scale: float, size: int) -> torch.Tensor:
    """Ramp value at the source coordinate of output pixel ``position`` (half-pixel centres)."""
    return ((position + 0.5) / scale - 0.5) / (size - 1)


def test_cover_resize_then_centre_crop_follow_the_formulas() -> None:
    height, width, bucket = 500, 1000, (400, 720)
    scale = max(bucket[0] / height, bucket[1] / width)  # 0.8: 400 x 800, 80 columns cropped
    assert scaled_size(height, width, bucket) == (400, 800)
    out = resize_pad(_ramps(height, width), bucket)  # [1, 3, 400, 720]
    assert out.shape == (1, 3, 400, 720)
    left = (bucket[1] - 800) // 2  # -40: the crop starts 40 columns in
    cols = torch.arange(EDGE_PX, bucket[1] - EDGE_PX)
    expected = _source(cols - left, scale, width)
    assert torch.allclose(out[0, 0, 200, EDGE_PX:-EDGE_PX], expected, atol=RAMP_TOL)
    rows = torch.arange(EDGE_PX, bucket[0] - EDGE_PX)
    assert torch.allclose(
        out[0, 1, EDGE_PX:-EDGE_PX, 300], _source(rows, scale, height), atol=RAMP_TOL
    )


def test_a_truncated_scale_leaves_one_zero_row_at_the_bottom() -> None:
    height, width = 78, 50  # bucket 720 x 400: s = 720/78, int(78 s) = 719 < 720
    bucket = choose_bucket(height, width, BUCKETS_480P)
    assert bucket == (720, 400) and scaled_size(height, width, bucket) == (719, 461)
    image = np.full((height, width, 3), 200, dtype=np.uint8)
    video = reference_video(image, BUCKETS_480P)  # [1, 3, 1, 720, 400]
    assert video.shape == (1, 3, 1, 720, 400)
    assert torch.equal(video[0, :, 0, -1], torch.full((3, 400), -1.0))  # the zero row, as -1
    assert torch.allclose(video[0, :, 0, :-1], torch.tensor(200 / 255 * 2 - 1), atol=1e-6)


def test_a_picture_of_the_bucket_size_is_only_rescaled_to_minus_one_one() -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    video = reference_video(image, ((32, 48),))
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.equal(video[0, :, 0], expected)


def test_bad_pictures_are_refused() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        reference_video(np.zeros((8, 8), dtype=np.uint8), BUCKETS_480P)

"""Colour correction of decoded video chunks against the avatar's reference image.

Owns: sRGB <-> CIE Lab (D65) conversion in torch and the per-frame Lab mean/std transfer
blended with the original frames, as the official pipeline applies it after VAE decode.
Must not know about models, sessions or devices beyond the tensors it is given: it runs
wherever its inputs live (CPU or GPU), always computing in float32 (never float64), and
returns the input's dtype.

The constants and clamps follow the official ``match_and_blend_colors_torch`` numerically
(including the clamp of normalised XYZ to at most 1.0), because its output becomes the
next chunk's motion latents.
"""

from __future__ import annotations

import torch

COMPUTE_DTYPE = torch.float32
"""Colour maths always runs in float32, whatever the input dtype."""

# sRGB transfer function (IEC 61966-2-1).
SRGB_DECODE_THRESHOLD = 0.04045
SRGB_ENCODE_THRESHOLD = 0.0031308
SRGB_OFFSET = 0.055
SRGB_SCALE = 1.055
SRGB_LINEAR_SLOPE = 12.92
SRGB_GAMMA = 2.4

# Linear sRGB -> XYZ and back, D65 white (rows: X, Y, Z / R, G, B).
XYZ_FROM_LINEAR_RGB = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
LINEAR_RGB_FROM_XYZ = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)
D65_WHITE_XYZ = (0.95047, 1.0, 1.08883)

# CIE Lab constants (the rounded values the official code uses).
LAB_EPSILON = 0.008856
LAB_KAPPA = 903.3
LAB_XYZ_FLOOR = 1e-8
"""Normalised XYZ is clamped to [1e-8, 1] before the cube root (avoids 0 ** (1/3))."""

STD_FLOOR = 1e-8
"""A frame channel with a smaller Lab standard deviation is only shifted, not scaled."""


def _apply_matrix(rows: tuple[tuple[float, float, float], ...], vec: torch.Tensor) -> torch.Tensor:
    """``rows @ vec`` over the last axis, with Python-float coefficients.

    Written as per-channel multiply-adds so no constant tensor is created or copied to the
    device per call (a host-to-device copy of a constant would synchronise the stream).
    """
    c0, c1, c2 = vec.unbind(-1)  # each [...]
    return torch.stack([r0 * c0 + r1 * c1 + r2 * c2 for r0, r1, r2 in rows], dim=-1)  # [..., 3]


def _scale_channels(vec: torch.Tensor, scales: tuple[float, float, float]) -> torch.Tensor:
    """Multiply each channel of ``vec`` [..., 3] by a Python-float scale."""
    return torch.stack([c * k for c, k in zip(vec.unbind(-1), scales)], dim=-1)  # [..., 3]


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE Lab (D65). Any shape with channels last: [..., 3]."""
    # 1. Undo the sRGB transfer curve.
    linear = torch.where(
        rgb > SRGB_DECODE_THRESHOLD,
        ((rgb + SRGB_OFFSET) / SRGB_SCALE) ** SRGB_GAMMA,
        rgb / SRGB_LINEAR_SLOPE,
    )  # [..., 3]
    # 2. Linear RGB -> XYZ, normalised by the D65 white point.
    xyz = _apply_matrix(XYZ_FROM_LINEAR_RGB, linear)  # [..., 3]
    white_x, white_y, white_z = D65_WHITE_XYZ
    xyz = _scale_channels(xyz, (1.0 / white_x, 1.0 / white_y, 1.0 / white_z))
    xyz = xyz.clamp(LAB_XYZ_FLOOR, 1.0)
    # 3. XYZ -> Lab.
    f = torch.where(xyz > LAB_EPSILON, xyz ** (1.0 / 3.0), (LAB_KAPPA * xyz + 16.0) / 116.0)
    fx, fy, fz = f.unbind(-1)  # each [...]
    lightness = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack([lightness, a, b], dim=-1)  # [..., 3]


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) -> sRGB clamped to [0, 1]. Any shape with channels last: [..., 3]."""
    lightness, a, b = lab.unbind(-1)  # each [...]
    # 1. Lab -> normalised XYZ.
    fy = (lightness + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = fy - b / 200.0
    x = torch.where(fx**3 > LAB_EPSILON, fx**3, (116.0 * fx - 16.0) / LAB_KAPPA)
    y = torch.where(lightness > LAB_KAPPA * LAB_EPSILON, fy**3, lightness / LAB_KAPPA)
    z = torch.where(fz**3 > LAB_EPSILON, fz**3, (116.0 * fz - 16.0) / LAB_KAPPA)
    xyz = torch.stack([x, y, z], dim=-1)  # [..., 3]
    xyz = _scale_channels(xyz, D65_WHITE_XYZ)
    # 2. XYZ -> linear RGB.
    linear = _apply_matrix(LINEAR_RGB_FROM_XYZ, xyz)  # [..., 3]
    # 3. Apply the sRGB transfer curve (negative values take the linear branch).
    rgb = torch.where(
        linear > SRGB_ENCODE_THRESHOLD,
        SRGB_SCALE * linear.clamp_min(SRGB_ENCODE_THRESHOLD) ** (1.0 / SRGB_GAMMA) - SRGB_OFFSET,
        SRGB_LINEAR_SLOPE * linear,
    )
    return rgb.clamp(0.0, 1.0)


def match_and_blend_colors(
    video: torch.Tensor, reference: torch.Tensor, strength: float
) -> torch.Tensor:
    """Transfer the reference image's Lab mean/std onto every frame, blended by ``strength``.

    Args:
        video: [B, 3, T, H, W] frames in [-1, 1] (any float dtype).
        reference: [B, 3, 1, H, W] reference image in [-1, 1].
        strength: 0 returns a copy of ``video``; 1 is the full colour transfer.

    Returns:
        [B, 3, T, H, W] in [-1, 1], same dtype and device as ``video``.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour correction strength must be in [0, 1], got {strength}")
    batch, channels, _, height, width = video.shape
    if channels != 3:
        raise ValueError(
            f"colour correction needs RGB video [B, 3, T, H, W], got {tuple(video.shape)}"
        )
    if tuple(reference.shape) != (batch, channels, 1, height, width):
        raise ValueError(
            f"reference must be [B, 3, 1, H, W] = {(batch, channels, 1, height, width)}, "
            f"got {tuple(reference.shape)}"
        )
    if strength == 0.0:
        return video.clone()

    # 1. [-1, 1] -> [0, 1], channels last, float32.
    source = ((video.to(COMPUTE_DTYPE) + 1.0) / 2.0).permute(0, 2, 3, 4, 1)  # [B, T, H, W, 3]
    ref = (reference.to(device=video.device, dtype=COMPUTE_DTYPE) + 1.0) / 2.0
    ref = ref.permute(0, 2, 3, 4, 1)  # [B, 1, H, W, 3]

    # 2. Both to Lab.
    source_lab = rgb_to_lab(source)  # [B, T, H, W, 3]
    ref_lab = rgb_to_lab(ref)  # [B, 1, H, W, 3]

    # 3. Per-frame, per-channel statistics over H and W (population std).
    ref_mean = ref_lab.mean(dim=(2, 3), keepdim=True)  # [B, 1, 1, 1, 3]
    ref_std = ref_lab.std(dim=(2, 3), keepdim=True, unbiased=False)  # [B, 1, 1, 1, 3]
    src_mean = source_lab.mean(dim=(2, 3), keepdim=True)  # [B, T, 1, 1, 3]
    src_std = source_lab.std(dim=(2, 3), keepdim=True, unbiased=False)  # [B, T, 1, 1, 3]
    src_std = torch.where(src_std < STD_FLOOR, torch.ones_like(src_std), src_std)

    # 4. Move each frame's statistics onto the reference's and go back to RGB.
    corrected_lab = (source_lab - src_mean) * (ref_std / src_std) + ref_mean  # [B, T, H, W, 3]
    corrected = lab_to_rgb(corrected_lab)  # [B, T, H, W, 3]

    # 5. Blend with the original frames, back to [B, 3, T, H, W] in [-1, 1].
    blended = (1.0 - strength) * source + strength * corrected  # [B, T, H, W, 3]
    out = blended.permute(0, 4, 1, 2, 3) * 2.0 - 1.0  # [B, 3, T, H, W]
    return out.contiguous().to(video.dtype)

"""3-axis rotary position embedding (RoPE) of the Wan DiT, in real arithmetic.

Owns: the split of a head's channels between the frame, row and column axes, the rotation
angles of a token grid, and applying the rotation to ``[B, L, heads, head_dim]`` queries or
keys. Channels are rotated in interleaved pairs ``(2i, 2i+1)`` as the official complex
formulation does (a pair is one complex number), but with float32 ``cos``/``sin`` tables
instead of complex float64, so it runs the same on CPU, GPU and under ``torch.compile``.
Knows nothing about attention, checkpoints or the rest of the model.
"""

from __future__ import annotations

import torch

ROPE_THETA = 10_000.0
"""Base of the rotary frequencies (wavelengths grow as ``theta ** (2i / axis_dim)``)."""

ROPE_MAX_POSITIONS = 1024
"""Largest grid size per axis; the official model builds its tables for positions 0..1023."""

ROPE_AXES = 3
"""Positions are (latent frame, patch row, patch column)."""


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real channels rotated by the frame, row and column position (they sum to ``head_dim``).

    The official split: ``2 * (head_dim // 6)`` channels each for rows and columns, the rest
    (the largest share) for frames. ``head_dim`` 128 -> (44, 42, 42).
    """
    if head_dim % 2 or head_dim < 2 * ROPE_AXES:
        raise ValueError(f"RoPE needs an even head_dim of at least {2 * ROPE_AXES}, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _inverse_frequencies(axis_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """``theta ** (-2i / axis_dim)`` for i < axis_dim / 2, in float32 on ``device``."""
    exponents = torch.arange(0, axis_dim, 2, dtype=torch.float32, device=device) / axis_dim
    return torch.pow(theta, -exponents)  # [axis_dim / 2]


def rope_angles(
    grid: tuple[int, int, int],
    head_dim: int,
    *,
    device: torch.device | str = "cpu",
    theta: float = ROPE_THETA,
) -> torch.Tensor:
    """Rotation angles (radians, float32) of every token of a ``(frames, rows, cols)`` grid.

    Returns ``[frames * rows * cols, head_dim // 2]``, tokens in row-major grid order (frame
    slowest), one angle per channel pair: first the frame pairs, then row, then column.
    """
    if any(size > ROPE_MAX_POSITIONS for size in grid):
        raise ValueError(
            f"token grid {tuple(grid)} exceeds {ROPE_MAX_POSITIONS} positions on an axis; "
            "use a smaller resolution or fewer frames"
        )
    device = torch.device(device)
    frames, rows, cols = grid
    per_axis = []
    for axis, (size, axis_dim) in enumerate(zip(grid, rope_axis_dims(head_dim))):
        positions = torch.arange(size, dtype=torch.float32, device=device)  # [size]
        angles = torch.outer(positions, _inverse_frequencies(axis_dim, theta, device))
        view = [1, 1, 1, axis_dim // 2]
        view[axis] = size
        per_axis.append(angles.view(view).expand(frames, rows, cols, axis_dim // 2))
    return torch.cat(per_axis, dim=-1).reshape(frames * rows * cols, head_dim // 2)


def rope_cos_sin(
    grid: tuple[int, int, int],
    head_dim: int,
    *,
    device: torch.device | str = "cpu",
    theta: float = ROPE_THETA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` tables for :func:`apply_rope`, each ``[L, 1, head_dim // 2]`` float32."""
    angles = rope_angles(grid, head_dim, device=device, theta=theta)  # [L, head_dim/2]
    return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


Grid = tuple[int, int, int]
"""A token grid: (latent frames, patch rows, patch columns)."""


class RopeTableCache:
    """``rope_cos_sin`` tables of each (token grid, device), computed once and kept.

    The tables are constants, so the cache is not model state. Under ``torch.compile`` they
    are computed inside the traced graph instead (and become its constants).
    """

    def __init__(self, head_dim: int) -> None:
        self.head_dim = head_dim
        self._tables: dict[tuple[Grid, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, grid: Grid, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos``, ``sin`` ``[L, 1, head_dim / 2]`` float32 of ``grid`` on ``device``."""
        if torch.compiler.is_compiling():
            return rope_cos_sin(grid, self.head_dim, device=device)
        key = (grid, device)
        if key not in self._tables:
            self._tables[key] = rope_cos_sin(grid, self.head_dim, device=device)
        return self._tables[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` ``[B, L, heads, head_dim]``; computed in float32.

    Pair ``(a, b)`` at angle ``phi`` becomes ``(a cos phi - b sin phi, a sin phi + b cos phi)``,
    i.e. the complex product ``(a + ib) * exp(i phi)``. Returns ``x``'s dtype.
    """
    pairs = torch.unflatten(x.float(), -1, (-1, 2))  # [B, L, heads, head_dim/2, 2]
    real, imag = pairs.unbind(-1)  # each [B, L, heads, head_dim/2]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)  # [B, L, heads, head_dim]

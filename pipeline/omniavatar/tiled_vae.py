"""Tiled encode and decode with the Wan 2.1 VAE, blended as OmniAvatar does it.

Owns: the tile plan over H and W (tile size and stride; a tile whose predecessor already
reaches the border is dropped, the last one is cut at the border), the linear blending
ramps over each overlap (none on the picture's own borders), and ``TiledVAE``, which runs
``pipeline.vae.WanVAE`` tile by tile and blends the results. Encode tiles are given in
latent units and scaled to pixels (the official call passes (34, 34) / (18, 16): 272-px
tiles every 144 / 128 px); decode tiles are in latent units (30 x 52 every 15 x 26).

Must not know about the DiT, sampling or frames on disk. Tiling changes results near tile
seams compared with one whole-frame pass, so the offline recipe keeps it by default; an
untiled call (``tiled=False``) is the whole-frame ``WanVAE`` computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from headcast.pipeline.vae import VIDEO_RANGE, WanVAE
from headcast.pipeline.vae_blocks import VIDEO_CHANNELS

ENCODE_TILE_LATENTS = (34, 34)
"""Official encode tile (H, W) in latent units (x8 = 272 px)."""

ENCODE_STRIDE_LATENTS = (18, 16)
"""Official encode tile stride (H, W) in latent units (x8 = 144 / 128 px)."""

DECODE_TILE_LATENTS = (30, 52)
"""Official decode tile (H, W) in latent units (240 x 416 px)."""

DECODE_STRIDE_LATENTS = (15, 26)
"""Official decode tile stride (H, W) in latent units."""


@dataclass(frozen=True)
class Tile:
    """One tile: rows ``[top, bottom)`` and columns ``[left, right)`` (may pass the border)."""

    top: int
    bottom: int
    left: int
    right: int


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride``, skipping a start whose previous tile
    already reaches ``size``."""
    return [
        start
        for start in range(0, size, stride)
        if not (start - stride >= 0 and start - stride + tile >= size)
    ]


def tile_plan(
    height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]
) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` plane, rows outer, columns inner."""
    tile_h, tile_w = tile
    stride_h, stride_w = stride
    return [
        Tile(top, top + tile_h, left, left + tile_w)
        for top in _starts(height, tile_h, stride_h)
        for left in _starts(width, tile_w, stride_w)
    ]


def blend_ramp(length: int, ramp_start: bool, ramp_end: bool, width: int) -> torch.Tensor:
    """1-D weights ``[length]``: 1, with linear ramps (1/width .. 1) over ``width`` cells at
    the ends that overlap a neighbour."""
    weights = torch.ones(length)
    ramp = (torch.arange(width) + 1) / width  # [width]: 1/width .. 1
    if ramp_start:
        weights[:width] = ramp
    if ramp_end:
        weights[-width:] = ramp.flip(0)
    return weights


def blend_mask(
    height: int, width: int, inner: tuple[bool, bool, bool, bool], border: tuple[int, int]
) -> torch.Tensor:
    """Tile weights ``[1, 1, 1, height, width]``: the smaller of the row and column ramps.

    ``inner`` says which sides (top, bottom, left, right) overlap another tile;
    ``border`` is the ramp width (rows, columns).
    """
    top, bottom, left, right = inner
    rows = blend_ramp(height, top, bottom, border[0])  # [height]
    cols = blend_ramp(width, left, right, border[1])  # [width]
    mask = torch.minimum(rows[:, None].expand(height, width), cols[None, :].expand(height, width))
    return mask.view(1, 1, 1, height, width)


def _overlap(tile: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Cells (rows, columns) that neighbouring tiles share: the width of the blending ramps."""
    return tile[0] - stride[0], tile[1] - stride[1]


def _run_tiled(
    source: torch.Tensor,
    run: Callable[[torch.Tensor], torch.Tensor],
    tiles: list[Tile],
    scale: float,
    border: tuple[int, int],
    out_shape: tuple[int, ...],
) -> torch.Tensor:
    """Run ``run`` on every tile of ``source`` ``[B, C, T, H, W]`` and blend into ``out_shape``.

    ``scale`` maps source cells to output cells (8 for decode, 1/8 for encode).
    """
    height, width = source.shape[-2:]
    values = torch.zeros(out_shape, dtype=torch.float32, device=source.device)
    weight = torch.zeros((1, 1, *out_shape[2:]), dtype=torch.float32, device=source.device)
    for tile in tiles:
        piece = run(
            source[..., tile.top : tile.bottom, tile.left : tile.right]
        )  # [B, C', T', h, w]
        inner = (tile.top > 0, tile.bottom < height, tile.left > 0, tile.right < width)
        piece_h, piece_w = piece.shape[-2:]
        mask = blend_mask(piece_h, piece_w, inner, border).to(piece.device)  # [1, 1, 1, h, w]
        top, left = int(tile.top * scale), int(tile.left * scale)
        rows = slice(top, top + piece_h)
        cols = slice(left, left + piece_w)
        values[..., rows, cols] += piece.float() * mask
        weight[..., rows, cols] += mask
    return values / weight


class TiledVAE:
    """``WanVAE`` encode/decode over overlapping spatial tiles with linear blending."""

    def __init__(
        self,
        vae: WanVAE,
        *,
        encode_tile: tuple[int, int] = ENCODE_TILE_LATENTS,
        encode_stride: tuple[int, int] = ENCODE_STRIDE_LATENTS,
        decode_tile: tuple[int, int] = DECODE_TILE_LATENTS,
        decode_stride: tuple[int, int] = DECODE_STRIDE_LATENTS,
        tiled: bool = True,
    ) -> None:
        for name, size, step in (
            ("encode", encode_tile, encode_stride),
            ("decode", decode_tile, decode_stride),
        ):
            if not all(0 < s <= t for s, t in zip(step, size)):
                raise ValueError(
                    f"{name} tile stride {step} must be positive and at most the tile {size}"
                )
        self.vae = vae
        self.encode_tile = encode_tile
        self.encode_stride = encode_stride
        self.decode_tile = decode_tile
        self.decode_stride = decode_stride
        self.tiled = tiled

    @property
    def stride(self) -> int:
        """Pixels per latent cell (8)."""
        return self.vae.config.spatial_stride

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1] -> normalised latents ``[B, 16, T', H/8, W/8]``
        float32 (``T = 1 + 4 (T' - 1)``)."""
        if not self.tiled:
            return self.vae.encode(video)
        px = self.stride
        batch, _, frames, height, width = video.shape
        tiles = tile_plan(
            height,
            width,
            (self.encode_tile[0] * px, self.encode_tile[1] * px),
            (self.encode_stride[0] * px, self.encode_stride[1] * px),
        )
        border = _overlap(self.encode_tile, self.encode_stride)
        latent_frames = (frames - 1) // self.vae.config.temporal_stride + 1
        out_shape = (batch, self.vae.config.z_dim, latent_frames, height // px, width // px)
        return _run_tiled(video, self.vae.encode, tiles, 1 / px, border, out_shape)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 16, T', h, w]`` -> video ``[B, 3, 1 + 4 (T' - 1), 8h, 8w]`` float32
        in [-1, 1] (tiles blended unclamped, then clamped)."""
        if not self.tiled:
            return self.vae.decode(latents)
        px = self.stride
        batch, _, frames, height, width = latents.shape
        tiles = tile_plan(height, width, self.decode_tile, self.decode_stride)
        overlap_h, overlap_w = _overlap(self.decode_tile, self.decode_stride)
        border = (overlap_h * px, overlap_w * px)
        video_frames = 1 + self.vae.config.temporal_stride * (frames - 1)
        out_shape = (batch, VIDEO_CHANNELS, video_frames, height * px, width * px)

        def decode_tile(piece: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(piece, clamp=False)

        video = _run_tiled(latents, decode_tile, tiles, px, border, out_shape)
        return video.clamp_(*VIDEO_RANGE)

"""Row bands of the VAE: which input rows a band of output rows needs, and running a band.

Owns the row arithmetic of the VAE's layers (``rows_needed``: the input rows an output band
reads; its convolutions are 3x3 with zero padding, the resamplings 2x), ``BandPlan`` /
``plan_band`` (for a stack of layers and a band of its output rows: the input rows to take
and where to crop on the way), ``run_band`` (run the stack on that band) and ``RowShare``
(a band plan plus, for an encode, the gather of every rank's rows at latent resolution).

How a band stays exact: a row of a layer's output depends only on a few rows of its input,
so the band's input rows are widened by the stack's receptive field (its *halo*) and, at
the band's interior edges, the convolutions' zero padding spoils only rows that are cut away
later. Rows at the image's true top and bottom keep their real zero padding. The band is
cropped back to the rows still needed after every spatial upsampling and before every
downsampling (a stride-2 convolution must start on an even row), so the halo shrinks as the
resolution grows and each stage computes only a few rows more than its share.
The causal temporal caches need nothing special: every chunk of a call runs the same band,
so each layer caches the same rows.

The decoder's middle block (global spatial attention over the frame) and everything before it
are not banded (they run at latent resolution on the whole frame); for an encode the bands
meet at latent resolution before the encoder's middle block. Knows nothing about process
groups: the caller gathers the bands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from headcast.pipeline.vae_blocks import (
    SPATIAL_SCALE,
    AttentionBlock,
    CausalCache,
    PadRightBottom,
    Resample,
    ResidualBlock,
    RMSNorm,
    SpatialUpsample,
    run_causal,
)

Rows = tuple[int, int]
"""Rows ``[start, stop)`` of a feature map, counted from the top of the whole image."""

RowGather = Callable[[torch.Tensor], torch.Tensor]
"""Every rank's band ``[B, C, T, rows, W]`` -> the whole ``[B, C, T, H, W]``."""

ROW_DIM = 3
"""The row (height) dimension of the VAE's ``[B, C, T, H, W]`` tensors."""

_ROW_LOCAL = (RMSNorm, nn.SiLU, nn.Identity, nn.Dropout, PadRightBottom)
"""Layers whose output row ``i`` depends only on input row ``i`` (``PadRightBottom`` adds a
zero row below the last, which ``plan_band`` treats as outside the image)."""


def rows_needed(layer: nn.Module, rows: Rows) -> Rows:
    """The input rows (not clipped to the image) that output ``rows`` of ``layer`` read."""
    start, stop = rows
    if isinstance(layer, nn.Sequential):
        for child in reversed(layer):
            start, stop = rows_needed(child, (start, stop))
        return start, stop
    if isinstance(layer, ResidualBlock):
        residual = rows_needed(layer.residual, rows)
        shortcut = rows_needed(layer.shortcut, rows)
        return min(residual[0], shortcut[0]), max(residual[1], shortcut[1])
    if isinstance(layer, Resample):  # the temporal convs are 1x1 in space
        return rows_needed(layer.resample, rows)
    if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
        axis = 0 if isinstance(layer, nn.Conv2d) else 1  # rows: (kh, kw) or (kt, kh, kw)
        kernel, padding, stride = layer.kernel_size[axis], layer.padding[axis], layer.stride[axis]
        if not isinstance(padding, int):
            raise ValueError(f"{type(layer).__name__} has padding {padding!r}: not bandable")
        return start * stride - padding, (stop - 1) * stride - padding + kernel
    if isinstance(layer, SpatialUpsample):
        return start // SPATIAL_SCALE, -(-stop // SPATIAL_SCALE)
    if isinstance(layer, _ROW_LOCAL):
        return rows
    if isinstance(layer, AttentionBlock):
        raise ValueError(
            "a VAE attention block attends over the whole frame: it cannot run on a band of "
            "rows (row bands need a VAE whose stages have no attention, as Wan 2.1's)"
        )
    raise TypeError(f"no row arithmetic for {type(layer).__name__}")


def _is_upsample(layer: nn.Module) -> bool:
    return isinstance(layer, Resample) and layer.mode.startswith("upsample")


def _is_downsample(layer: nn.Module) -> bool:
    return isinstance(layer, Resample) and layer.mode.startswith("downsample")


def height_after(layer: nn.Module, height: int) -> int:
    """Rows of ``layer``'s output for an input of ``height`` rows."""
    if _is_upsample(layer):
        return height * SPATIAL_SCALE
    if _is_downsample(layer):  # one zero row below, then a stride-2 3-row convolution
        return (height + 1 - 3) // SPATIAL_SCALE + 1
    return height


def start_after(layer: nn.Module, start: int) -> int:
    """The image row of the first output row of ``layer`` run on a band from ``start``."""
    if _is_upsample(layer):
        return start * SPATIAL_SCALE
    if _is_downsample(layer):
        if start % SPATIAL_SCALE:
            raise ValueError(f"a stride-2 band must start on an even row, not {start}")
        return start // SPATIAL_SCALE
    return start


@dataclass(frozen=True)
class BandPlan:
    """How one band of a layer stack's output rows is computed."""

    input_rows: Rows
    """Rows of the stack's input to take."""
    keep: tuple[Rows | None, ...]
    """Per layer: the rows of its output to keep (a crop), or None to keep them all."""

    @property
    def output_rows(self) -> Rows:
        """The band of the stack's output (the rows of the last crop)."""
        last = self.keep[-1]
        assert last is not None, "plan_band always crops after the last layer"
        return last


def plan_band(layers: Sequence[nn.Module], height: int, output_rows: Rows) -> BandPlan:
    """The plan that computes ``output_rows`` of ``layers`` run on an input of ``height`` rows."""
    heights = [height]
    for layer in layers:
        heights.append(height_after(layer, heights[-1]))
    if not 0 <= output_rows[0] < output_rows[1] <= heights[-1]:
        raise ValueError(f"output rows {output_rows} outside the {heights[-1]} rows of the output")
    needed: list[Rows] = [output_rows] * len(layers)  # output rows each layer must get right
    rows = output_rows
    for index in reversed(range(len(layers))):
        needed[index] = rows
        start, stop = rows_needed(layers[index], rows)
        rows = (max(start, 0), min(stop, heights[index]))
    crop = [
        _is_upsample(layer) or index == len(layers) - 1 or _is_downsample(layers[index + 1])
        for index, layer in enumerate(layers)
    ]
    return BandPlan(rows, tuple(needed[i] if crop[i] else None for i in range(len(layers))))


def take_rows(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of ``x`` ``[B, C, T, H, W]`` as a dense tensor in ``x``'s layout."""
    rows = x[:, :, :, start:stop]
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return rows.contiguous(memory_format=torch.channels_last_3d)
    return rows.contiguous()


def run_band(
    layers: Sequence[nn.Module], x: torch.Tensor, cache: CausalCache, plan: BandPlan
) -> torch.Tensor:
    """``layers`` on the plan's band of ``x`` (the whole input, ``[B, C, T, H, W]``):
    returns the plan's ``output_rows`` of the output."""
    if len(layers) != len(plan.keep):
        raise ValueError(f"the plan is for {len(plan.keep)} layers, not {len(layers)}")
    start = plan.input_rows[0]
    x = take_rows(x, *plan.input_rows)  # [B, C, T, band, W]
    for layer, keep in zip(layers, plan.keep):
        x = run_causal((layer,), x, cache)
        start = start_after(layer, start)
        if keep is not None:
            if not start <= keep[0] < keep[1] <= start + x.shape[ROW_DIM]:
                raise RuntimeError(
                    f"band rows {keep} are not inside the computed rows from {start}"
                )
            x = take_rows(x, keep[0] - start, keep[1] - start)
            start = keep[0]
    return x


@dataclass(frozen=True)
class RowShare:
    """One rank's share of a VAE call: the band it computes and, for an encode, how every
    rank's latent-resolution rows are gathered before the encoder's middle block."""

    plan: BandPlan
    gather: RowGather | None = None

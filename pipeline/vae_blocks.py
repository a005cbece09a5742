"""Building blocks of the Wan 2.1 causal video VAE, streamed through a per-call cache.

Owns: the causal 3-D convolution, the channel RMS norm, the residual, attention and
resampling blocks, the encoder and decoder stacks, and ``CausalCache``, the object that
carries each causal layer's past frames from one temporal chunk to the next. Parameter
names and shapes follow the official ``Wan2.1_VAE.pth`` (``residual.0.gamma``,
``resample.1.weight``, ``time_conv.weight``...).

Must not know: checkpoint files, latent normalisation, how a video is split into chunks
(``pipeline.vae`` decides that) or any session state. No block stores per-call data on
itself: everything that lives from one chunk to the next is in the ``CausalCache`` the
caller passes in, so one loaded model can serve several threads at once.

All tensors are ``[B, C, T, H, W]`` (5-D) throughout, including the per-frame 2-D
convolutions (run as ``(1, k, k)`` 3-D convolutions on a view of the 2-D weight), so no
block hard-codes a dtype or a memory format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

CACHE_T = 2
"""Frames of history kept per causal layer: what a kernel-3 causal conv needs (frames)."""

VIDEO_CHANNELS = 3
"""RGB channels of the video the encoder takes and the decoder returns."""

CAUSAL_KERNEL_T = 3
"""Temporal kernel size of the causal convolutions (frames)."""

SPATIAL_KERNEL = 3
"""Spatial kernel size of the 3x3 convolutions (pixels)."""

SPATIAL_SCALE = 2
"""Spatial up/down-sampling factor of one resample block (per axis)."""

TEMPORAL_SCALE = 2
"""Temporal up/down-sampling factor of one 3-D resample block."""

ResampleMode = Literal["none", "upsample2d", "upsample3d", "downsample2d", "downsample3d"]


class CausalCache:
    """Past frames of every causal layer during one encode or decode call.

    Create one per call and pass it to every chunk of that call; never share it between
    calls or threads. Layers are keys (by identity), so no layer needs an index.
    """

    def __init__(self) -> None:
        self._frames: dict[nn.Module, torch.Tensor] = {}
        self._visited: set[nn.Module] = set()

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        """The frames ``layer`` stored on the previous chunk, or None on the first."""
        return self._frames.get(layer)

    def put(self, layer: nn.Module, frames: torch.Tensor) -> None:
        """Remember ``frames`` (``[B, C, t, H, W]``, an owned copy) for ``layer``."""
        self._frames[layer] = frames

    def first_visit(self, layer: nn.Module) -> bool:
        """True exactly once per layer: on the first chunk that reaches it."""
        if layer in self._visited:
            return False
        self._visited.add(layer)
        return True


def _per_frame_weight(conv: nn.Conv2d) -> torch.Tensor:
    """A 2-D conv weight ``[O, I, kh, kw]`` viewed as a 3-D one ``[O, I, 1, kh, kw]``."""
    return conv.weight.unsqueeze(2)


class FrameConv2d(nn.Conv2d):
    """A 2-D convolution (checkpoint shape ``[O, I, kh, kw]``) applied to every frame of a
    ``[B, C, T, H, W]`` tensor, without folding T into the batch (no permute copies)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, I, T, H, W] -> [B, O, T, H', W']
        return F.conv3d(
            x,
            _per_frame_weight(self),
            self.bias,
            stride=(1, *self.stride),
            padding=(0, *self.padding),  # int pairs for a Conv2d
        )


class CausalConv3d(nn.Conv3d):
    """A 3-D convolution that only looks at past frames.

    Spatial padding is symmetric (done inside the convolution); temporal padding is
    ``2 * padding_t`` frames in front only, filled from the cache (the previous chunk's last
    input frames) and then with zeros. The result over a sequence of chunks equals one
    causal convolution over the whole video.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel: int | tuple[int, int, int],
        *,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        pad_t, pad_h, pad_w = (padding, padding, padding) if isinstance(padding, int) else padding
        super().__init__(in_dim, out_dim, kernel, padding=(0, pad_h, pad_w))
        self.time_padding = 2 * pad_t
        """Past frames the convolution reads before the first frame of a chunk."""
        if self.time_padding > CACHE_T:
            raise ValueError(
                f"causal padding of {self.time_padding} frames exceeds CACHE_T={CACHE_T}"
            )

    # A causal convolution needs the chunk cache: it is never called as a plain Conv3d (it is
    # one for its weights and for the row arithmetic of ``pipeline.vae_bands``).
    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:  # type: ignore[override]
        # x: [B, I, t, H, W] -> [B, O, t, H, W]
        if self.time_padding == 0:
            return super().forward(x)
        # 1. Prepend the previous chunk's input frames, then zeros up to the causal padding.
        past = cache.get(self)
        frames = x if past is None else torch.cat([past, x], dim=2)  # [B, I, p + t, H, W]
        missing = self.time_padding - (frames.shape[2] - x.shape[2])
        if missing > 0:
            frames = F.pad(frames, (0, 0, 0, 0, missing, 0))  # [B, I, 2p + t, H, W]
        # 2. Keep the last CACHE_T input frames for the next chunk (a copy, so this chunk's
        #    tensors can be freed).
        cache.put(self, frames[:, :, -CACHE_T:].clone())
        # 3. Convolve: exactly t output frames.
        return super().forward(frames)


NORM_EPS = 1e-12
"""Floor of the channel norm (``F.normalize``'s default epsilon)."""

NormSiLU = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x [B, C, T, H, W], gain [C, 1, 1, 1]) -> silu(x / ||x||_C * gain), x's dtype."""


def rms_norm_silu(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``silu(x / max(||x||_2 over C, eps) * gain)`` computed in float32, returned in x's dtype.

    One pass over ``x`` once compiled (``WanVAE.fuse_norms``); eager it is the reference
    the fused kernel is checked against.
    """
    x32 = x.float()  # [B, C, T, H, W]
    norm = x32.square().sum(dim=1, keepdim=True).sqrt().clamp_min(NORM_EPS)  # [B, 1, T, H, W]
    return F.silu(x32 / norm * gain.float()).to(x.dtype)


class RMSNorm(nn.Module):
    """RMS normalisation over the channel axis (dim 1), with a learned per-channel gain.

    ``x / ||x||_2 * sqrt(C) * gamma``, as ``F.normalize`` computes it (eps 1e-12).
    ``gamma`` is ``[C, 1, 1, 1]`` for video blocks and ``[C, 1, 1]`` for the attention
    block (checkpoint shapes); both broadcast over a ``[B, C, T, H, W]`` input.

    With ``norm_silu`` set (see :func:`fuse_norm_silu`) the norm also applies the SiLU that
    follows it in its block, in one fused function.
    """

    def __init__(self, dim: int, *, images: bool = False) -> None:
        super().__init__()
        gain_shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale: float = dim**0.5
        self.gamma = nn.Parameter(torch.ones(gain_shape))
        self.norm_silu: NormSiLU | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W]
        gain = self.gamma.view(-1, 1, 1, 1) * self.scale  # [C, 1, 1, 1]
        if self.norm_silu is not None:
            return self.norm_silu(x, gain)
        return F.normalize(x, dim=1) * gain


def fuse_norm_silu(layers: nn.Sequential, norm_silu: NormSiLU) -> int:
    """Let every ``RMSNorm`` directly followed by a ``SiLU`` in ``layers`` apply both through
    ``norm_silu``; the SiLU becomes an identity (no parameters move). Returns pairs fused."""
    fused = 0
    for index in range(len(layers) - 1):
        norm, activation = layers[index], layers[index + 1]
        if isinstance(norm, RMSNorm) and isinstance(activation, nn.SiLU):
            norm.norm_silu = norm_silu
            layers[index + 1] = nn.Identity()
            fused += 1
    return fused


class SpatialUpsample(nn.Module):
    """Nearest-neighbour 2x spatial upsampling of every frame (no parameters).

    At an integer scale nearest-exact sampling repeats each pixel, so this is one broadcast
    copy (in the input's memory layout) instead of the slower 3-D interpolation kernel;
    the values are identical to ``F.interpolate(mode="nearest-exact")``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B, C, T, 2H, 2W]
        b, c, t, h, w = x.shape
        s = SPATIAL_SCALE
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            pixels = x.permute(0, 2, 3, 4, 1)  # [B, T, H, W, C], contiguous
            up = pixels[:, :, :, None, :, None, :].expand(b, t, h, s, w, s, c)
            return up.reshape(b, t, h * s, w * s, c).permute(0, 4, 1, 2, 3)  # channels-last
        up = x[:, :, :, :, None, :, None].expand(b, c, t, h, s, w, s)
        return up.reshape(b, c, t, h * s, w * s)


class PadRightBottom(nn.Module):
    """One zero column on the right and one zero row at the bottom of every frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B, C, T, H+1, W+1]
        return F.pad(x, (0, 1, 0, 1))


class Resample(nn.Module):
    """Spatial (and optionally temporal) 2x up- or down-sampling.

    - ``upsample2d``: nearest 2x, then a 3x3 conv halving the channels.
    - ``upsample3d``: a causal temporal conv producing two frames per frame (skipped on the
      first chunk, so the first latent frame stays one frame), then as ``upsample2d``.
    - ``downsample2d``: a stride-2 3x3 conv after padding right/bottom.
    - ``downsample3d``: as ``downsample2d``, then a stride-2 temporal conv over
      ``[last frame of the previous chunk, this chunk]`` (the first chunk passes through).
    """

    def __init__(self, dim: int, mode: ResampleMode) -> None:
        super().__init__()
        self.mode = mode
        self.time_conv: nn.Conv3d  # causal (upsample3d, takes the cache) or strided (downsample3d)
        self.resample: nn.Module
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(
                SpatialUpsample(), FrameConv2d(dim, dim // 2, SPATIAL_KERNEL, padding=1)
            )
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(
                PadRightBottom(), FrameConv2d(dim, dim, SPATIAL_KERNEL, stride=SPATIAL_SCALE)
            )
        elif mode == "none":
            self.resample = nn.Identity()
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(
                dim, dim * TEMPORAL_SCALE, (CAUSAL_KERNEL_T, 1, 1), padding=(1, 0, 0)
            )
        elif mode == "downsample3d":
            self.time_conv = nn.Conv3d(
                dim, dim, (CAUSAL_KERNEL_T, 1, 1), stride=(TEMPORAL_SCALE, 1, 1)
            )

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # x: [B, C, t, H, W]
        # 1. Temporal upsampling happens before the spatial one (at the low resolution).
        if self.mode == "upsample3d" and not cache.first_visit(self):
            x = self._double_frames(self.time_conv(x, cache))  # [B, C, 2t, H, W]
        # 2. Spatial resampling of every frame.
        x = self.resample(x)  # [B, C', t', H', W']
        # 3. Temporal downsampling after the spatial one, over the previous chunk's last frame
        #    and this chunk (first chunk: keep it as is).
        if self.mode == "downsample3d":
            past = cache.get(self)
            cache.put(self, x[:, :, -1:].clone())
            if past is not None:
                x = self.time_conv(torch.cat([past, x], dim=2))  # [B, C, t/2, H', W']
        return x

    @staticmethod
    def _double_frames(x: torch.Tensor) -> torch.Tensor:
        # [B, 2C, t, H, W] -> [B, C, 2t, H, W]: frame 2i is channels [:C] at i, 2i+1 is [C:].
        b, c2, t, h, w = x.shape
        c = c2 // TEMPORAL_SCALE
        x = x.view(b, TEMPORAL_SCALE, c, t, h, w).permute(0, 2, 3, 1, 4, 5)  # [B, C, t, 2, H, W]
        return x.reshape(b, c, t * TEMPORAL_SCALE, h, w)


class ResidualBlock(nn.Module):
    """norm -> SiLU -> causal 3x3x3 conv -> norm -> SiLU -> dropout -> causal 3x3x3 conv,
    plus a 1x1x1 projection shortcut when the channel count changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(inplace=True),
            CausalConv3d(in_dim, out_dim, CAUSAL_KERNEL_T, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(inplace=True),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, CAUSAL_KERNEL_T, padding=1),
        )
        self.shortcut: nn.Module = (
            nn.Conv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # x: [B, I, t, H, W] -> [B, O, t, H, W]
        shortcut = self.shortcut(x)
        out = run_causal(self.residual, x, cache)
        return out.add_(shortcut)


class AttentionBlock(nn.Module):
    """Single-head self-attention among the pixels of each frame (no temporal mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = FrameConv2d(dim, dim * 3, 1)
        self.proj = FrameConv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        # 1. Normalise and project to queries, keys and values.
        qkv = self.to_qkv(self.norm(x))  # [B, 3C, t, H, W]
        qkv = qkv.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, 3 * c)  # [B*t, HW, 3C]
        q, k, v = qkv.chunk(3, dim=-1)  # 3 x [B*t, HW, C]
        # 2. Attention over the HW pixels of each frame.
        out = F.scaled_dot_product_attention(q, k, v)  # [B*t, HW, C]
        out = out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # [B, C, t, H, W]
        # 3. Output projection and residual.
        projected: torch.Tensor = self.proj(out)  # [B, C, t, H, W]
        return projected.add_(x)


_CAUSAL_LAYERS = (CausalConv3d, ResidualBlock, Resample)


def run_causal(layers: Iterable[nn.Module], x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    """Apply ``layers`` in order, passing ``cache`` to those that look at past frames."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, _CAUSAL_LAYERS) else layer(x)
    return x


class Encoder3d(nn.Module):
    """Video ``[B, 3, t, H, W]`` -> features ``[B, out_dim, t', H/s, W/s]``, one chunk at a time."""

    def __init__(
        self,
        *,
        dim: int,
        out_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temperal_downsample: Sequence[bool],
        dropout: float,
    ) -> None:
        super().__init__()
        dims = [dim * mult for mult in (1, *dim_mult)]
        scale = 1.0  # current resolution relative to the input
        self.conv1 = CausalConv3d(VIDEO_CHANNELS, dims[0], CAUSAL_KERNEL_T, padding=1)

        blocks: list[nn.Module] = []
        for stage, (stage_in, stage_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(stage_in, stage_out, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(stage_out))
                stage_in = stage_out
            if stage != len(dim_mult) - 1:
                temporal = temperal_downsample[stage]
                down: ResampleMode = "downsample3d" if temporal else "downsample2d"
                blocks.append(Resample(stage_out, down))
                scale /= SPATIAL_SCALE
        self.downsamples = nn.Sequential(*blocks)

        mid = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(mid, mid, dropout), AttentionBlock(mid), ResidualBlock(mid, mid, dropout)
        )
        self.head = nn.Sequential(
            RMSNorm(mid),
            nn.SiLU(inplace=True),
            CausalConv3d(mid, out_dim, CAUSAL_KERNEL_T, padding=1),
        )

    @property
    def row_layers(self) -> list[nn.Module]:
        """The layers before the middle block, in order (``conv1``, then the stages): no
        attention, so a band of output rows needs only a band of input rows."""
        return [self.conv1, *self.downsamples]

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # x: [B, 3, t, H, W]
        x = self.conv1(x, cache)  # 1. [B, dim, t, H, W]
        x = run_causal(self.downsamples, x, cache)  # 2. [B, 4*dim, t', H/8, W/8]
        return self.finish(x, cache)  # 3.-4. [B, out_dim, t', H/8, W/8]

    def finish(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The middle block (spatial attention over the whole frame) and the head."""
        x = run_causal(self.middle, x, cache)  # 3. [B, 4*dim, t', H/8, W/8]
        return run_causal(self.head, x, cache)  # 4. [B, out_dim, t', H/8, W/8]


class Decoder3d(nn.Module):
    """Latents ``[B, z_dim, t, h, w]`` -> video ``[B, 3, t', h*s, w*s]``, one chunk at a time."""

    def __init__(
        self,
        *,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temperal_upsample: Sequence[bool],
        dropout: float,
    ) -> None:
        super().__init__()
        dims = [dim * mult for mult in (dim_mult[-1], *dim_mult[::-1])]
        scale = 1.0 / SPATIAL_SCALE ** (len(dim_mult) - 2)  # resolution of the first stage
        self.conv1 = CausalConv3d(z_dim, dims[0], CAUSAL_KERNEL_T, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0], dropout),
            AttentionBlock(dims[0]),
            ResidualBlock(dims[0], dims[0], dropout),
        )

        blocks: list[nn.Module] = []
        for stage, (stage_in, stage_out) in enumerate(zip(dims[:-1], dims[1:])):
            if stage > 0:
                stage_in //= 2  # the previous stage's upsampling conv halved the channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(stage_in, stage_out, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(stage_out))
                stage_in = stage_out
            if stage != len(dim_mult) - 1:
                up: ResampleMode = "upsample3d" if temperal_upsample[stage] else "upsample2d"
                blocks.append(Resample(stage_out, up))
                scale *= SPATIAL_SCALE
        self.upsamples = nn.Sequential(*blocks)

        last = dims[-1]
        self.head = nn.Sequential(
            RMSNorm(last),
            nn.SiLU(inplace=True),
            CausalConv3d(last, VIDEO_CHANNELS, CAUSAL_KERNEL_T, padding=1),
        )

    @property
    def row_layers(self) -> list[nn.Module]:
        """The layers after the middle block, in order (the stages, then the head): no
        attention, so a band of output rows needs only a band of input rows."""
        return [*self.upsamples, *self.head]

    def trunk(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """``conv1`` and the middle block (spatial attention over the whole frame)."""
        x = self.conv1(x, cache)  # 1. [B, 4*dim, t, h, w]
        return run_causal(self.middle, x, cache)  # 2. same shape

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # x: [B, z_dim, t, h, w]
        x = self.trunk(x, cache)  # 1.-2. [B, 4*dim, t, h, w]
        x = run_causal(self.upsamples, x, cache)  # 3. [B, dim, t', 8h, 8w]
        return run_causal(self.head, x, cache)  # 4. [B, 3, t', 8h, 8w]

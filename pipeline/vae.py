"""The Wan 2.1 causal video VAE: config, model (official checkpoint keys) and loader.

Owns: ``VAEConfig`` (with the full-size ``wan21`` preset), ``WanVAE`` (encode video to
normalised latents, decode latents to video, both streamed through the causal conv cache in
temporal chunks), the latent normalisation constants, and ``load_vae`` for
``Wan2.1_VAE.pth``.

Must not know: sessions, audio, the DiT, colour correction or where frames go. The model
holds no per-call state: the causal cache is a ``CausalCache`` made inside each call, so one
loaded model may be called from several threads at once.

Encoding splits a video of ``1 + 4k`` frames into chunks of 1 then 4 frames (one latent
frame each); decoding runs one latent frame at a time (the first gives 1 frame, every later
one gives 4), exactly as the official ``WanVAE_`` does.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from headcast.pipeline.checkpoint import materialize, read_torch_state
from headcast.pipeline.stepwise import finish
from headcast.pipeline.vae_bands import RowShare, run_band
from headcast.pipeline.vae_blocks import (
    SPATIAL_SCALE,
    TEMPORAL_SCALE,
    VIDEO_CHANNELS,
    CausalCache,
    Decoder3d,
    Encoder3d,
    NormSiLU,
    fuse_norm_silu,
    rms_norm_silu,
)

logger = logging.getLogger(__name__)

LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
"""Per-channel mean of the Wan 2.1 VAE latents (16 channels); latents are ``(mu - mean) / std``."""

LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
"""Per-channel standard deviation of the Wan 2.1 VAE latents (16 channels)."""

ENCODE_FIRST_CHUNK_FRAMES = 1
"""Frames in the first encode chunk: the first frame becomes the first latent frame alone."""

ENCODE_CHUNK_FRAMES = 4
"""Frames in every later encode chunk (one latent frame each; the temporal stride)."""

DECODE_CHUNK_LATENTS = 1
"""Latent frames per decode chunk (the first gives 1 video frame, later ones 4)."""

VIDEO_RANGE = (-1.0, 1.0)
"""Pixel range of the video the VAE takes and returns."""

STATS_DTYPE = torch.float32
"""Latent normalisation always runs in float32, whatever the model dtype."""

VAE_CHECKPOINT_NAME = "Wan2.1_VAE.pth"
"""File name of the VAE weights in the official checkpoint directory."""


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of the Wan 2.1 causal video VAE (field names as in the official code)."""

    dim: int = 96
    """Base channel count; stage channels are ``dim * dim_mult[i]``."""
    z_dim: int = 16
    """Latent channels (the encoder emits ``2 * z_dim``: mean and log-variance)."""
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Channel multiplier per resolution stage; ``len - 1`` spatial 2x resamplings."""
    num_res_blocks: int = 2
    """Residual blocks per encoder stage (the decoder uses one more per stage)."""
    attn_scales: tuple[float, ...] = ()
    """Resolutions (relative to the input, e.g. 0.25) that get attention blocks per stage."""
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    """Per encoder resampling: also halve time (reversed for the decoder's upsampling)."""
    dropout: float = 0.0
    """Dropout inside residual blocks (inactive in eval mode)."""

    @classmethod
    def wan21(cls) -> VAEConfig:
        """The full-size Wan 2.1 VAE of ``Wan2.1_VAE.pth`` (dim 96, 16 latent channels)."""
        return cls(
            dim=96,
            z_dim=16,
            dim_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            attn_scales=(),
            temperal_downsample=(False, True, True),
            dropout=0.0,
        )

    @classmethod
    def tiny(cls) -> VAEConfig:
        """The Wan 2.1 layout at dim 8, for random-weight tests and CPU smoke runs."""
        return dataclasses.replace(cls.wan21(), dim=8)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VAEConfig:
        """Build from a mapping (JSON/YAML); lists become tuples; unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VAEConfig keys {unknown}; expected some of {sorted(known)}")
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        config = cls(**kwargs)
        config.validate()
        return config

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent pixel along H and W (8 for Wan 2.1)."""
        stride: int = SPATIAL_SCALE ** (len(self.dim_mult) - 1)
        return stride

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame after the first (4 for Wan 2.1)."""
        stride: int = TEMPORAL_SCALE ** sum(self.temperal_downsample)
        return stride

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and its value."""
        for name in ("dim", "z_dim", "num_res_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive int, got {value!r}")
        if not self.dim_mult or any(not isinstance(m, int) or m < 1 for m in self.dim_mult):
            raise ValueError(f"VAEConfig.dim_mult must be positive ints, got {self.dim_mult!r}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1 or any(
            not isinstance(flag, bool) for flag in self.temperal_downsample
        ):
            raise ValueError(
                f"VAEConfig.temperal_downsample must be {len(self.dim_mult) - 1} bools "
                f"(one per resampling of dim_mult={self.dim_mult}), "
                f"got {self.temperal_downsample!r}"
            )
        if self.temporal_stride != ENCODE_CHUNK_FRAMES:
            raise ValueError(
                f"VAEConfig.temperal_downsample={self.temperal_downsample!r} gives a temporal "
                f"stride of {self.temporal_stride}; the causal chunking needs "
                f"{ENCODE_CHUNK_FRAMES} frames per latent frame (two True entries)"
            )
        if any(not isinstance(s, int | float) or s <= 0 for s in self.attn_scales):
            raise ValueError(
                f"VAEConfig.attn_scales must be positive numbers, got {self.attn_scales!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VAEConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.z_dim != len(LATENT_MEAN):
            raise ValueError(
                f"VAEConfig.z_dim must be {len(LATENT_MEAN)} (the latent mean/std constants), "
                f"got {self.z_dim}"
            )


class WanVAE(nn.Module):
    """Wan 2.1 causal video VAE with the official parameter names.

    ``encoder.*`` and ``decoder.*`` are the two stacks, ``conv1`` maps encoder features to
    (mean, log-variance) and ``conv2`` maps latents into the decoder. The latent mean/std
    are non-persistent float32 buffers (not in the checkpoint), re-created from
    ``LATENT_MEAN``/``LATENT_STD`` after every ``load_state_dict`` on the weights' device,
    so meta-device construction followed by ``materialize`` works; dtype casts of the
    module leave them float32.
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        z = config.z_dim
        self.encoder = Encoder3d(
            dim=config.dim,
            out_dim=2 * z,
            dim_mult=config.dim_mult,
            num_res_blocks=config.num_res_blocks,
            attn_scales=config.attn_scales,
            temperal_downsample=config.temperal_downsample,
            dropout=config.dropout,
        )
        self.conv1 = nn.Conv3d(2 * z, 2 * z, 1)  # [mu, log_var] of the posterior
        self.conv2 = nn.Conv3d(z, z, 1)
        self.decoder = Decoder3d(
            dim=config.dim,
            z_dim=z,
            dim_mult=config.dim_mult,
            num_res_blocks=config.num_res_blocks,
            attn_scales=config.attn_scales,
            temperal_upsample=config.temperal_downsample[::-1],
            dropout=config.dropout,
        )
        mean = torch.tensor(LATENT_MEAN, dtype=STATS_DTYPE)
        std = torch.tensor(LATENT_STD, dtype=STATS_DTYPE)
        self.register_buffer("latent_mean", mean, persistent=False)
        self.register_buffer("latent_std", std, persistent=False)
        self.register_load_state_dict_post_hook(_reset_buffers_after_load)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.channels_last = False
        """True after :meth:`to_channels_last`: calls run in the channels-last layout."""

    def to_channels_last(self) -> WanVAE:
        """Store the conv weights channels-last and run encode/decode in that layout.

        cuDNN's fast tensor-core convolutions take channels-last (NDHWC) operands; with the
        default layout every convolution converts its operands first. Values are unchanged
        (a layout, not a cast). Returns ``self``.
        """
        for param in self.parameters():
            if param.dim() == 5:  # Conv3d weights [O, I, kt, kh, kw]
                param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
            elif param.dim() == 4:  # per-frame Conv2d weights [O, I, kh, kw]
                param.data = param.data.contiguous(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def fuse_norms(self, norm_silu: NormSiLU = rms_norm_silu) -> int:
        """Apply each RMSNorm and the SiLU after it through ``norm_silu`` (pass a compiled
        :func:`rms_norm_silu` to make it one pass over the activations). Returns pairs fused."""
        fused = 0
        for module in self.modules():
            if isinstance(module, nn.Sequential):
                fused += fuse_norm_silu(module, norm_silu)
        return fused

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, T, H, W] in the layout the convolutions expect (no copy if it is)."""
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def reset_buffers(self, device: torch.device | None = None) -> None:
        """Re-create the latent mean/std in float32 on ``device`` (default: the weights')."""
        device = device or self.conv1.weight.device
        self.latent_mean = torch.tensor(LATENT_MEAN, dtype=STATS_DTYPE, device=device)
        self.latent_std = torch.tensor(LATENT_STD, dtype=STATS_DTYPE, device=device)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> WanVAE:
        """``.to()``/``.half()``/``.to_empty()``...: the weights follow ``fn``; the latent
        statistics are re-created as exact float32 constants on the new device (casting them
        to bf16 would shift every latent; ``to_empty`` would leave them uninitialised)."""
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.reset_buffers(self.latent_mean.device)
        return self

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as ``[1, z, 1, 1, 1]`` float32 (no copy when already float32)."""
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = self.latent_mean.to(STATS_DTYPE).view(shape)
        std = self.latent_std.to(STATS_DTYPE).view(shape)
        return mean, std

    def encode(self, video: torch.Tensor, share: RowShare | None = None) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1] -> normalised latents ``[B, 16, T', h, w]``.

        ``T = 1 + 4k`` gives ``T' = 1 + k``; ``H`` and ``W`` must be multiples of 8
        (``h = H / 8``). The video is cast to the model's dtype; the latents come back in
        float32 on the model's device, as ``(mu - LATENT_MEAN) / LATENT_STD``.

        With a ``share`` (``pipeline.vae_bands``) this process computes the encoder's stages
        only on its band of rows; ``share.gather`` joins every rank's band at latent
        resolution before the middle block, and the whole latents come back.
        """
        return finish(self.encode_steps(video, share))

    def encode_chunk_count(self, frames: int) -> int:
        """Causal encode chunks (steps of ``encode_steps``) of a ``frames``-frame video."""
        return sum(1 for _ in self._encode_chunks(frames))

    @torch.no_grad()
    def encode_steps(
        self, video: torch.Tensor, share: RowShare | None = None
    ) -> Generator[None, None, torch.Tensor]:
        """``encode`` one causal chunk (1 or 4 frames) per step: yields after each chunk's
        work is queued on the device and returns the latents, the same as ``encode``'s. Lets
        a caller interleave a long encode (an avatar's 33 frames) with other work."""
        self._check_video(video)
        z = self.config.z_dim
        weight, bias = self.conv1.weight, self.conv1.bias
        # 1. Cast to the model's dtype (no copy when it already matches).
        video = self._layout(video.to(dtype=weight.dtype))  # [B, 3, T, H, W]
        # 2. Encode chunk by chunk through one causal cache; keep only the posterior mean.
        cache = CausalCache()
        mus: list[torch.Tensor] = []
        for start, stop in self._encode_chunks(video.shape[2]):
            if share is None:
                features = self.encoder(video[:, :, start:stop], cache)  # [B, 2z, 1, h, w]
            else:
                features = self._encode_band(video[:, :, start:stop], cache, share)
            mu_bias = None if bias is None else bias[:z]
            mus.append(F.conv3d(features, weight[:z], mu_bias))  # [B, z, 1, h, w]
            yield
        mu = mus[0] if len(mus) == 1 else torch.cat(mus, dim=2)  # [B, z, T', h, w]
        # 3. Normalise in float32.
        mean, std = self._latent_stats()
        return (mu.to(STATS_DTYPE) - mean) * std.reciprocal()  # [B, z, T', h, w]

    def _encode_band(
        self, video: torch.Tensor, cache: CausalCache, share: RowShare
    ) -> torch.Tensor:
        """One encode chunk from this rank's band: ``[B, 3, t, H, W]`` -> ``[B, 2z, 1, h, w]``."""
        if share.gather is None:
            raise ValueError("a banded encode needs the share's gather (bands meet at the middle)")
        band = run_band(self.encoder.row_layers, video, cache, share.plan)  # [B, 4*dim, 1, rows, w]
        features = self._layout(share.gather(band).contiguous())  # [B, 4*dim, 1, h, w]
        return self.encoder.finish(features, cache)  # [B, 2z, 1, h, w]

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, share: RowShare | None = None, *, clamp: bool = True
    ) -> torch.Tensor:
        """Normalised latents ``[B, 16, T', h, w]`` -> video ``[B, 3, T, 8h, 8w]`` in [-1, 1].

        ``T = 1 + 4 (T' - 1)``. The video comes back in float32, clamped to [-1, 1] unless
        ``clamp`` is False (a tiled decode blends unclamped tiles and clamps the result).
        With a ``share`` only the share's band of video rows is computed and returned
        (``[B, 3, T, rows, 8w]``): the decoder's trunk (latent resolution, with the spatial
        attention) runs on the whole frame, its later stages on the band.
        """
        self._check_latents(latents)
        b, _, t_lat, h, w = latents.shape
        stride_s, stride_t = self.config.spatial_stride, self.config.temporal_stride
        # 1. Undo the normalisation in float32, then cast to the model's dtype.
        mean, std = self._latent_stats()
        z = (latents.to(STATS_DTYPE) * std + mean).to(self.conv2.weight.dtype)  # [B, z, T', h, w]
        z = self._layout(z)
        x = self.conv2(z)  # [B, z, T', h, w]
        # 2. Decode one latent frame at a time through one causal cache, writing each chunk
        #    into the float32 output.
        frames = 1 + stride_t * (t_lat - 1)
        band = (0, h * stride_s) if share is None else share.plan.output_rows
        out_shape = (b, VIDEO_CHANNELS, frames, band[1] - band[0], w * stride_s)
        video = torch.empty(out_shape, dtype=STATS_DTYPE, device=x.device)  # [B, 3, T, H, W]
        cache = CausalCache()
        written = 0
        for start in range(0, t_lat, DECODE_CHUNK_LATENTS):
            latent = x[:, :, start : start + DECODE_CHUNK_LATENTS]  # [B, z, 1, h, w]
            if share is None:
                chunk = self.decoder(latent, cache)  # [B, 3, 1 (first) or 4, H, W]
            else:
                trunk = self.decoder.trunk(latent, cache)  # [B, 4*dim, 1, h, w]
                chunk = run_band(self.decoder.row_layers, trunk, cache, share.plan)
            video[:, :, written : written + chunk.shape[2]] = chunk
            written += chunk.shape[2]
        # 3. Clamp to the video range in place.
        return video.clamp_(*VIDEO_RANGE) if clamp else video

    def _encode_chunks(self, frames: int) -> Iterator[tuple[int, int]]:
        """Frame ranges of the encode chunks: ``[0, 1)``, then ``[1 + 4i, 5 + 4i)``."""
        yield 0, ENCODE_FIRST_CHUNK_FRAMES
        for start in range(ENCODE_FIRST_CHUNK_FRAMES, frames, ENCODE_CHUNK_FRAMES):
            yield start, start + ENCODE_CHUNK_FRAMES

    def _check_video(self, video: torch.Tensor) -> None:
        stride_s = self.config.spatial_stride
        if video.dim() != 5 or video.shape[1] != VIDEO_CHANNELS:
            raise ValueError(f"video must be [B, 3, T, H, W], got {tuple(video.shape)}")
        _, _, frames, height, width = video.shape
        if frames < 1 or (frames - ENCODE_FIRST_CHUNK_FRAMES) % ENCODE_CHUNK_FRAMES:
            raise ValueError(
                f"video has {frames} frames; the causal VAE encodes 1 + {ENCODE_CHUNK_FRAMES}k "
                f"frames (1, 5, 9, ...): trim or pad the clip"
            )
        if height % stride_s or width % stride_s:
            raise ValueError(
                f"video size {height}x{width} must be a multiple of {stride_s} on each side"
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.dim() != 5 or latents.shape[1] != self.config.z_dim or latents.shape[2] < 1:
            raise ValueError(
                f"latents must be [B, {self.config.z_dim}, T', h, w] with T' >= 1, "
                f"got {tuple(latents.shape)}"
            )


def _reset_buffers_after_load(module: nn.Module, _incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: the buffers follow the (possibly newly assigned) weights."""
    assert isinstance(module, WanVAE)
    module.reset_buffers()


def load_vae(
    path: Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype | None,
    config: VAEConfig | None = None,
) -> WanVAE:
    """Load ``Wan2.1_VAE.pth`` (mmapped, weights only) into an eval-mode ``WanVAE``.

    Built on the meta device and assigned strictly; floating point weights are cast to
    ``dtype`` (None keeps the file's). ``config`` defaults to ``VAEConfig.wan21()``. A missing
    or unfit file raises ``CheckpointError`` naming it and suggesting ``headcast doctor``.
    """
    config = config or VAEConfig.wan21()
    what = f"Wan 2.1 VAE checkpoint ({VAE_CHECKPOINT_NAME})"
    started = time.perf_counter()
    state = read_torch_state(Path(path), what)
    model = materialize(lambda: WanVAE(config), state, device=device, dtype=dtype, what=what)
    model.eval().requires_grad_(False)
    logger.info("loaded %s from %s in %.2f s", what, path, time.perf_counter() - started)
    return model

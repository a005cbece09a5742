"""The VAE's decode and encode split by rows among the ranks of a parallel group.

Owns ``ParallelVAE``: the same ``decode``/``encode`` as ``WanVAE`` (every rank calls them
in lockstep with the same input and gets the whole result), where each rank computes one
band of rows (``pipeline.vae_bands``; latent rows split by ``even_splits``) and the bands
are gathered: the decoded video after the decode, the latent-resolution features before
the encoder's middle block during an encode. Plans are made once per frame size.

Knows nothing about sampling, colour or sessions.
"""

from __future__ import annotations

import torch

from headcast.pipeline.parallel import ParallelGroup, even_splits, gather_rows, split_offsets
from headcast.pipeline.vae import WanVAE
from headcast.pipeline.vae_bands import ROW_DIM, BandPlan, RowShare, plan_band


class ParallelVAE:
    """``WanVAE.decode``/``encode`` with the rows split among ``parallel``'s ranks."""

    def __init__(self, vae: WanVAE, parallel: ParallelGroup) -> None:
        self.vae = vae
        self.parallel = parallel
        self._plans: dict[tuple[str, int], BandPlan] = {}

    def latent_rows(self, latent_height: int) -> tuple[tuple[int, ...], int]:
        """Latent rows of every rank and the first latent row of this one."""
        world = self.parallel.world_size
        if latent_height < world:
            raise ValueError(
                f"{latent_height} latent rows cannot be split among {world} ranks: use a "
                f"frame height of at least {world * self.vae.config.spatial_stride} px"
            )
        sizes = even_splits(latent_height, world)
        return sizes, split_offsets(sizes)[self.parallel.rank]

    def _plan(self, kind: str, latent_height: int) -> BandPlan:
        """This rank's band plan for a decode or an encode of ``latent_height`` rows."""
        key = (kind, latent_height)
        plan = self._plans.get(key)
        if plan is None:
            sizes, first = self.latent_rows(latent_height)
            rows = (first, first + sizes[self.parallel.rank])  # latent rows of this rank
            stride = self.vae.config.spatial_stride
            if kind == "decode":
                layers, height = self.vae.decoder.row_layers, latent_height
                rows = (rows[0] * stride, rows[1] * stride)  # video rows
            else:
                layers, height = self.vae.encoder.row_layers, latent_height * stride
            plan = plan_band(layers, height, rows)
            self._plans[key] = plan
        return plan

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 16, T', h, w]`` -> the whole video ``[B, 3, T, 8h, 8w]`` (float32)."""
        latent_height = latents.shape[ROW_DIM]
        band = self.vae.decode(latents, RowShare(self._plan("decode", latent_height)))
        sizes, _ = self.latent_rows(latent_height)
        stride = self.vae.config.spatial_stride
        video_rows = tuple(size * stride for size in sizes)
        return gather_rows(band, video_rows, ROW_DIM, self.parallel.group_name).contiguous()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` -> the whole latents ``[B, 16, T', H/8, W/8]``."""
        latent_height = video.shape[ROW_DIM] // self.vae.config.spatial_stride
        sizes, _ = self.latent_rows(latent_height)
        group = self.parallel.group_name

        def gather(band: torch.Tensor) -> torch.Tensor:
            return gather_rows(band, sizes, ROW_DIM, group)  # [B, C, t, h, w]

        return self.vae.encode(video, RowShare(self._plan("encode", latent_height), gather))

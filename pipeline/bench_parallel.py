"""What ``headcast bench --gpus N`` measures beyond one GPU's stage times.

Owns ``comm_probe`` (the collectives of one sequence-parallel DiT step, 2 all-to-alls per
block and the velocity gather, run alone on tensors of the step's shapes and timed with CUDA
events; plus the gather of a decoded chunk's rows), ``band_flops`` (the work of each rank's
share of the VAE decode and motion re-encode against the whole-frame calls, counted on meta
tensors) and ``scaling`` (speed-up and efficiency against a one-GPU report).

In a Ulysses step the all-to-alls are not overlapped with compute (each one's output is the
next op's input), so the probe's time is what the step pays for communication. Must not
know about the report's format or the command line.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from headcast.pipeline.config import PipelineConfig
from headcast.pipeline.generator import FlashTalkGenerator
from headcast.pipeline.parallel import (
    ParallelGroup,
    all_to_all,
    even_splits,
    gather_rows,
    split_offsets,
)
from headcast.pipeline.sequence_parallel import gather_tokens
from headcast.pipeline.timing import stage_timer
from headcast.pipeline.vae import WanVAE
from headcast.pipeline.vae_bands import ROW_DIM, RowShare, plan_band

PROBE_REPEATS = 5
"""Timed repetitions of the probed collectives (the median is reported)."""

VIDEO_CHANNELS = 3


def _timed(run: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``run()`` after one untimed call (CUDA events on a GPU)."""
    run()
    times = []
    for _ in range(repeats):
        timer = stage_timer(device)
        timer.start()
        run()
        timer.mark("run")
        times.append(timer.read()["run"])
    return statistics.median(times)


@torch.no_grad()
def comm_probe(
    generator: FlashTalkGenerator, parallel: ParallelGroup, repeats: int = PROBE_REPEATS
) -> dict[str, float]:
    """Seconds of one DiT step's collectives and of one chunk's video gather (every rank
    must call this; each gets its own times)."""
    cfg, device = generator.config, parallel.device
    patch = cfg.dit.patch_size
    grid = (cfg.latent_frames, cfg.latent_height // patch[1], cfg.latent_width // patch[2])
    shard, _, _ = generator.dit.token_shard(grid, device)
    heads, mine, world = list(shard.heads), shard.heads[shard.rank], shard.world
    dtype = generator.dit.patch_embedding.weight.dtype
    head_dim = cfg.dit.head_dim
    qkv = torch.zeros(sum(heads), 3, 1, shard.per_rank, head_dim, device=device, dtype=dtype)
    out = torch.zeros(world * mine, 1, shard.per_rank, head_dim, device=device, dtype=dtype)
    velocity = torch.zeros(1, shard.per_rank, cfg.dit.out_dim * patch[1] * patch[2], device=device)

    def step() -> None:
        for _ in range(cfg.dit.num_layers):
            all_to_all(qkv, [mine] * world, heads, shard.group)  # [N*mine, 3, 1, Lr, D]
            all_to_all(out, heads, [mine] * world, shard.group)  # [H, 1, Lr, D]
        gather_tokens(velocity, shard)

    rows = even_splits(cfg.latent_height, world)
    stride = cfg.vae.spatial_stride
    band = torch.zeros(1, VIDEO_CHANNELS, cfg.audio.chunk_frames, rows[parallel.rank] * stride,
                       cfg.width, device=device)  # fmt: skip

    def video_gather() -> None:
        gather_rows(band, tuple(size * stride for size in rows), ROW_DIM, shard.group)

    return {
        "comm_step_s": _timed(step, device, repeats),
        "all_to_all_bytes_per_step": float(
            cfg.dit.num_layers * (qkv.numel() + out.numel()) * qkv.element_size()
        ),
        "video_gather_s": _timed(video_gather, device, repeats),
    }


def band_flops(config: PipelineConfig, world: int) -> dict[str, float]:
    """FLOPs of the VAE decode of a chunk and of the motion re-encode, whole frame and the
    largest rank's share of ``world``, counted on meta tensors in bf16."""
    dtype = torch.bfloat16
    cfg = config
    latent = (1, cfg.vae.z_dim, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
    motion = (1, VIDEO_CHANNELS, cfg.audio.motion_frames, cfg.height, cfg.width)
    sizes = even_splits(cfg.latent_height, world)
    stride = cfg.vae.spatial_stride
    with torch.device("meta"), torch.no_grad():
        vae = WanVAE(cfg.vae).to(dtype)

        def gather(band: torch.Tensor) -> torch.Tensor:  # every rank's rows (values unused)
            shape = list(band.shape)
            shape[ROW_DIM] = cfg.latent_height
            return band.new_empty(shape)

        def flops(call: Callable[[], Any]) -> float:
            with FlopCounterMode(display=False) as counter:
                call()
            return float(counter.get_total_flops())

        def decode_flops(share: RowShare | None = None) -> float:
            return flops(lambda: vae.decode(torch.empty(latent), share))

        def encode_flops(share: RowShare | None = None) -> float:
            return flops(lambda: vae.encode(torch.empty(motion, dtype=dtype), share))

        decode, encode = decode_flops(), encode_flops()
        decode_ranks, encode_ranks = [], []
        for first, size in zip(split_offsets(sizes), sizes):
            rows = (first * stride, (first + size) * stride)  # video rows of the rank
            decode_plan = plan_band(vae.decoder.row_layers, cfg.latent_height, rows)
            encode_plan = plan_band(vae.encoder.row_layers, cfg.height, (first, first + size))
            decode_ranks.append(decode_flops(RowShare(decode_plan)))
            encode_ranks.append(encode_flops(RowShare(encode_plan, gather)))
    return {
        "vae_decode_flops": decode,
        "vae_decode_flops_max_rank": max(decode_ranks),
        "vae_decode_rank_share": max(decode_ranks) / decode,
        "motion_encode_flops": encode,
        "motion_encode_flops_max_rank": max(encode_ranks),
        "motion_encode_rank_share": max(encode_ranks) / encode,
    }


SCALED_STAGES = ("chunk_s", "dit_step_s", "vae_decode_s", "motion_encode_s")
"""Times compared with the one-GPU report (stage times from its ``stages_s``)."""


def scaling(
    times: Mapping[str, float], reference: Mapping[str, Any], gpus: int
) -> dict[str, float]:
    """Speed-up (one-GPU time / this time) and efficiency (speed-up / gpus) of each of
    ``SCALED_STAGES`` against ``reference``, a one-GPU ``headcast bench`` JSON report."""
    if reference.get("gpus", 1) != 1:
        raise ValueError(
            f"the scaling reference must be a --gpus 1 report, not {reference['gpus']}"
        )
    result: dict[str, float] = {}
    for name in SCALED_STAGES:
        single = reference.get(name, reference.get("stages_s", {}).get(name))
        if single is None or name not in times:
            continue
        speedup = float(single) / times[name]
        result[f"{name.removesuffix('_s')}_speedup"] = speedup
        result[f"{name.removesuffix('_s')}_efficiency"] = speedup / gpus
    return result

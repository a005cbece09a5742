"""``headcast bench``'s correctness checks: fixed-input outputs of a run compared with others.

Owns ``reference_outputs`` (one DiT forward, one VAE decode and one motion re-encode on
seeded inputs, on the host in float32), the checks a run can report against them
(``consistency_checks``: another run's saved outputs, the same weights run eagerly, a
float32 copy of the weights; ``parallel_check``: a sequence-parallel group against one of
its GPUs alone, same weights and inputs) and ``relative_error``.

Must not know about timing, processes or the report's format.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.distributed as dist

from headcast.pipeline.attention import sdpa_backends
from headcast.pipeline.dit import CLIP_EMBED_DIM, CLIP_IMAGE_TOKENS
from headcast.pipeline.generator import FlashTalkGenerator
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.random_weights import RANDOM_PROMPT_TOKENS

REFERENCE_TIMESTEP = 1000.0
"""Timestep of the fixed-input DiT forward used to compare variants."""

REFERENCE_VIDEO_FRAME_STRIDE = 8
"""Every 8th decoded frame of the fixed-input VAE decode is kept for comparisons."""


@torch.no_grad()
def reference_outputs(
    generator: FlashTalkGenerator, seed: int, *, eager: bool = False
) -> dict[str, torch.Tensor]:
    """One DiT forward, one VAE decode and the re-encode of the decode's last motion frames,
    on seeded inputs, on the host in float32 (the generator's parallel path if it has one:
    every rank must call this).

    ``eager`` runs them without ``torch.compile`` and with PyTorch's own SDPA choice (the
    official path) on the same weights; a float32 model gets float32-capable attention.
    """
    cfg, device, dtype = generator.config, generator.device, generator.dtype
    rng = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(shape, generator=rng, device=device, dtype=dtype)

    grid = (cfg.latent_frames, cfg.latent_height, cfg.latent_width)
    x = randn(1, cfg.vae.z_dim, *grid)  # [1, z, T, h, w]
    y = randn(1, cfg.dit.in_dim - cfg.vae.z_dim, *grid)  # [1, 4 + z, T, h, w]
    context = randn(1, RANDOM_PROMPT_TOKENS, cfg.dit.text_dim)
    clip_fea = randn(1, CLIP_IMAGE_TOKENS, CLIP_EMBED_DIM)
    audio = randn(1, cfg.audio.chunk_frames, cfg.audio.audio_window, cfg.dit.audio_proj_blocks,
                  cfg.dit.audio_proj_channels)  # fmt: skip
    latents = randn(1, cfg.vae.z_dim, *grid, dtype=torch.float32)
    t = torch.full((1,), REFERENCE_TIMESTEP, device=device)
    float32_model = generator.dit.patch_embedding.weight.dtype == torch.float32
    backend = ("efficient" if float32_model else "auto") if eager else generator.attention_backend
    stance = torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext()
    with stance, sdpa_backends(backend):
        velocity = generator.dit(x, t, context, clip_fea, y, audio)  # [1, z, T, h, w] f32
        video = generator.codec.decode(latents)  # [1, 3, 33, H, W]
        motion_video = video[:, :, -cfg.audio.motion_frames :].to(generator.vae.conv1.weight.dtype)
        motion = generator.codec.encode(motion_video)  # [1, z, M, h, w]
    return {
        "velocity": velocity.float().cpu(),
        "video": video[:, :, ::REFERENCE_VIDEO_FRAME_STRIDE].float().cpu(),
        "motion": motion.float().cpu(),
    }


def consistency_checks(generator: FlashTalkGenerator, args: argparse.Namespace) -> dict[str, float]:
    """Relative errors of this run's fixed-input outputs against another run's
    (``--compare-reference``), its own eager bf16 path (``--self-check``) and a float32
    copy of the same weights (``--float32-check``, last: it converts the models).
    In a group every rank calls this; rank 0 saves the outputs."""
    outputs = reference_outputs(generator, args.seed)
    if args.save_reference is not None and generator.hands_back_frames:
        torch.save(outputs, args.save_reference)
    check: dict[str, float] = {}
    if args.compare_reference is not None:
        reference = torch.load(args.compare_reference, weights_only=True)
        for key, value in outputs.items():
            if key in reference:  # older saved outputs have no motion
                check[f"{key}_rel_err"] = relative_error(value, reference[key])
    if args.self_check or args.float32_check:
        eager = reference_outputs(generator, args.seed, eager=True)
        for key, value in outputs.items():
            check[f"{key}_rel_err_vs_eager"] = relative_error(value, eager[key])
    if args.float32_check:
        generator.dit.float()
        generator.vae.float()
        exact = reference_outputs(generator, args.seed, eager=True)
        for key, value in outputs.items():
            check[f"{key}_rel_err_vs_float32"] = relative_error(value, exact[key])
            check[f"{key}_eager_rel_err_vs_float32"] = relative_error(eager[key], exact[key])
    return check


def parallel_check(
    generator: FlashTalkGenerator, parallel: ParallelGroup, seed: int
) -> dict[str, float]:
    """The group's fixed-input outputs against rank 0's GPU computing them alone.

    Every rank runs the parallel path (as the run computes it: compiled if it is); then
    rank 0 runs the single-process path on the same weights and inputs while the others
    wait. Returns the relative errors on rank 0, ``{}`` elsewhere.
    """
    outputs = reference_outputs(generator, seed)
    check: dict[str, float] = {}
    if parallel.is_primary:
        generator.use_parallel(None)
        try:
            single = reference_outputs(generator, seed)
        finally:
            generator.use_parallel(parallel)
        check = {
            f"{key}_rel_err_vs_1gpu": relative_error(value, single[key])
            for key, value in outputs.items()
        }
    dist.barrier(group=parallel.group)
    return check


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ (NaN anywhere gives NaN)."""
    return float((out.double() - ref.double()).norm() / ref.double().norm())

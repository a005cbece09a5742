"""``headcast bench --engine omniavatar``: seconds of compute per second of video, per step.

Owns the OmniAvatar benchmark: the cases (the official recipe, the size's fast preset, and
two streaming candidates: 41-frame segments with the 13-frame carry-over, i.e. 28 new
frames = the 1.12 s FlashTalk chunk, few steps, one guidance pass or two batched), the
timed run of one segment per case (warm-up steps that compile, then timed DiT steps with
CUDA events, a TeaCache-skipped step, the VAE decode (the case's official tiles or whole
frames) and the overlap re-encode, each run once untimed first), the projection to a
whole video (``--video-seconds``: its segment count from the official padding rule), the
FLOP floor (``FlopCounterMode`` on meta tensors, at the bf16 dense peak),
peak memory, and the JSON/markdown report. Shares ``pipeline.bench``'s speed flags and
``SpeedOptions``; ``--baseline`` runs this code at the official settings (eager, one
forward per pass, PyTorch's SDPA choice): the official code itself is not part of this
repository. Timing random weights is valid (values do not change speed), except that the
TeaCache schedule of random weights is not a trained model's: the report gives it.

``--gpus N`` (N > 1) times the same cases sequence-parallel on N GPUs: N processes, one per
GPU (``pipeline.launch``: NCCL, NVLink multicast off), each building the same models from
the same seed; the DiT splits its tokens among them, the VAE and the audio encoder run
whole on every rank. The ranks meet at a barrier before each timed stretch, so rank 0's
CUDA-event times are the group's in lockstep; rank 0 reports. On a CPU device the same runs
on gloo processes (the tiny size).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from headcast.pipeline import bench as flashtalk_bench
from headcast.pipeline.attention import sdpa_backends
from headcast.pipeline.bench_checks import relative_error
from headcast.pipeline.media import SAMPLE_RATE_HZ, VIDEO_FPS
from headcast.pipeline.omniavatar.audio import clip_frames, segment_count
from headcast.pipeline.omniavatar.config import SIZES, OmniSize, omni_size
from headcast.pipeline.omniavatar.denoise import SamplerOptions, SegmentInputs, SegmentRun
from headcast.pipeline.omniavatar.dit import OmniAvatarDiT
from headcast.pipeline.omniavatar.models import OmniModels, build_models
from headcast.pipeline.omniavatar.recipe import (
    DEFAULT_STREAM_STEPS,
    RECIPES,
    STREAM_OVERLAP,
    STREAM_SEGMENT_FRAMES,
    TINY_BUCKETS,
    TINY_MAX_TOKENS,
    TOKEN_SIDE_PX,
    Recipe,
    max_tokens_for,
)
from headcast.pipeline.omniavatar.reference_image import Bucket
from headcast.pipeline.omniavatar.teacache import TeaCacheSchedule
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.speedups import SpeedOptions, bf16_attention
from headcast.pipeline.timing import stage_timer
from headcast.pipeline.vae import WanVAE

logger = logging.getLogger(__name__)

BF16_PEAK_TFLOPS = 989.0
"""Dense bf16 tensor-core peak of an H100/H200 SXM (TFLOP/s): the FLOP floor's rate."""

DEFAULT_VIDEO_S = 60.0
"""Length of the video the per-segment timings are projected to (seconds)."""

DEFAULT_TIMED_STEPS = 3
"""DiT steps timed per case (their median is the step time)."""

DEFAULT_WARMUP_STEPS = 1
"""Untimed steps first (the first compiles and autotunes)."""

CASE_CHOICES = ("official", "fast", "stream")
"""The official recipe, the size's fast preset, the two streaming candidates."""

GIB = 1024**3
TERA = 1e12
RANDOM_CONTEXT_TOKENS = 32
"""Prompt rows of the random stand-in context (padded to text_len by the DiT)."""


# -- cases ---------------------------------------------------------------------------------


def size_recipe(base: Recipe, size: OmniSize) -> Recipe:
    """``base`` at the size's buckets (tiny: its one small bucket)."""
    if not size.is_random:
        return base
    return base.with_overrides(buckets=TINY_BUCKETS, max_tokens=TINY_MAX_TOKENS)


def cases(
    size: OmniSize,
    which: Sequence[str],
    *,
    steps: int | None,
    stream_steps: int,
    tiled_vae: bool | None = None,
) -> list[Recipe]:
    """The recipes to time, each named, in the order official, fast, streaming; the VAE
    tiled or whole as each recipe has it, unless ``tiled_vae`` says for all."""
    fast = RECIPES["fast-14b" if size.name == "14b" else "fast-1.3b"]
    chosen: list[Recipe] = []
    if "official" in which:
        chosen.append(size_recipe(RECIPES["official"], size))
    if "fast" in which:
        chosen.append(size_recipe(fast, size))
    if "stream" in which:
        bucket = size_recipe(RECIPES["official"], size).buckets[0]
        stream = Recipe(
            steps=stream_steps,
            teacache=0.0,
            overlap=STREAM_OVERLAP,
            buckets=(bucket,),
            max_tokens=max_tokens_for(STREAM_SEGMENT_FRAMES, bucket),
            tiled_vae=False,  # the streaming profiles' default (``omni_tiled_vae: false``)
        )
        chosen.append(
            replace(
                stream,
                guidance=1.0,
                name="stream-1pass",
                trade="streaming: 41-frame segments, 28 new, one pass (no guidance)",
            )
        )
        chosen.append(
            replace(
                stream,
                name="stream-batched",
                trade="streaming: 41-frame segments, 28 new, guidance 4.5 (two passes batched)",
            )
        )
    if steps is not None:
        chosen = [replace(recipe, steps=steps) for recipe in chosen]
    if tiled_vae is not None:
        chosen = [replace(recipe, tiled_vae=tiled_vae) for recipe in chosen]
    return chosen


# -- FLOPs ---------------------------------------------------------------------------------


def count_flops(size: OmniSize, recipe: Recipe, bucket: Bucket, passes: int) -> dict[str, float]:
    """FLOPs of one DiT step (all passes), one segment's VAE decode and one overlap encode."""
    frames = recipe.segment_frames(bucket)
    latent = (1, size.dit.out_dim, recipe.latent_frames(bucket), bucket[0] // 8, bucket[1] // 8)
    dtype = torch.bfloat16
    with torch.device("meta"), torch.no_grad():
        dit = OmniAvatarDiT(size.dit).to(dtype)
        vae = WanVAE(size.vae).to(dtype)
        x = torch.empty((passes, *latent[1:]), dtype=dtype)
        y = torch.empty((passes, latent[1] + 1, *latent[2:]), dtype=dtype)
        context = torch.empty(passes, RANDOM_CONTEXT_TOKENS, size.dit.text_dim, dtype=dtype)
        audio = torch.empty(passes, frames, size.dit.audio_input_dim, dtype=dtype)
        with FlopCounterMode(display=False) as dit_counter:
            dit(x, torch.empty(passes), context, y, audio)
        with FlopCounterMode(display=False) as decode_counter:
            vae.decode(torch.empty(latent, dtype=dtype))
        with FlopCounterMode(display=False) as encode_counter:
            vae.encode(torch.empty((1, 3, recipe.overlap, bucket[0], bucket[1]), dtype=dtype))
    return {
        "dit_step_flops": float(dit_counter.get_total_flops()),
        "vae_decode_flops": float(decode_counter.get_total_flops()),
        "vae_encode_flops": float(encode_counter.get_total_flops()),
    }


def floor_segment_s(flops: dict[str, float], computed_steps: int, gpus: int) -> float:
    """A later segment's FLOP floor at the bf16 peak, in seconds: its computed DiT steps
    split over ``gpus`` (the tokens are), its decode and overlap encode whole (every rank
    runs the VAE on the whole segment)."""
    dit = computed_steps * flops["dit_step_flops"] / gpus
    vae = flops["vae_decode_flops"] + flops["vae_encode_flops"]
    return (dit + vae) / (BF16_PEAK_TFLOPS * TERA)


# -- the timed run -------------------------------------------------------------------------


@dataclass
class OmniBenchReport:
    """What one case measured; seconds are device time (CUDA events) on a GPU."""

    label: str
    command: str
    date: str
    device: str
    torch: str
    size: str
    weights: str
    recipe: dict[str, Any]
    trade: str
    options: dict[str, Any]
    batch_passes: bool
    bucket: tuple[int, int]
    segment_frames: int
    new_frames: int
    """Frames a later segment adds (``segment_frames - overlap``)."""
    tokens: int
    passes: int
    steps: int
    teacache_computed_steps: int
    """Steps that run the blocks under the TeaCache schedule of *these* weights."""
    load_s: float
    warmup_s: float
    """The untimed first steps (compilation, autotuning)."""
    step_s: float
    """Median DiT step, all guidance passes."""
    skipped_step_s: float
    """A TeaCache-skipped step (embedding, residual, head)."""
    decode_s: float
    encode_s: float
    audio_s: float
    """wav2vec2 on the whole ``video_s`` clip."""
    segment_s: float
    """A later segment: its steps, decode and overlap encode."""
    first_segment_s: float
    """The first segment (no re-encode): the first frames' latency offline or streaming."""
    compute_per_video_s: float
    """Seconds of compute per second of video in steady state (= the streaming RTF)."""
    step_per_video_s: float
    """Seconds of one step's compute per second of video (``compute / steps``)."""
    video_s: float
    video_segments: int
    video_compute_s: float
    """Projected compute for a ``video_s`` video (segments x segment time + audio)."""
    flops: dict[str, float]
    floor_per_video_s: float
    """FLOP floor at the bf16 dense peak, seconds per second of video (TeaCache counted);
    with ``gpus`` > 1 the DiT's FLOPs are split over the GPUs, the VAE's are not (every rank
    decodes and encodes the whole segment)."""
    achieved_tflops: float
    """DiT step FLOPs / step time, per GPU (the step's FLOPs / ``gpus``)."""
    peak_memory_gib: float | None
    """Peak allocated device memory (rank 0's, in a group)."""
    check: dict[str, float]
    """``--self-check``: the guided velocity of this path against eager, one pass at a time."""
    gpus: int = 1
    """GPUs the case ran on (sequence-parallel when more than one)."""

    def row(self) -> str:
        """One markdown table row."""
        memory = "-" if self.peak_memory_gib is None else f"{self.peak_memory_gib:.1f}"
        batched = " batched" if self.batch_passes and self.passes > 1 else ""
        vae = "tiled VAE" if self.recipe["tiled_vae"] else "whole-frame VAE"
        return (
            f"| {self.label} | {self.gpus} | {self.size} {self.bucket[0]}x{self.bucket[1]}, "
            f"{self.segment_frames} frames ({self.new_frames} new), {self.steps} steps "
            f"({self.teacache_computed_steps} computed), {self.passes} pass(es){batched}, "
            f"{vae} | "
            f"{self.step_s:.3f} | {self.decode_s:.2f} / {self.encode_s:.2f} | "
            f"{self.segment_s:.1f} | **{self.compute_per_video_s:.2f}** | "
            f"{self.step_per_video_s:.3f} | {self.floor_per_video_s:.2f} | "
            f"{self.video_compute_s / 60:.1f} | {self.first_segment_s:.1f} | "
            f"{self.achieved_tflops:.0f} | {memory} | "
            + (", ".join(f"{k} {v:.1e}" for k, v in self.check.items()) or "-")
            + " |"
        )


TABLE_HEADER = (
    "| run | GPUs | case | DiT step s | decode / encode s | segment s | s compute per s video | "
    "per step | floor (bf16 peak) | video min | first segment s | TFLOP/s per GPU | peak GiB | "
    "check |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _segment_inputs(
    models: OmniModels, recipe: Recipe, bucket: Bucket, device: torch.device, seed: int
) -> SegmentInputs:
    """Seeded random inputs of one later segment (overlap latents fixed)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    size = models.size
    latent = (1, size.dit.out_dim, recipe.latent_frames(bucket), bucket[0] // 8, bucket[1] // 8)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    context, negative = models.prompts(["a person talking", recipe.negative_prompt])
    return SegmentInputs(
        lat=randn(*latent),
        fixed=recipe.overlap_latents,
        y=randn(1, latent[1] + 1, *latent[2:]),
        audio=randn(1, recipe.segment_frames(bucket), size.dit.audio_input_dim),
        context=context,
        negative_context=negative,
        noise=randn(*latent),
    )


def _timed(
    device: torch.device, work: list[Any], name: str, parallel: ParallelGroup | None = None
) -> list[float]:
    """Run each callable in ``work`` and return each one's device time (in a group, from a
    barrier: every rank starts together)."""
    if parallel is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier(group=parallel.group)
    timer = stage_timer(device)
    timer.start()
    for index, job in enumerate(work):
        job()
        timer.mark(f"{name}{index}")
    return list(timer.read().values())


EAGER_ATTENTION = "efficient"
"""SDPA kernel of the eager reference (exact softmax, memory linear in the tokens)."""


def self_check(
    models: OmniModels, options: SamplerOptions, inputs: SegmentInputs
) -> dict[str, float]:
    """Step 0's guided velocity on this path (compiled, batched, quantised as set up) against
    the same weights run eagerly, one forward per guidance pass, with bf16 self-attention
    (so fp8 attention's error is in the figure; quantised linears are in both runs)."""
    plain = replace(options, teacache=0.0)
    fast = SegmentRun(models.dit, plain, inputs).step(0, inputs.noise).guided
    with (
        torch.compiler.set_stance("force_eager"),
        sdpa_backends(EAGER_ATTENTION),
        bf16_attention(models.dit.blocks),
    ):
        eager = (
            SegmentRun(models.dit, replace(plain, batch_passes=False), inputs)
            .step(0, inputs.noise)
            .guided
        )
    return {"guided_velocity_rel_err_vs_eager": relative_error(fast, eager)}


def recipe_facts(recipe: Recipe) -> dict[str, Any]:
    """A report's ``recipe``: the recipe's settings without its prompt and its prose."""
    return {k: v for k, v in asdict(recipe).items() if k not in ("negative_prompt", "trade")}


@torch.no_grad()
def bench_case(
    models: OmniModels,
    recipe: Recipe,
    options: SpeedOptions,
    args: argparse.Namespace,
    device: torch.device,
    load_s: float,
    parallel: ParallelGroup | None = None,
) -> OmniBenchReport:
    """Time one segment of ``recipe`` and project it to a ``--video-seconds`` video (as one
    rank of ``parallel``: in lockstep with the others)."""
    gpus = 1 if parallel is None else parallel.world_size
    bucket = (args.height, args.width) if args.height and args.width else recipe.buckets[0]
    sampler = recipe.sampler_options(batch_passes=args.batch_passes)
    inputs = _segment_inputs(models, recipe, bucket, device, args.seed)
    steps_needed = args.warmup_steps + args.timed_steps
    timing = replace(sampler, steps=max(sampler.steps, steps_needed), teacache=0.0)
    run = SegmentRun(models.dit, timing, inputs)
    latents = inputs.noise
    passes = len(sampler.guidance.passes)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # 1. warm-up (compiles), then timed full steps
    started = time.perf_counter()
    for index in range(args.warmup_steps):
        latents = run.step(index, latents).latents
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - started
    state = {"latents": latents}

    def full_step(index: int) -> None:
        state["latents"] = run.step(index, state["latents"]).latents

    step_times = _timed(
        device,
        [lambda i=i: full_step(i) for i in range(args.warmup_steps, steps_needed)],
        "step",
        parallel,
    )
    # 2. a TeaCache-skipped step (the residuals exist now)
    cached_run = SegmentRun(models.dit, replace(timing, teacache=recipe.teacache or 1.0), inputs)
    cached_run.step(0, latents)  # computes, stores residuals
    cached_run.schedule = TeaCacheSchedule(
        (False,) + (True,) * (timing.steps - 1), (0.0,) * timing.steps
    )
    cached_run.step(1, latents)  # warm the skip path
    skipped = _timed(device, [lambda: cached_run.step(2, latents)], "skip", parallel)[0]
    # 3. VAE: the segment's decode and the overlap re-encode, once untimed first (a compiled
    # VAE compiles for these shapes on its first call: seconds that no later segment pays)
    frames_t = recipe.latent_frames(bucket)
    segment_latents = inputs.noise[:, :, :frames_t]  # [1, 16, T, h, w]
    vae_work = [
        lambda: state.update(video=models.vae.decode(segment_latents)),  # [1, 3, F, H, W]
        lambda: models.vae.encode(state["video"][:, :, -recipe.overlap :].contiguous()),
    ]
    _timed(device, vae_work, "vae-warm-up")
    decode_s, encode_s = _timed(device, vae_work, "vae", parallel)
    # 4. the whole clip's audio
    video_samples = round(args.video_seconds * SAMPLE_RATE_HZ)
    audio_frames = clip_frames(video_samples + round(recipe.silence_s * SAMPLE_RATE_HZ))
    clip = (
        torch.randn(video_samples, generator=torch.Generator().manual_seed(args.seed)).numpy() * 0.1
    )
    encode_clip = [lambda: models.audio.encode(clip, audio_frames)]
    audio_s = _timed(device, encode_clip, "audio", parallel)[0]
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    check = self_check(models, timing, inputs) if args.self_check else {}
    # 5. projections
    schedule = SegmentRun(models.dit, sampler, inputs).schedule
    computed = schedule.computed_steps
    step_s = statistics.median(step_times)
    steps_s = computed * step_s + (sampler.steps - computed) * skipped
    segment_s = steps_s + decode_s + encode_s
    first_segment_s = steps_s + decode_s
    frames = recipe.segment_frames(bucket)
    new_frames = frames - recipe.overlap
    per_video_s = segment_s * VIDEO_FPS / new_frames
    segments = segment_count(audio_frames, frames, recipe.overlap)
    flops = count_flops(models.size, recipe, bucket, passes)
    floor_segment = floor_segment_s(flops, computed, gpus)
    label = args.label or ("omniavatar" if gpus == 1 else f"omniavatar-{gpus}gpu")
    return OmniBenchReport(
        label=f"{label}-{recipe.name}",
        command=args.command_line,
        date=datetime.date.today().isoformat(),
        device=flashtalk_bench.device_name(device),
        torch=torch.__version__,
        size=models.size.name,
        weights=models.weights,
        recipe=recipe_facts(recipe),
        trade=recipe.trade,
        options=asdict(options),
        batch_passes=args.batch_passes,
        bucket=bucket,
        segment_frames=frames,
        new_frames=new_frames,
        tokens=recipe.latent_frames(bucket)
        * (bucket[0] // TOKEN_SIDE_PX)
        * (bucket[1] // TOKEN_SIDE_PX),
        passes=passes,
        steps=sampler.steps,
        teacache_computed_steps=computed,
        load_s=load_s,
        warmup_s=warmup_s,
        step_s=step_s,
        skipped_step_s=skipped,
        decode_s=decode_s,
        encode_s=encode_s,
        audio_s=audio_s,
        segment_s=segment_s,
        first_segment_s=first_segment_s,
        compute_per_video_s=per_video_s,
        step_per_video_s=per_video_s / sampler.steps,
        video_s=args.video_seconds,
        video_segments=segments,
        video_compute_s=first_segment_s + (segments - 1) * segment_s + audio_s,
        flops=flops,
        floor_per_video_s=floor_segment * VIDEO_FPS / new_frames,
        achieved_tflops=flops["dit_step_flops"] / gpus / step_s / TERA,
        peak_memory_gib=peak,
        check=check,
        gpus=gpus,
    )


def run(args: argparse.Namespace) -> list[OmniBenchReport]:
    """Build the models once, then time every case (``--gpus N``: in N new processes, one
    per device; rank 0's reports)."""
    return flashtalk_bench.run_ranks(args, measure)


def measure(parallel: ParallelGroup | None, args: argparse.Namespace) -> list[OmniBenchReport]:
    """One process's run: alone (``parallel`` None) or as one rank of a group, in lockstep
    with the others. Rank 0 (or the lone process) returns the reports, the others none."""
    default = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(default) if parallel is None else parallel.device
    size = omni_size(args.size or ("14b" if device.type == "cuda" else "tiny"))
    options = flashtalk_bench.resolve_options(args, device)
    if args.baseline:
        args.batch_passes = False
    started = time.perf_counter()
    models = build_models(
        size,
        model_dir=args.model_dir,
        device=device,
        speed=options,
        random_weights=args.model_dir is None,
        seed=args.seed,
    )
    models.dit.set_parallel(parallel)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    load_s = time.perf_counter() - started
    logger.info("OmniAvatar %s built in %.1f s (%s)", size.name, load_s, models.weights)
    reports = []
    chosen = cases(
        size, args.case, steps=args.steps, stream_steps=args.stream_steps, tiled_vae=args.tiled_vae
    )
    for recipe in chosen:
        models.vae.tiled = recipe.tiled_vae
        with sdpa_backends(options.attention):
            report = bench_case(models, recipe, options, args, device, load_s, parallel)
        logger.info("%s", report.row())
        reports.append(report)
    return reports if parallel is None or parallel.is_primary else []


# -- command line --------------------------------------------------------------------------


def add_omni_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only the OmniAvatar benchmark has (the rest are ``pipeline.bench``'s)."""
    group = parser.add_argument_group("omniavatar", "with --engine omniavatar")
    group.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=None,
        help="OmniAvatar size (default: 14b on CUDA, tiny on CPU)",
    )
    group.add_argument(
        "--case",
        choices=CASE_CHOICES,
        nargs="+",
        default=list(CASE_CHOICES),
        help="official recipe, the size's fast preset, the streaming candidates (default: all)",
    )
    group.add_argument("--timed-steps", type=flashtalk_bench._positive, default=DEFAULT_TIMED_STEPS)
    group.add_argument(
        "--warmup-steps", type=flashtalk_bench._non_negative, default=DEFAULT_WARMUP_STEPS
    )
    group.add_argument(
        "--video-seconds",
        type=float,
        default=DEFAULT_VIDEO_S,
        help="length of the video the timings are projected to",
    )
    group.add_argument(
        "--stream-steps", type=flashtalk_bench._positive, default=DEFAULT_STREAM_STEPS
    )
    group.add_argument(
        "--no-batch-passes",
        dest="batch_passes",
        action="store_false",
        help="one forward per guidance pass (the official way)",
    )
    group.add_argument(
        "--tiled-vae",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the official blended VAE tiles, or (--no-tiled-vae) whole frames, in every case "
        "(default: each case's own: tiles for the official recipe, whole frames for the fast "
        "presets and the streaming candidates)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``python -m headcast.pipeline.omniavatar.bench``."""
    flashtalk_bench.add_arguments(parser)
    add_omni_arguments(parser)


def execute(
    args: argparse.Namespace, prog: str = "python -m headcast.pipeline.omniavatar.bench"
) -> int:
    """Run the benchmark for parsed ``args``; print the table, write the JSON lines."""
    for flag, given in (
        ("--check-parallel", args.check_parallel),
        ("--scaling-reference", args.scaling_reference is not None),
    ):
        if given:
            raise SystemExit(
                f"{flag} belongs to the FlashTalk benchmark; the OmniAvatar one reports the "
                "group's times alone (compare with a --gpus 1 run). Leave it out."
            )
    args.command_line = flashtalk_bench.command_line(prog, args, add_arguments)
    reports = run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text("".join(json.dumps(asdict(report)) + "\n" for report in reports))
        logger.info("wrote %s", args.json)
    sys.stdout.write(TABLE_HEADER + "".join(report.row() + "\n" for report in reports))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m headcast.pipeline.omniavatar.bench [flags]``."""
    return flashtalk_bench.main(
        argv,
        prog="python -m headcast.pipeline.omniavatar.bench",
        description=__doc__.splitlines()[0],
        add=add_arguments,
        run_parsed=execute,
    )


if __name__ == "__main__":
    sys.exit(main())

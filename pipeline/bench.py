"""``headcast bench``: time every stage of a streaming chunk, with the memory it needs.

Owns: the benchmark's arguments (``add_arguments``, shared with the ``headcast bench``
subcommand), the run on a checkpoint or on random full-size weights
(``pipeline.random_weights``): warm-up chunks, then timed chunks: medians of every stage,
chunk wall time, RTF = chunk time / 1.12 s, peak memory, load and first-chunk time; FLOP
counts of a DiT step and a VAE decode (``FlopCounterMode`` on meta tensors), optional
reference outputs on fixed inputs to compare variants (``pipeline.bench_checks``), and the
JSON report. ``python -m headcast.pipeline.bench`` runs it without the serving stack.

``--gpus N`` (N > 1) runs the chunk sequence-parallel on N GPUs: N processes, one per GPU
(``pipeline.launch``: NCCL, NVLink multicast off), each timing its own chunks in lockstep;
rank 0 reports, with the communication time of a DiT step (``pipeline.bench_parallel``),
each rank's share of the VAE work, the speed-up against a one-GPU report
(``--scaling-reference``) and, with ``--check-parallel``, the group's outputs against one
GPU computing them alone. On a CPU the same runs on gloo processes (tiny preset).

Stage times come from ``FlashTalkGenerator.step``'s timer (CUDA events on the GPU). Must
not know about the server, sessions or codecs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from headcast.pipeline.attention import ATTENTION_BACKENDS
from headcast.pipeline.avatar_art import draw_default_avatar
from headcast.pipeline.bench_checks import consistency_checks, parallel_check
from headcast.pipeline.bench_parallel import band_flops, comm_probe, scaling
from headcast.pipeline.config import PRESETS, PipelineConfig, preset
from headcast.pipeline.dit import (
    CLIP_EMBED_DIM,
    CLIP_IMAGE_TOKENS,
    FlashTalkDiT,
)
from headcast.pipeline.generator import FlashTalkGenerator
from headcast.pipeline.launch import group_devices, run_group
from headcast.pipeline.media import CHUNK_SAMPLES, CHUNK_SECONDS, SAMPLE_RATE_HZ
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.quantize import QUANTIZE_MODES
from headcast.pipeline.random_weights import RANDOM_PROMPT_TOKENS, random_generator
from headcast.pipeline.speedups import (
    COMPILE_MODES,
    SpeedOptions,
    apply_speedups,
)
from headcast.pipeline.tiny import build_tiny_generator
from headcast.pipeline.vae import WanVAE

logger = logging.getLogger(__name__)

DEFAULT_CHUNKS = 5
"""Timed chunks (medians are taken over them)."""

STEP_CHOICES = (4, 2)
"""Sampling steps the FlashTalk schedules are distilled for."""

DEFAULT_WARMUP = 1
"""Chunks run before timing (the first pays for compilation and autotuning)."""

AUDIO_TONE_HZ = 220.0
AUDIO_LEVEL = 0.1
"""Peak level of the synthetic audio (a tone plus noise, so loudness normalisation runs)."""

GIB = 1024**3
TERA = 1e12

T = TypeVar("T")


# -- FLOPs ---------------------------------------------------------------------------------


def count_flops(config: PipelineConfig) -> dict[str, float]:
    """FLOPs of one DiT step and of one chunk's VAE decode, counted on meta tensors."""
    dtype = torch.bfloat16
    cfg = config
    latent = (1, cfg.vae.z_dim, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
    y_channels = cfg.dit.in_dim - cfg.vae.z_dim
    audio = (1, cfg.audio.chunk_frames, cfg.audio.audio_window, cfg.dit.audio_proj_blocks,
             cfg.dit.audio_proj_channels)  # fmt: skip
    with torch.device("meta"), torch.no_grad():
        dit = FlashTalkDiT(cfg.dit).to(dtype)
        vae = WanVAE(cfg.vae).to(dtype)
        with FlopCounterMode(display=False) as dit_counter:
            dit(
                torch.empty(latent),
                torch.empty(1),
                torch.empty(1, RANDOM_PROMPT_TOKENS, cfg.dit.text_dim, dtype=dtype),
                torch.empty(1, CLIP_IMAGE_TOKENS, CLIP_EMBED_DIM, dtype=dtype),
                torch.empty(1, y_channels, *latent[2:]),
                torch.empty(audio, dtype=dtype),
            )
        with FlopCounterMode(display=False) as vae_counter:
            vae.decode(torch.empty(latent))
    counts = dit_counter.get_flop_counts().get("Global", {})
    attention = sum(n for op, n in counts.items() if "bmm" in str(op) or "attention" in str(op))
    return {
        "dit_step_flops": float(dit_counter.get_total_flops()),
        "dit_step_attention_flops": float(attention),
        "vae_decode_flops": float(vae_counter.get_total_flops()),
    }


# -- the run -------------------------------------------------------------------------------


@dataclass
class BenchReport:
    """Everything one ``headcast bench`` run measured; written as JSON."""

    label: str
    command: str
    date: str
    device: str
    torch: str
    cuda: str | None
    host: str
    gpus: int
    """Devices the chunk ran on (sequence-parallel when more than one)."""
    preset: str
    height: int
    width: int
    steps: int
    quantize: str
    """DiT block linears: ``none`` (bf16 on a GPU), ``fp8``, ``int8``, ``int4``, ``nf4``."""
    tokens: int
    weights: str
    options: dict[str, Any]
    chunks: int
    warmup: int
    load_s: float
    first_chunk_s: float
    compile_s: float
    """First chunk's time minus the median chunk's (compilation, autotuning, warm-up)."""
    chunk_s: float
    """Median wall time of a chunk (``step()`` call, frames on the host)."""
    rtf: float
    """chunk_s / 1.12 s."""
    stages_s: dict[str, float]
    """Median per stage (CUDA-event time on the GPU)."""
    dit_step_s: float
    """Median over chunks of the mean DiT step."""
    vae_decode_s: float
    """Median VAE decode of a chunk's 33 frames (rank 0's, in a group)."""
    chunk_walls_s: list[float]
    peak_memory_gib: float | None
    """Peak allocated device memory while streaming (timed chunks)."""
    peak_reserved_gib: float | None
    load_peak_memory_gib: float | None
    """Peak allocated device memory from the start to the end of loading."""
    flops: dict[str, float]
    achieved_tflops: dict[str, float]
    check: dict[str, float] = field(default_factory=dict)
    comm: dict[str, float] = field(default_factory=dict)
    """With --gpus N: seconds of one DiT step's collectives run alone (``comm_step_s``), of
    one chunk's video gather, and the all-to-all bytes a rank sends per step."""
    scaling: dict[str, float] = field(default_factory=dict)
    """With --scaling-reference: speed-up and efficiency (speed-up / gpus) per stage."""

    def table(self) -> str:
        """A short human-readable summary (markdown)."""
        lines = [
            (
                f"## {self.label}: {self.preset} {self.height}x{self.width}, "
                f"{self.steps} steps, {self.gpus} x {self.device}, torch {self.torch}"
            ),
            "| stage | median s |",
            "|---|---|",
            *(f"| {name} | {seconds:.4f} |" for name, seconds in self.stages_s.items()),
            f"| **chunk (wall)** | **{self.chunk_s:.3f}** (RTF {self.rtf:.2f}) |",
            (
                f"load {self.load_s:.1f} s, first chunk {self.first_chunk_s:.1f} s "
                f"(compile/warm-up {self.compile_s:.1f} s), DiT step {self.dit_step_s:.3f} s"
            ),
        ]
        if self.peak_memory_gib is not None:
            lines.append(
                f"peak memory {self.peak_memory_gib:.1f} GiB streaming, "
                f"{self.load_peak_memory_gib:.1f} GiB loading"
            )
        if self.achieved_tflops:
            lines.append(
                "achieved TFLOP/s: "
                + ", ".join(f"{k} {v:.0f}" for k, v in self.achieved_tflops.items())
            )
        if self.comm:
            lines.append(
                "communication: " + ", ".join(f"{k} {v:.3g}" for k, v in self.comm.items())
            )
        if self.scaling:
            lines.append("scaling: " + ", ".join(f"{k} {v:.2f}" for k, v in self.scaling.items()))
        if self.check:
            lines.append("check: " + ", ".join(f"{k} {v:.3g}" for k, v in self.check.items()))
        return "\n".join(lines) + "\n"


def synthetic_audio(index: int, seed: int) -> np.ndarray:
    """Chunk ``index`` of a tone plus noise: float32 [17,920] at 16 kHz."""
    rng = np.random.default_rng(seed + index)
    t = (np.arange(CHUNK_SAMPLES) + index * CHUNK_SAMPLES) / SAMPLE_RATE_HZ
    tone = np.sin(2.0 * np.pi * AUDIO_TONE_HZ * t)
    noise = rng.standard_normal(CHUNK_SAMPLES)
    return (AUDIO_LEVEL * 0.5 * (tone + 0.5 * noise)).astype(np.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """What a report calls ``device``: the GPU's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def _memory_gib(value: int) -> float:
    return value / GIB


def resolve_options(args: argparse.Namespace, device: torch.device) -> SpeedOptions:
    """The speed options the flags ask for: ``--baseline`` (official) or ``fast``, then
    each explicit flag on top."""
    base = SpeedOptions.official() if args.baseline else SpeedOptions.fast(device)
    changes: dict[str, Any] = {"quantize": args.quantize}
    if args.attention is not None:
        changes["attention"] = args.attention
    if args.attention_fp8:
        changes["attention_fp8"] = True
    if args.fuse is not None:
        changes["fuse_projections"] = args.fuse
    if args.vae_channels_last is not None:
        changes["vae_channels_last"] = args.vae_channels_last
    if args.cudnn_benchmark is not None:
        changes["cudnn_benchmark"] = args.cudnn_benchmark
    if args.vae_fused_norms is not None:
        changes["vae_fused_norms"] = args.vae_fused_norms
    if args.compile:
        changes["compile_mode"] = args.compile_mode
    return SpeedOptions(**{**asdict(base), **changes})


def build_generator(
    args: argparse.Namespace, config: PipelineConfig, options: SpeedOptions, device: torch.device
) -> tuple[FlashTalkGenerator, str]:
    """The generator to time and a word for its weights."""
    if args.model_dir is not None:
        from headcast.pipeline.flashtalk import load_flashtalk_generator

        if args.wav2vec_dir is None:
            raise SystemExit("--model-dir needs --wav2vec-dir")
        generator = load_flashtalk_generator(
            config, args.model_dir, args.wav2vec_dir, device=device
        )
        apply_speedups(generator, options)
        return generator, f"checkpoint {args.model_dir}"
    if config.wav2vec is not None:  # a random-weight preset (tiny): the CPU builder
        generator = build_tiny_generator(config, seed=args.seed, device=device)
        apply_speedups(generator, options)
        return generator, "random (tiny preset, float32)"
    if device.type != "cuda":
        raise SystemExit(
            f"preset {config.preset} with random weights is built on a CUDA device; "
            "on CPU use --preset tiny"
        )
    generator = random_generator(config, options, device=device, seed=args.seed)
    apply_speedups(generator, options, blocks_prepared=True)
    return generator, "random (full size, bf16)"


def run_ranks(args: argparse.Namespace, measure: Callable[[ParallelGroup | None, Any], T]) -> T:
    """``measure(None, args)`` here, or with ``--gpus N`` (N > 1) ``measure(parallel, args)``
    in N new processes of one group, one per device (``cuda:0`` .. ``cuda:N-1``; with a CPU
    device, gloo processes); rank 0's result."""
    if args.gpus == 1:
        return measure(None, args)
    device_type = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    try:
        devices = group_devices(args.gpus, device_type)
    except ValueError as exc:  # more GPUs asked for than there are
        raise SystemExit(f"--gpus {args.gpus}: {exc}") from None
    result: T = run_group(args.gpus, measure, (args,), devices=devices)
    return result


def run(args: argparse.Namespace) -> BenchReport:
    """Build, warm up, time ``args.chunks`` chunks and return the report (``--gpus N``:
    in N new processes, one per device; rank 0's report)."""
    report = run_ranks(args, measure)
    assert report is not None, "rank 0 always reports"
    return report


def _single_device(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def measure(parallel: ParallelGroup | None, args: argparse.Namespace) -> BenchReport | None:
    """One process's run: alone (``parallel`` None) or as one rank of a group, in lockstep
    with the others. Rank 0 (or the lone process) returns the report, the others None."""
    device = _single_device(args) if parallel is None else parallel.device
    name = args.preset or ("flashtalk-14b" if device.type == "cuda" else "tiny")
    if args.steps not in (None, *STEP_CHOICES):
        raise SystemExit(f"--steps {args.steps}: FlashTalk is distilled for 4 or 2 steps")
    config = preset(name, steps=args.steps, height=args.height, width=args.width, seed=args.seed)
    options = resolve_options(args, device)
    if args.float32_check and options.quantize != "none":
        raise SystemExit("--float32-check compares bf16 weights with float32 ones: drop --quantize")
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
        if args.memory_limit_gib is not None:  # allocations past the limit raise OOM
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(args.memory_limit_gib * GIB / total, device)

    with torch.no_grad():
        # 1. weights and speed options; the group's split
        started = time.perf_counter()
        generator, weights = build_generator(args, config, options, device)
        generator.use_parallel(parallel)
        _sync(device)
        load_s = time.perf_counter() - started
        load_peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
        logger.info("built in %.1f s (%s); options %s", load_s, weights, options)

        # 2. one avatar, one stream
        state = generator.prepare(draw_default_avatar(config.height, config.width))

        # 3. warm-up chunks (the first compiles and autotunes)
        walls: list[float] = []
        for index in range(args.warmup):
            clock = time.perf_counter()
            generator.step(state, synthetic_audio(index, args.seed))
            walls.append(time.perf_counter() - clock)
            logger.info("warm-up chunk %d: %.2f s", index, walls[-1])
        first_chunk_s = walls[0] if walls else float("nan")

        # 4. timed chunks
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        chunk_walls: list[float] = []
        stages: dict[str, list[float]] = {}
        for index in range(args.warmup, args.warmup + args.chunks):
            clock = time.perf_counter()
            output = generator.step(state, synthetic_audio(index, args.seed))
            chunk_walls.append(time.perf_counter() - clock)
            for stage, seconds in output.timings.items():
                stages.setdefault(stage, []).append(seconds)
            logger.info("chunk %d: %.3f s", index, chunk_walls[-1])
        peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
        reserved = torch.cuda.max_memory_reserved(device) if on_cuda else None

        # 5. a group's communication alone, and its outputs against one device alone
        comm = comm_probe(generator, parallel) if parallel is not None else {}
        check: dict[str, float] = {}
        if parallel is not None and args.check_parallel:
            check.update(parallel_check(generator, parallel, args.seed))

        # 6. fixed-input outputs, to compare this variant with other paths
        wanted = (args.save_reference, args.compare_reference, args.self_check or None,
                  args.float32_check or None)  # fmt: skip
        if any(item is not None for item in wanted):
            check.update(consistency_checks(generator, args))
    if parallel is not None and not parallel.is_primary:
        return None

    chunk_s = statistics.median(chunk_walls)
    dit_steps = [
        statistics.mean(v[i] for k, v in stages.items() if k.startswith("dit_step"))
        for i in range(args.chunks)
    ]
    dit_step_s = statistics.median(dit_steps)
    flops = count_flops(config)
    if args.gpus > 1:
        flops.update(band_flops(config, args.gpus))
    stage_medians = {stage: statistics.median(values) for stage, values in stages.items()}
    achieved = {
        "dit_step": flops["dit_step_flops"] / dit_step_s / TERA,
        "vae_decode": flops["vae_decode_flops"] / stage_medians["vae_decode_s"] / TERA,
    }
    grid_tokens = (
        config.latent_frames
        * (config.latent_height // config.dit.patch_size[1])
        * (config.latent_width // config.dit.patch_size[2])
    )
    return BenchReport(
        label=args.label or _default_label(options, config, args.gpus),
        command=getattr(args, "command_line", None)
        or command_line("python -m headcast.pipeline.bench", args),
        date=datetime.date.today().isoformat(),
        device=device_name(device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        host=platform.node(),
        gpus=args.gpus,
        preset=config.preset,
        height=config.height,
        width=config.width,
        steps=config.steps,
        quantize=options.quantize,
        tokens=grid_tokens,
        weights=weights,
        options=asdict(options),
        chunks=args.chunks,
        warmup=args.warmup,
        load_s=load_s,
        first_chunk_s=first_chunk_s,
        compile_s=first_chunk_s - chunk_s,
        chunk_s=chunk_s,
        rtf=chunk_s / CHUNK_SECONDS,
        stages_s=stage_medians,
        dit_step_s=dit_step_s,
        vae_decode_s=stage_medians["vae_decode_s"],
        chunk_walls_s=chunk_walls,
        peak_memory_gib=None if peak is None else _memory_gib(peak),
        peak_reserved_gib=None if reserved is None else _memory_gib(reserved),
        load_peak_memory_gib=None if load_peak is None else _memory_gib(load_peak),
        flops=flops,
        achieved_tflops=achieved,
        check=check,
        comm=comm,
    )


def _read_scaling_reference(path: Path | None) -> dict[str, Any] | None:
    """The ``--scaling-reference`` report, read before the run so a bad path fails at once."""
    if path is None:
        return None
    advice = "run `headcast bench --gpus 1 --json PATH` with the same settings first"
    try:
        reference: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(
            f"--scaling-reference {path}: cannot read a bench JSON report there ({exc}); {advice}"
        ) from None
    if reference.get("gpus", 1) != 1:
        raise SystemExit(
            f"--scaling-reference {path} is a {reference['gpus']}-GPU report; {advice}"
        )
    return reference


def _default_label(options: SpeedOptions, config: PipelineConfig, gpus: int) -> str:
    parts = [f"{gpus}gpu"] if gpus > 1 else []
    parts.append(options.quantize if options.quantize != "none" else "bf16")
    if options.attention_fp8:
        parts.append("attnfp8")
    parts.append("compiled" if options.compile_mode else "eager")
    parts.append(f"{config.steps}steps")
    return "-".join(parts)


# -- command line --------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (shared by ``python -m headcast.pipeline.bench`` and
    ``headcast bench``)."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="model sizes (default: flashtalk-14b on CUDA, tiny on CPU)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights (the default without --model-dir; times are the same)",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="official checkpoint directory"
    )
    parser.add_argument("--wav2vec-dir", type=Path, default=None, help="wav2vec2 directory")
    parser.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help="sampling steps (flashtalk: 4 or 2; omniavatar: replaces each case's)",
    )
    parser.add_argument("--height", type=int, default=None, help="frame height (multiple of 16)")
    parser.add_argument("--width", type=int, default=None, help="frame width (multiple of 16)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="none",
        help="DiT block linears: bf16, fp8 (scaled_mm), int8/int4 (quanto), nf4",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="official settings: no fusion, PyTorch's SDPA choice, default VAE layout",
    )
    parser.add_argument(
        "--attention",
        choices=ATTENTION_BACKENDS,
        default=None,
        help="SDPA kernel preference (default: cudnn on CUDA, auto with --baseline)",
    )
    parser.add_argument(
        "--attention-fp8",
        action="store_true",
        help="DiT self-attention in fp8 (cuDNN's kernel; Hopper, pip nvidia-cudnn-frontend)",
    )
    parser.add_argument(
        "--fuse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fused q/k/v and k/v projections",
    )
    parser.add_argument("--vae-channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--vae-fused-norms",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="VAE norm + SiLU as one Triton kernel (needs --vae-channels-last)",
    )
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=None,
        help="cap this process's device memory (allocations past it fail)",
    )
    parser.add_argument("--chunks", type=_positive, default=DEFAULT_CHUNKS, help="timed chunks")
    parser.add_argument(
        "--warmup", type=_non_negative, default=DEFAULT_WARMUP, help="untimed chunks first"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument(
        "--gpus",
        type=_positive,
        default=1,
        help="run the chunk sequence-parallel on this many GPUs (one process "
        "each; on a CPU device: gloo processes)",
    )
    parser.add_argument(
        "--check-parallel",
        action="store_true",
        help="with --gpus N: compare the group's DiT velocity, decoded video and "
        "motion latents with one GPU computing them alone (same weights, inputs)",
    )
    parser.add_argument(
        "--scaling-reference",
        type=Path,
        default=None,
        help="a --gpus 1 JSON report: add speed-up and efficiency per stage",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and noise")
    parser.add_argument("--label", default=None, help="name of this run in tables")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument(
        "--save-reference",
        type=Path,
        default=None,
        help="save fixed-input DiT/VAE outputs here (to compare variants)",
    )
    parser.add_argument(
        "--compare-reference",
        type=Path,
        default=None,
        help="report relative errors against outputs saved by --save-reference",
    )
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="report relative errors against this model's eager bf16 path",
    )
    parser.add_argument(
        "--float32-check",
        action="store_true",
        help="also against a float32 copy of the same weights (bf16 only; "
        "needs 4 bytes per parameter of free device memory)",
    )


def command_line(
    prog: str,
    args: argparse.Namespace,
    add: Callable[[argparse.ArgumentParser], None] | None = None,
) -> str:
    """The command that repeats this run: ``prog`` and every flag that differs from its
    default (the defaults come from ``add``, by default ``add_arguments``)."""
    parser = argparse.ArgumentParser()
    (add or add_arguments)(parser)
    defaults = vars(parser.parse_args([]))
    parts = [prog]
    for key, default in defaults.items():
        value = getattr(args, key, default)
        if value == default:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is False:
            parts.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, list | tuple):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def execute(args: argparse.Namespace, prog: str = "python -m headcast.pipeline.bench") -> int:
    """Run the benchmark for parsed ``args``; print the table, write the JSON."""
    if args.check_parallel and args.gpus == 1:
        raise SystemExit("--check-parallel compares a group with one GPU: add --gpus N (N > 1)")
    if args.warmup == 0 and args.compile:
        logger.warning("--compile with --warmup 0: the first timed chunk includes compilation")
    args.command_line = command_line(prog, args)
    reference = _read_scaling_reference(args.scaling_reference)
    report = run(args)
    if reference is not None:
        times = {"chunk_s": report.chunk_s, "dit_step_s": report.dit_step_s, **report.stages_s}
        report.scaling = scaling(times, reference, args.gpus)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
        logger.info("wrote %s", args.json)
    sys.stdout.write(report.table())
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "python -m headcast.pipeline.bench",
    description: str = __doc__.splitlines()[0],
    add: Callable[[argparse.ArgumentParser], None] = add_arguments,
    run_parsed: Callable[[argparse.Namespace], int] = execute,
) -> int:
    """``python -m headcast.pipeline.bench [flags]`` (another benchmark passes its own flags
    and run)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    return run_parsed(args)


if __name__ == "__main__":
    sys.exit(main())

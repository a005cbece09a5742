"""``headcast generate --engine omniavatar``: a long audio file into an OmniAvatar MP4, offline.

Owns the OmniAvatar flags of ``generate`` (size, recipe preset and its overrides, random
full-size weights, speed options) and the offline run: the models of the size, a renderer
with the recipe, and every segment's frames written as soon as it is decoded, with the
stretch of audio they show, while the next segment is sampled. The muxed audio is the
input delayed by the recipe's leading silence plus one frame (frame 0 is the reference
picture), as the official script shifts it; the video has ``ceil(25 * seconds) + 1``
frames of the silence-prefixed audio. A progress bar (tqdm, frames) runs on a terminal.

``--gpus N`` (N > 1) renders on N sequence-parallel ranks (``pipeline.launch``: one process
per GPU, ``cuda:0`` .. ``cuda:N-1``, NCCL with NVLink multicast off): every rank builds the
same models (the same seed, or the same folder), runs the same segment loop on the same
inputs and noise, and its DiT computes its share of the tokens (``set_parallel``); the VAE
and the audio encoder run whole on every rank. Rank 0 logs, shows the progress bar and
writes the file; the other ranks log warnings only. Without CUDA, ``--device cpu`` runs the
ranks as gloo CPU processes (tests; not faster).

Knows nothing about the web server or sessions. Bad input raises ``OmniUsageError`` with a
message that says what to pass instead; ``generate`` turns it into exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from headcast.pipeline.attention import ATTENTION_BACKENDS
from headcast.pipeline.checkpoint import CheckpointError
from headcast.pipeline.launch import group_devices, run_group
from headcast.pipeline.media import VIDEO_FPS
from headcast.pipeline.omniavatar.config import SIZES, OmniConfigError, omni_size
from headcast.pipeline.omniavatar.models import build_models
from headcast.pipeline.omniavatar.recipe import (
    DEFAULT_PROMPT,
    OFFICIAL_SEED,
    TINY_BUCKETS,
    TINY_MAX_TOKENS,
    Recipe,
    recipe,
)
from headcast.pipeline.omniavatar.render import (
    OmniAvatarRenderer,
    SegmentOutput,
    frames_to_uint8,
)
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.quantize import QUANTIZE_MODES
from headcast.pipeline.speedups import COMPILE_MODES, SpeedOptions
from headcast.streaming.audio_file import AudioClip
from headcast.streaming.mp4 import Mp4Writer

logger = logging.getLogger(__name__)

ENGINE = "omniavatar"
"""The engine name ``generate --engine`` routes here."""

PRESETS = ("official", "fast")
"""``official``: configs/inference.yaml; ``fast``: the seed guide's fast preset of the size."""

FAST_RECIPES = {"14b": "fast-14b", "1.3b": "fast-1.3b", "tiny": "fast-1.3b"}
"""The fast recipe of each size (tiny borrows the 1.3B's settings at its own bucket)."""

RECIPE_FLAGS = {
    "steps": "steps",
    "guidance": "guidance",
    "audio_guidance": "audio_guidance",
    "teacache": "teacache",
    "max_tokens": "max_tokens",
    "overlap": "overlap",
}
"""argparse dest -> ``Recipe`` field the flag overrides."""

ONLY_FLAGS = {
    "--size": "size",
    "--preset": "preset",
    "--guidance": "guidance",
    "--audio-guidance": "audio_guidance",
    "--teacache": "teacache",
    "--max-tokens": "max_tokens",
    "--overlap": "overlap",
    "--random-weights": "random_weights",
    "--quantize": "quantize",
    "--compile": "compile",
    "--compile-mode": "compile_mode",
    "--attention": "attention",
    "--attention-fp8": "attention_fp8",
    "--no-batch-passes": "batch_passes",
    "--[no-]tiled-vae": "tiled_vae",
    "--device": "device",
    "--gpus": "gpus",
}
"""Flags only ``--engine omniavatar`` takes -> their argparse dest."""

PARTIAL_SUFFIX = ".partial"
"""Suffix of the file being written; renamed to ``--out`` once complete."""

RENDER_TIMEOUT_S = math.inf
"""No deadline for a group's whole render (a long recording takes hours): a rank that dies
is noticed at once, a hung collective fails after ``pipeline.launch``'s collective timeout."""


class OmniUsageError(Exception):
    """Bad OmniAvatar input the user can fix; the message says how."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The OmniAvatar flags of ``generate`` (ignored by the other engines)."""
    group = parser.add_argument_group(
        "omniavatar", "flags of --engine omniavatar (the official recipe unless changed)"
    )
    group.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=None,
        help="model size (default 14b; tiny: random weights, no model folder, CPU)",
    )
    group.add_argument(
        "--preset",
        choices=PRESETS,
        default="official",
        help="official: 50 steps, guidance 4.5, no TeaCache, 30000 tokens, overlap 13; "
        "fast: 14b 20/3.5/0.14/20000/9, 1.3b 15/3.0/0.14/15000/5 "
        "(faster; the log says what it trades)",
    )
    group.add_argument(
        "--guidance", type=float, default=None, help="prompt (and audio) guidance scale"
    )
    group.add_argument(
        "--audio-guidance",
        type=float,
        default=None,
        help="separate audio guidance scale (three passes per step)",
    )
    group.add_argument(
        "--teacache", type=float, default=None, help="TeaCache threshold (0 = off; 0.05-0.15)"
    )
    group.add_argument("--max-tokens", type=int, default=None, help="DiT tokens per segment")
    group.add_argument(
        "--overlap", type=int, default=None, help="frames carried between segments (1 + 4n)"
    )
    group.add_argument(
        "--random-weights",
        action="store_true",
        help="random full-size weights on the GPU (timing without the checkpoint; noise pictures)",
    )
    group.add_argument(
        "--quantize", choices=QUANTIZE_MODES, default="none", help="DiT block linears"
    )
    group.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    group.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    group.add_argument(
        "--attention-fp8",
        action="store_true",
        help="self-attention in fp8 (cuDNN; Hopper, pip nvidia-cudnn-frontend): faster, "
        "about 6 %% error in each attention output",
    )
    group.add_argument(
        "--attention",
        choices=ATTENTION_BACKENDS,
        default=None,
        help="SDPA kernel preference (default cudnn on CUDA)",
    )
    group.add_argument(
        "--no-batch-passes",
        dest="batch_passes",
        action="store_false",
        help="one DiT forward per guidance pass (the official way) instead of one batch",
    )
    group.add_argument(
        "--tiled-vae",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the VAE in the official blended tiles, or (--no-tiled-vae) on whole frames: a "
        "third of the VAE time, pixels differ near the tile seams (default: the preset's; "
        "official tiles, fast whole frames)",
    )
    group.add_argument(
        "--device",
        default=None,
        help="torch device (default: cuda if available, CPU for tiny; with --gpus N: cuda or cpu)",
    )
    group.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="sequence-parallel ranks, one process per GPU (cuda:0..N-1): the DiT's tokens are "
        "split among them, rank 0 writes the MP4. Without CUDA, N > 1 needs --device cpu "
        "(N gloo CPU processes: for testing, not faster)",
    )


def flag_default(dest: str) -> object:
    """The default of an OmniAvatar flag's ``dest`` (what "not given" looks like)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.get_default(dest)


def resolve_recipe(args: argparse.Namespace, size_name: str) -> Recipe:
    """The recipe the flags ask for: the preset of the size, then each explicit flag."""
    name = "official" if args.preset == "official" else FAST_RECIPES[size_name]
    overrides = {field: getattr(args, dest, None) for dest, field in RECIPE_FLAGS.items()}
    if size_name == "tiny":
        overrides["buckets"] = TINY_BUCKETS
        overrides["max_tokens"] = overrides["max_tokens"] or TINY_MAX_TOKENS
    overrides["seed"] = args.seed if args.seed is not None else OFFICIAL_SEED
    overrides["tiled_vae"] = args.tiled_vae
    try:
        return recipe(name, **overrides)
    except ValueError as exc:
        raise OmniUsageError(str(exc)) from exc


def _device(args: argparse.Namespace, tiny: bool) -> torch.device:
    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")


def rank_devices(args: argparse.Namespace, tiny: bool) -> list[torch.device]:
    """One device per rank: ``--gpus 1`` this process's device, ``--gpus N`` ``cuda:0`` ..
    ``cuda:N-1`` (or N CPU processes with ``--device cpu``); OmniUsageError says what to pass."""
    gpus: int = args.gpus
    if gpus < 1:
        raise OmniUsageError(
            f"--gpus {gpus}: pass 1 (one process renders) or the number of GPUs to split "
            "the DiT's tokens over."
        )
    if gpus == 1:
        return [_device(args, tiny)]
    asked = None if args.device is None else torch.device(args.device)
    if asked is not None and asked.type == "cpu":
        return group_devices(gpus, "cpu")
    if asked is not None and (asked.type != "cuda" or asked.index is not None):
        raise OmniUsageError(
            f"--device {args.device} with --gpus {gpus}: the ranks take cuda:0 .. "
            f"cuda:{gpus - 1} (CUDA_VISIBLE_DEVICES chooses which GPUs those are). Pass "
            "--device cuda, --device cpu (gloo CPU processes), or leave --device out."
        )
    visible = torch.cuda.device_count()
    if visible == 0:
        raise OmniUsageError(
            f"--gpus {gpus}: torch sees no CUDA GPU on this machine. Pass --gpus 1, or add "
            f"--device cpu to run {gpus} CPU processes over gloo (for testing; not faster)."
        )
    if gpus > visible:
        raise OmniUsageError(
            f"--gpus {gpus}: this machine has {visible} CUDA GPU(s) visible. Pass --gpus "
            f"{visible} or fewer."
        )
    return group_devices(gpus, "cuda")


def _check_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None:
            raise OmniUsageError(
                f"{flag} does not apply to OmniAvatar: it generates at the bucket closest to the "
                "picture's aspect ratio (400x720, 720x720 or 720x400). Leave it out."
            )


@dataclass(frozen=True)
class RenderJob:
    """What every rank renders, resolved from the flags once (it travels to the ranks)."""

    size: str
    """``SIZES`` name (an ``OmniSize`` holds read-only mappings, which do not pickle)."""
    recipe: Recipe
    model_dir: Path | None
    wav2vec_dir: Path | None
    random_weights: bool
    quantize: str
    compile_mode: str | None
    """``torch.compile`` mode of the DiT blocks (None: eager)."""
    attention: str | None
    """SDPA kernel preference (None: the speed options' choice for the device)."""
    attention_fp8: bool
    """Self-attention through cuDNN's fp8 kernel (``pipeline.attention_fp8``)."""
    batch_passes: bool
    prompt: str
    quiet: bool


def render_mp4(args: argparse.Namespace, image: np.ndarray, audio: AudioClip, out: Path) -> None:
    """Render ``audio`` spoken by the face in ``image`` into ``out`` (atomically): in this
    process, or with ``--gpus N`` on N sequence-parallel ranks, rank 0 writing the file."""
    _check_flags(args)
    try:
        size = omni_size(args.size or "14b")
    except OmniConfigError as exc:
        raise OmniUsageError(str(exc)) from exc
    job = RenderJob(
        size=size.name,
        recipe=resolve_recipe(args, size.name),
        model_dir=args.model_dir,
        wav2vec_dir=args.wav2vec_dir,
        random_weights=args.random_weights,
        quantize=args.quantize,
        compile_mode=args.compile_mode if args.compile else None,
        attention=args.attention,
        attention_fp8=args.attention_fp8,
        batch_passes=args.batch_passes,
        prompt=args.prompt or DEFAULT_PROMPT,
        quiet=args.quiet,
    )
    devices = rank_devices(args, size.is_random)
    logger.info("OmniAvatar %s, recipe %s: %s", size.description, job.recipe.name, job.recipe.trade)
    if len(devices) == 1:
        _render(job, devices[0], None, image, audio, out)
        return
    logger.info(
        "%d sequence-parallel ranks on %s; rank 0 writes %s",
        len(devices),
        ", ".join(map(str, devices)),
        out,
    )
    try:
        error = run_group(
            len(devices),
            _render_rank,
            (job, image, audio, out),
            devices=devices,
            timeout_s=RENDER_TIMEOUT_S,
        )
    finally:  # a rank that was stopped leaves its file half written
        out.with_name(out.name + PARTIAL_SUFFIX).unlink(missing_ok=True)
    if error is not None:
        raise OmniUsageError(error)


def _render_rank(
    parallel: ParallelGroup, job: RenderJob, image: np.ndarray, audio: AudioClip, out: Path
) -> str | None:
    """One rank of a ``--gpus N`` render; the message of a usage error (raised by the parent)."""
    if not parallel.is_primary:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the progress
    try:
        _render(job, parallel.device, parallel, image, audio, out)
    except OmniUsageError as exc:
        return str(exc)
    return None


def _render(
    job: RenderJob,
    device: torch.device,
    parallel: ParallelGroup | None,
    image: np.ndarray,
    audio: AudioClip,
    out: Path,
) -> None:
    """Build the models on ``device`` and render; alone (``parallel`` None) or as one rank,
    rank 0 writing ``out``."""
    size = omni_size(job.size)
    speed = SpeedOptions.fast(
        device,
        quantize=job.quantize,
        compile_mode=job.compile_mode,
        attention_fp8=job.attention_fp8,
    )
    started = time.perf_counter()
    try:
        models = build_models(
            size,
            model_dir=job.model_dir,
            device=device,
            speed=speed,
            random_weights=job.random_weights,
            tiled_vae=job.recipe.tiled_vae,
            wav2vec_dir=job.wav2vec_dir,
        )
    except (ValueError, CheckpointError, OSError) as exc:
        raise OmniUsageError(f"cannot load OmniAvatar {size.name}: {exc}") from exc
    models.dit.set_parallel(parallel)
    logger.info("models ready in %.1f s (%s)", time.perf_counter() - started, models.weights)
    renderer = OmniAvatarRenderer(
        models.dit,
        models.vae,
        models.audio,
        models.prompts,
        job.recipe,
        batch_passes=job.batch_passes,
        attention=job.attention or speed.attention,
    )
    if parallel is None or parallel.is_primary:
        _write(renderer, image, audio, out, prompt=job.prompt, quiet=job.quiet)
        return
    for _ in renderer.render(image, audio.samples, job.prompt):
        pass  # the same segments as rank 0, whose frames go to the file


def _write(
    renderer: OmniAvatarRenderer,
    image: np.ndarray,
    audio: AudioClip,
    out: Path,
    *,
    prompt: str,
    quiet: bool,
) -> None:
    plan = renderer.plan(image.shape[:2], audio.samples.size)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    muxed = _delayed_audio(audio, renderer.recipe.silence_s)  # [C, m] at the original rate
    started = time.perf_counter()
    compute = 0.0
    try:
        with (
            Mp4Writer(
                partial,
                height=plan.bucket[0],
                width=plan.bucket[1],
                audio_rate_hz=audio.original_rate_hz,
                audio_channels=muxed.shape[0],
            ) as writer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="headcast-mp4") as encoder,
            tqdm(
                total=plan.output_frames,
                unit="frame",
                desc="omniavatar",
                file=sys.stderr,
                disable=quiet or not sys.stderr.isatty(),
            ) as progress,
        ):
            writing: Future[None] | None = None
            for segment in renderer.render(image, audio.samples, prompt):
                compute += segment.seconds
                frames = frames_to_uint8(segment.frames)
                last = segment.index == plan.segments - 1
                if writing is not None:
                    writing.result()  # one segment encodes while the next is sampled
                writing = encoder.submit(_write_segment, writer, segment, frames, muxed, last)
                progress.update(frames.shape[0])
                progress.set_postfix(
                    segment=f"{segment.index + 1}/{plan.segments}", s=f"{segment.seconds:.1f}"
                )
            if writing is not None:
                writing.result()
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    media_s = plan.output_frames / VIDEO_FPS
    logger.info(
        "wrote %s: %d segments, %d frames (%.2f s) at %dx%d in %.1f s wall; compute %.1f s = "
        "%.2f s per second of video",
        out,
        plan.segments,
        plan.output_frames,
        media_s,
        plan.bucket[1],
        plan.bucket[0],
        time.perf_counter() - started,
        compute,
        compute / media_s,
    )


def _delayed_audio(audio: AudioClip, silence_s: float) -> np.ndarray:
    """The input audio after the recipe's silence and one frame: ``[C, m]`` float32."""
    delay = round((silence_s + 1 / VIDEO_FPS) * audio.original_rate_hz)
    silence = np.zeros((audio.original.shape[0], delay), dtype=np.float32)
    return np.concatenate([silence, audio.original.astype(np.float32, copy=False)], axis=1)


def _write_segment(
    writer: Mp4Writer, segment: SegmentOutput, frames: np.ndarray, muxed: np.ndarray, last: bool
) -> None:
    """The segment's frames and the audio they show (all that is left after the last one)."""
    writer.write_video(frames)  # [n, H, W, 3]
    rate = writer.audio_rate_hz
    start = segment.first_frame * rate // VIDEO_FPS
    end = (segment.first_frame + frames.shape[0]) * rate // VIDEO_FPS
    writer.write_audio(muxed[:, start : None if last else end])

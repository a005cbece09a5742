"""``headcast generate``: an offline talking-head MP4 from an image and an audio file.

Owns the command's arguments, the checks that turn bad input into one readable line and
exit code 2, and the offline run: the audio is cut into 17,920-sample chunk jobs exactly as
the server's stream mode cuts it (the last one padded with silence), every job goes through
``engine.step`` in order on this thread, and each chunk's frames (the padding's frames
trimmed, so the video is at most one 40 ms frame longer than the audio) are written with
the matching stretch of the original audio while the engine works on the next chunk.

Knows nothing about the web server, WebRTC or sessions; engines come from the registry by
name, so every registered engine works unchanged.
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
from typing import Any

import numpy as np
from tqdm import tqdm

from headcast.pipeline.config import DEFAULT_SEED
from headcast.pipeline.engine import Engine, EngineError, UnknownEngine, default_registry
from headcast.pipeline.imaging import ImageLoadError, load_image
from headcast.pipeline.media import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    MS_PER_S,
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    Avatar,
    Chunk,
    ChunkJob,
)
from headcast.pipeline.omniavatar.recipe import OFFICIAL_SEED as OMNI_OFFICIAL_SEED
from headcast.server.commands import SUMMARIES, generate_omni
from headcast.streaming.audio_file import AudioClip, AudioFileError, read_audio_file
from headcast.streaming.mp4 import Mp4Writer

logger = logging.getLogger(__name__)

NAME = "generate"

EXIT_OK = 0
EXIT_USAGE = 2
"""Exit status for bad input (the same status argparse uses for bad arguments)."""

DEFAULT_ENGINE = "puppet"
"""Engine used when neither ``--engine`` nor ``--model-dir`` is given."""
MODEL_ENGINE = "flashtalk"
"""Engine used when ``--model-dir`` is given without ``--engine``."""
STEP_CHOICES = (4, 2)
"""Sampling steps the FlashTalk schedules are distilled for."""
PARTIAL_SUFFIX = ".partial"
"""Suffix of the file written while generating; renamed to ``--out`` once complete."""
MIN_AUDIO_SAMPLES = SAMPLES_PER_FRAME
"""Shortest audio that makes a video: one 40 ms frame's worth of 16 kHz samples."""


class UsageError(Exception):
    """Bad input the user can fix; the message says how. Exits with ``EXIT_USAGE``."""


# -- arguments ---------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``generate`` and its options to the CLI's subcommands."""
    parser = subparsers.add_parser(
        NAME,
        help=SUMMARIES[NAME],
        description=(
            "Render a talking-head video offline: the audio is fed to the engine chunk by "
            "chunk (1.12 s each) exactly as the server streams it, and the frames are written "
            "as H.264 at 25 fps with the input audio as AAC."
        ),
    )
    parser.add_argument("--image", required=True, type=Path, help="avatar picture (PNG/JPEG)")
    parser.add_argument(
        "--audio", required=True, type=Path, help="speech audio, any format FFmpeg decodes"
    )
    parser.add_argument("--out", required=True, type=Path, help="MP4 file to write")
    parser.add_argument(
        "--engine",
        default=None,
        help=f"engine name (default: {MODEL_ENGINE} with --model-dir, else {DEFAULT_ENGINE})",
    )
    parser.add_argument(
        "--steps", type=int, default=None,
        help=f"sampling steps ({MODEL_ENGINE}: {' or '.join(map(str, STEP_CHOICES))}; "
        f"{generate_omni.ENGINE}: any, official 50)",
    )  # fmt: skip
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"session seed: diffusion noise, idle motion (default: the official {DEFAULT_SEED}; "
        f"{generate_omni.ENGINE}: {OMNI_OFFICIAL_SEED})",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None,
        help="checkpoint folder (omniavatar: the one holding Wan2.1-T2V-*/, OmniAvatar-*/ and "
        "wav2vec2-base-960h/)",
    )  # fmt: skip
    parser.add_argument("--wav2vec-dir", type=Path, default=None, help="wav2vec2 checkpoint dir")
    parser.add_argument("--height", type=int, default=None, help="frame height in pixels")
    parser.add_argument("--width", type=int, default=None, help="frame width in pixels")
    parser.add_argument("--prompt", default=None, help="text prompt for engines that take one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    generate_omni.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``headcast generate``; returns the process exit status."""
    try:
        inputs = _check_inputs(args)
        if args.engine == generate_omni.ENGINE:
            generate_omni.render_mp4(args, inputs.avatar.image, inputs.audio, inputs.out)
            return EXIT_OK
        _check_stream_engine_flags(args)
        engine = _create_engine(args)
        seed = DEFAULT_SEED if args.seed is None else args.seed
        _generate(engine, inputs, seed=seed, quiet=args.quiet)
    except (UsageError, generate_omni.OmniUsageError) as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    return EXIT_OK


# -- checks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    avatar: Avatar
    audio: AudioClip
    out: Path


def _check_inputs(args: argparse.Namespace) -> _Inputs:
    """Read the image and the audio and check the output path; UsageError on any problem."""
    out: Path = args.out
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory. Pass a file path such as {out / 'out.mp4'}.")
    if not out.parent.is_dir():
        raise UsageError(
            f"output directory does not exist: {out.parent}. "
            "Create it first or choose another --out."
        )
    for flag, size in (("--height", args.height), ("--width", args.width)):
        if size is not None and (size <= 0 or size % 2):
            raise UsageError(f"{flag} must be a positive even number of pixels, got {size}.")
    for flag, folder in (("--model-dir", args.model_dir), ("--wav2vec-dir", args.wav2vec_dir)):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"{flag} {folder} is not a directory. Pass the checkpoint folder.")
    try:
        image = np.asarray(load_image(args.image), dtype=np.uint8)  # [H, W, 3]
        audio = read_audio_file(args.audio)
    except (ImageLoadError, AudioFileError) as exc:
        raise UsageError(str(exc)) from exc
    if audio.samples.size < MIN_AUDIO_SAMPLES:
        length_ms = audio.duration_s * MS_PER_S
        frame_ms = SAMPLES_PER_FRAME * MS_PER_S // SAMPLE_RATE_HZ
        raise UsageError(
            f"audio {args.audio} is too short: {length_ms:.0f} ms, less than one video frame "
            f"({frame_ms} ms). Pass a longer recording."
        )
    avatar = Avatar(name=str(args.image.resolve()), image=image, prompt=args.prompt)
    return _Inputs(avatar=avatar, audio=audio, out=out)


def _check_stream_engine_flags(args: argparse.Namespace) -> None:
    """The streaming engines take 4 or 2 steps and none of the OmniAvatar flags."""
    if args.steps is not None and args.steps not in STEP_CHOICES:
        raise UsageError(
            f"--steps {args.steps}: the streaming engines are distilled for "
            f"{' or '.join(map(str, STEP_CHOICES))} steps. Pass one of those."
        )
    given = [
        flag for flag, dest in generate_omni.ONLY_FLAGS.items()
        if getattr(args, dest) != generate_omni.flag_default(dest)
    ]  # fmt: skip
    if given:
        raise UsageError(
            f"{', '.join(given)} apply to --engine {generate_omni.ENGINE} only. Leave them out "
            f"or pass --engine {generate_omni.ENGINE}."
        )


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options the user gave; the engine's defaults stand for the rest."""
    given = {
        "height": args.height,
        "width": args.width,
        "steps": args.steps,
        "model_dir": args.model_dir,
        "wav2vec_dir": args.wav2vec_dir,
    }
    return {name: value for name, value in given.items() if value is not None}


def _create_engine(args: argparse.Namespace) -> Engine:
    """Create the engine from the registry; UsageError for an unknown name or option."""
    name = args.engine or (MODEL_ENGINE if args.model_dir is not None else DEFAULT_ENGINE)
    options = _engine_options(args)
    registry = default_registry()
    try:
        return registry.create(name, registry.options_type(name)(**options))
    except UnknownEngine as exc:
        raise UsageError(str(exc)) from exc
    except TypeError as exc:  # an option this engine's options type does not have
        flags = ", ".join("--" + option.replace("_", "-") for option in options)
        raise UsageError(
            f"engine {name!r} does not accept the options given ({flags}): {exc}. "
            "Leave out the options it does not use."
        ) from exc
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot create engine {name!r}: {exc}") from exc


# -- the offline run ---------------------------------------------------------------------------


def _generate(engine: Engine, inputs: _Inputs, *, seed: int, quiet: bool) -> None:
    """Load the engine, run every chunk in order and write the MP4 (atomically)."""
    logger.info("engine %s", engine.description)
    started = time.perf_counter()
    try:
        engine.load()
    except (EngineError, ValueError, OSError) as exc:
        raise UsageError(f"engine {engine.name!r} failed to load: {exc}") from exc
    load_seconds = time.perf_counter() - started

    audio = inputs.audio
    total_frames = math.ceil(audio.samples.size / SAMPLES_PER_FRAME)
    total_chunks = math.ceil(total_frames / CHUNK_FRAMES)
    partial = inputs.out.with_name(inputs.out.name + PARTIAL_SUFFIX)
    started = time.perf_counter()
    state = engine.open_session(inputs.avatar, seed)
    avatar_seconds = time.perf_counter() - started
    started = time.perf_counter()
    compute_seconds = 0.0
    try:
        with (
            Mp4Writer(
                partial,
                height=engine.height,
                width=engine.width,
                audio_rate_hz=audio.original_rate_hz,
                audio_channels=audio.original.shape[0],
            ) as writer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="headcast-mp4") as encoder,
            tqdm(
                total=total_chunks,
                unit="chunk",
                desc=NAME,
                file=sys.stderr,
                disable=quiet or not sys.stderr.isatty(),
            ) as progress,
        ):
            writing: Future[None] | None = None
            for index in range(total_chunks):
                chunk = engine.step(state, _chunk_job(audio.samples, index))
                compute_seconds += chunk.compute_seconds
                if writing is not None:
                    writing.result()  # one chunk encodes while the engine makes the next
                writing = encoder.submit(_write_chunk, writer, chunk, audio, total_frames)
                progress.update()
                progress.set_postfix(rtf=f"{chunk.rtf:.2f}")
            if writing is not None:
                writing.result()
        partial.replace(inputs.out)
    finally:
        engine.close_session(state)
        partial.unlink(missing_ok=True)
    wall_seconds = time.perf_counter() - started
    logger.info(
        "wrote %s: %d chunks, %d frames, %.2f s of media in %.2f s wall "
        "(RTF %.2f; engine compute %.2f s, RTF %.2f; before that: load %.2f s, avatar %.2f s)",
        inputs.out,
        total_chunks,
        writer.frames_written,
        audio.duration_s,
        wall_seconds,
        wall_seconds / audio.duration_s,
        compute_seconds,
        compute_seconds / audio.duration_s,
        load_seconds,
        avatar_seconds,
    )


def _chunk_job(samples: np.ndarray, index: int) -> ChunkJob:
    """Chunk ``index`` of the 16 kHz audio; the last one padded with silence to 17,920."""
    window = samples[index * CHUNK_SAMPLES : (index + 1) * CHUNK_SAMPLES]
    audio = np.zeros(CHUNK_SAMPLES, dtype=np.float32)  # [17920]
    audio[: window.size] = window
    return ChunkJob(index=index, audio=audio)


def _write_chunk(writer: Mp4Writer, chunk: Chunk, audio: AudioClip, total_frames: int) -> None:
    """Write the chunk's frames (the padding's trimmed) and the same stretch of original audio."""
    first_frame = chunk.index * CHUNK_FRAMES
    writer.write_video(chunk.frames[: total_frames - first_frame])  # [<=28, H, W, 3]
    rate = audio.original_rate_hz
    start = chunk.index * CHUNK_SAMPLES * rate // SAMPLE_RATE_HZ
    end = (chunk.index + 1) * CHUNK_SAMPLES * rate // SAMPLE_RATE_HZ
    last = first_frame + CHUNK_FRAMES >= total_frames
    writer.write_audio(audio.original[:, start : None if last else end])  # [C, k]

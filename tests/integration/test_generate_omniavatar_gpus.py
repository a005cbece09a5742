"""``headcast generate --engine omniavatar --gpus N``: sequence-parallel ranks, and bad values.

The good case renders the tiny size with the fast preset (two batched guidance passes,
3 steps of which TeaCache skips the middle one: both the sharded block stack and the skip
path run on the ranks) once in this process and once on 2 gloo CPU ranks through the real
CLI (``--gpus 2 --device cpu``). Both runs record the uint8 frames handed to the MP4 writer
(here by a spy on ``Mp4Writer.write_video``; in the ranks by ``recording_render_rank``, put
in place of the rank function, which installs the same spy and then runs the real one):
the group's frames must equal the single process's within one uint8 level (the official
truncation turns a float difference at a level boundary into one level), every rank's DiT
must have run its share of the tokens (the sharded block stack, counted), rank 1 must write
nothing, and the group leaves exactly one MP4 with the planned frame count.

Bad ``--gpus`` values exit 2 with one readable line, with the CUDA device count faked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from headcast.pipeline.media import SAMPLE_RATE_HZ, VIDEO_FPS
from headcast.pipeline.omniavatar.dit import OmniAvatarDiT
from headcast.pipeline.parallel import ParallelGroup
from headcast.server.cli import main
from headcast.server.commands import generate_omni
from headcast.streaming.audio_file import AudioClip, read_audio_file
from headcast.streaming.mp4 import Mp4Writer
from tests.integration.test_generate import Inputs, write_inputs

SPEECH_SECONDS = 0.8
SILENCE_S = 0.3
"""The recipe's leading silence (the video covers it too)."""
RANKS = 2
FLAGS = ["--engine", "omniavatar", "--size", "tiny", "--preset", "fast", "--steps", "3"]
MAX_DIFFERING_VALUES = 1e-3
"""Share of frame values allowed one level apart (float32 on both sides: rounding only)."""
FRAMES_SUFFIX = ".frames.npy"
"""Where ``recording_render_rank`` leaves rank 0's frames (next to the MP4)."""


def _recording(frames: list[np.ndarray]) -> Callable[[Mp4Writer, np.ndarray], None]:
    """A ``Mp4Writer.write_video`` that also keeps every call's frames in ``frames``."""
    write_video = Mp4Writer.write_video

    def recording(self: Mp4Writer, video: np.ndarray) -> None:
        frames.append(video.copy())
        write_video(self, video)

    return recording


def recording_render_rank(
    parallel: ParallelGroup, job: Any, image: np.ndarray, audio: AudioClip, out: Path
) -> str | None:
    """The real rank function with the frames it writes recorded (runs in a rank process)."""
    frames: list[np.ndarray] = []
    Mp4Writer.write_video = _recording(frames)  # type: ignore[method-assign]  # this process
    sharded = OmniAvatarDiT._run_blocks_sharded
    calls: list[int] = []

    def counted(self: OmniAvatarDiT, *args: Any) -> torch.Tensor:
        calls.append(1)
        return sharded(self, *args)

    OmniAvatarDiT._run_blocks_sharded = counted  # type: ignore[method-assign]
    result = generate_omni._render_rank(parallel, job, image, audio, out)
    assert calls, f"rank {parallel.rank}'s DiT never ran its share of the tokens"
    if not parallel.is_primary:
        assert not frames, f"rank {parallel.rank} wrote {len(frames)} frame blocks"
    elif result is None:
        np.save(out.with_name(out.name + FRAMES_SUFFIX), np.concatenate(frames))
    return result


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return write_inputs(tmp_path_factory.mktemp("omniavatar_gpus"), SPEECH_SECONDS, seed=3)


def _argv(inputs: Inputs, out: Path, *flags: str) -> list[str]:
    return [
        "generate", "--quiet", "--image", str(inputs.image), "--audio", str(inputs.speech),
        "--out", str(out), *FLAGS, *flags,
    ]  # fmt: skip


def test_two_gloo_ranks_write_the_single_process_frames(
    inputs: Inputs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alone: list[np.ndarray] = []
    with monkeypatch.context() as patch:
        patch.setattr(Mp4Writer, "write_video", _recording(alone))
        assert main(_argv(inputs, tmp_path / "alone.mp4")) == 0
    expected = np.concatenate(alone)  # [n, H, W, 3]
    out = tmp_path / "group.mp4"
    monkeypatch.setattr(generate_omni, "_render_rank", recording_render_rank)
    with caplog.at_level(logging.INFO):
        assert main(_argv(inputs, out, "--gpus", str(RANKS), "--device", "cpu")) == 0
    assert f"{RANKS} sequence-parallel ranks on cpu, cpu" in caplog.text
    frames = np.load(out.with_name(out.name + FRAMES_SUFFIX))
    samples = read_audio_file(inputs.speech).samples.size
    planned = math.ceil((samples / SAMPLE_RATE_HZ + SILENCE_S) * VIDEO_FPS) + 1
    assert frames.shape == expected.shape and frames.shape[0] == planned
    assert frames.dtype == np.uint8 and frames.std() > 0  # noise pictures, not a blank
    differing = np.abs(frames.astype(np.int16) - expected.astype(np.int16))
    assert differing.max() <= 1 and (differing > 0).mean() <= MAX_DIFFERING_VALUES
    assert sorted(p.name for p in tmp_path.glob("*.mp4*")) == [
        "alone.mp4", "group.mp4", "group.mp4" + FRAMES_SUFFIX,
    ]  # fmt: skip
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == planned


BAD_GPUS: dict[str, tuple[int, list[str], str]] = {
    "none": (2, ["--gpus", "0"], "--gpus 0: pass 1"),
    "more than present": (
        2,
        ["--gpus", "3"],
        "this machine has 2 CUDA GPU(s) visible. Pass --gpus 2 or fewer",
    ),
    "no CUDA": (0, ["--gpus", "2"], "add --device cpu to run 2 CPU processes over gloo"),
    "one device named": (2, ["--gpus", "2", "--device", "cuda:1"], "the ranks take cuda:0 .."),
}
"""case -> (CUDA devices faked, flags, what the error says)."""


@pytest.mark.parametrize("case", list(BAD_GPUS))
def test_bad_gpus_exit_2_with_one_readable_line(
    case: str,
    inputs: Inputs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    devices, flags, expected = BAD_GPUS[case]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    with caplog.at_level(logging.INFO):
        assert main(_argv(inputs, tmp_path / "out.mp4", *flags)) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and expected in errors[0].getMessage(), caplog.text
    assert not list(tmp_path.iterdir())

"""``headcast generate --engine omniavatar --size tiny`` end to end, and its bad flags.

The good case runs the real CLI in a subprocess on 0.8 s of stereo speech at 44.1 kHz (tiny
random weights, 2 steps: two 25-frame segments) and checks the MP4 with PyAV: one H.264
stream at the bucket's size and 25 fps with ``ceil(25 (speech + 0.3 s)) + 1`` frames, the
original audio as AAC delayed by the 0.3 s silence plus one frame (frame 0 is the reference
picture, as the official script muxes it), and video and audio ending within one frame.
Bad flags go through ``server.cli.main`` in-process and must exit 2 with one readable line.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from headcast.pipeline.media import SAMPLE_RATE_HZ, VIDEO_FPS
from headcast.pipeline.omniavatar.recipe import TINY_BUCKETS
from headcast.server.cli import main
from headcast.streaming.audio_file import read_audio_file
from tests.integration.test_generate import (
    CLI_TIMEOUT_S,
    FRAME_SECONDS,
    SPEECH_RATE_HZ,
    Inputs,
    _speech_like,
    _write_wav,
    write_inputs,
)

SPEECH_SECONDS = 0.8
SILENCE_S = 0.3
"""The official leading silence."""
DELAY_S = SILENCE_S + 1 / VIDEO_FPS
"""Where the speech starts in the muxed audio."""
SILENT_BELOW = 1e-3
"""Peak level of decoded AAC silence (the codec's noise floor is far lower)."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """The drawn default avatar and 3 s of speech (the bad-flag cases never render)."""
    return write_inputs(tmp_path_factory.mktemp("omniavatar_inputs"), 3.0)


@pytest.fixture(scope="module")
def rendered(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("omniavatar")
    speech = folder / "speech.wav"
    voice = _speech_like(SPEECH_RATE_HZ, SPEECH_SECONDS, seed=2)
    voice[:, : round(0.1 * SPEECH_RATE_HZ)] = 0.0  # quiet start, then the voice
    voice[:, round(0.1 * SPEECH_RATE_HZ) : round(0.2 * SPEECH_RATE_HZ)] = 0.3
    _write_wav(speech, voice, SPEECH_RATE_HZ)
    out = folder / "omni.mp4"
    command = [
        sys.executable,
        "-m",
        "headcast.server.cli",
        "generate",
        "--engine",
        "omniavatar",
        "--size",
        "tiny",
        "--steps",
        "2",
        "--image",
        str(inputs.image),
        "--audio",
        str(speech),
        "--out",
        str(out),
    ]
    result = subprocess.run(
        command,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=2 * CLI_TIMEOUT_S,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode == 0, result.stderr
    return out, speech, result.stderr


def test_the_mp4_has_the_planned_frames_and_the_delayed_audio(
    rendered: tuple[Path, Path, str],
) -> None:
    out, speech, stderr = rendered
    samples = read_audio_file(speech).samples.size  # what the engine got, at 16 kHz
    expected_frames = (
        math.ceil((samples + SILENCE_S * SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ * VIDEO_FPS) + 1
    )
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.average_rate == VIDEO_FPS
        assert (video.height, video.width) == TINY_BUCKETS[0]
        assert (
            audio.codec_context.name == "aac" and audio.codec_context.sample_rate == SPEECH_RATE_HZ
        )
        assert audio.codec_context.channels == 2
        frames = sum(1 for _ in container.decode(video=0))
        video_s = float(video.duration * video.time_base)
        audio_s = float(audio.duration * audio.time_base)
    with av.open(str(out)) as container:
        sound = np.concatenate(
            [f.to_ndarray() for f in container.decode(audio=0)], axis=1
        )  # [2, n]
    assert frames == expected_frames
    assert audio_s == pytest.approx(SPEECH_SECONDS + DELAY_S, abs=2e-3)
    assert abs(video_s - audio_s) < FRAME_SECONDS
    level = np.abs(sound).max(axis=0)
    onset = np.argmax(level > 0.1) / SPEECH_RATE_HZ  # the step at 0.1 s of the speech
    assert onset == pytest.approx(DELAY_S + 0.1, abs=0.01)
    assert level[: round(DELAY_S * SPEECH_RATE_HZ * 0.9)].max() < SILENT_BELOW
    assert "2 segments" in stderr and "noise pictures" in stderr
    assert "per second of video" in stderr


BAD_FLAGS: dict[str, tuple[list[str], str]] = {
    "frame size": (
        ["--engine", "omniavatar", "--size", "tiny", "--height", "64"],
        "does not apply to OmniAvatar",
    ),
    "no weights": (["--engine", "omniavatar", "--size", "14b"], "needs --model-dir"),
    "bad overlap": (
        ["--engine", "omniavatar", "--size", "tiny", "--overlap", "12"],
        "overlap=12 must be 1 + a multiple of 4",
    ),
    "omni flag elsewhere": (
        ["--engine", "puppet", "--guidance", "3"],
        "--guidance apply to --engine omniavatar only",
    ),
    "gpus elsewhere": (
        ["--engine", "puppet", "--gpus", "2"],
        "--gpus apply to --engine omniavatar only",
    ),
    "streaming steps": (["--engine", "tiny", "--steps", "7"], "--steps 7: the streaming engines"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags_exit_2_with_one_readable_line(
    case: str, inputs: Inputs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flags, expected = BAD_FLAGS[case]
    argv = [
        "generate",
        "--quiet",
        "--image",
        str(inputs.image),
        "--audio",
        str(inputs.speech),
        "--out",
        str(tmp_path / "out.mp4"),
        *flags,
    ]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and expected in errors[0].getMessage(), caplog.text
    assert not (tmp_path / "out.mp4").exists()

"""``headcast generate`` end to end: the real CLI turns a picture and speech into an MP4.

The good case runs ``python -m headcast.server.cli generate --engine puppet`` in a subprocess once
(3 s of synthetic speech at 44.1 kHz stereo, the drawn default avatar) and checks the file
with PyAV: the streams, the frame count, the durations, and that the puppet's mouth in the
decoded video moves with the decoded audio at zero lag (sound and picture line up across
chunk boundaries). The bad inputs go through ``server.cli.main`` in-process (the same code
path without paying an interpreter start each) and must exit 2 with one readable line.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest

from headcast.pipeline.avatar_art import draw_default_avatar
from headcast.pipeline.media import CHUNK_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, VIDEO_FPS
from headcast.pipeline.puppet import FULL_OPEN_DBFS, SILENT_DBFS, mouth_open_metric
from headcast.server.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 120

SPEECH_RATE_HZ = 44_100
"""The test's speech is at a rate the engines do not use, so it must be resampled."""
SPEECH_SECONDS = 3.01
"""Not a whole number of frames: the last frame is partly padding."""
PAUSE_START_S, PAUSE_END_S = 2.0, 2.5
"""A silent stretch across the second chunk boundary (2.24 s): the mouth must stay shut."""
F0_HZ = 130.0
HARMONICS = 12
INT16_FULL_SCALE = 32767

EXPECTED_FRAMES = math.ceil(SPEECH_SECONDS * VIDEO_FPS)  # 76
EXPECTED_CHUNKS = math.ceil(EXPECTED_FRAMES / CHUNK_FRAMES)  # 3
FRAME_SECONDS = 1 / VIDEO_FPS
MAX_LAG_FRAMES = 3
"""Lip-sync is checked by finding the best lag within +-3 frames; it must be 0."""
MIN_LIP_SYNC_CORRELATION = 0.8
MOUTH_CLOSED_BELOW = 0.1
MOUTH_OPEN_ABOVE = 0.3


def _speech_like(rate_hz: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced syllables (a harmonic buzz at ~130 Hz under 4-6 Hz envelopes) with a pause.

    Returns ``[2, n]`` float: the same voice on both channels, the right one quieter.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * rate_hz)
    t = np.arange(n) / rate_hz
    phase = 2 * np.pi * np.cumsum(F0_HZ * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))) / rate_hz
    voice = sum(np.sin(k * phase) / k for k in range(1, HARMONICS + 1))  # [n]
    envelope = np.zeros(n)
    start = 0.05
    while start < seconds - 0.1:
        length = rng.uniform(0.12, 0.26)
        if start < PAUSE_END_S and start + length > PAUSE_START_S:  # keep the pause silent
            start = PAUSE_END_S
            continue
        inside = (t >= start) & (t < start + length)
        envelope[inside] = rng.uniform(0.5, 1.0) * np.sin(np.pi * (t[inside] - start) / length)
        start += length + rng.uniform(0.04, 0.12)
    mono = 0.2 * envelope * voice
    return np.stack([mono, 0.7 * mono])


def _write_wav(path: Path, channels: np.ndarray, rate_hz: int) -> None:
    pcm = np.round(np.clip(channels, -1, 1).T * INT16_FULL_SCALE).astype("<i2")  # [n, C]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels.shape[0])
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm.tobytes())


@dataclass(frozen=True)
class Inputs:
    image: Path
    speech: Path


@dataclass(frozen=True)
class Generated:
    out: Path
    result: subprocess.CompletedProcess[str]
    wall_s: float


def write_inputs(folder: Path, seconds: float, seed: int = 0) -> Inputs:
    """The drawn default avatar and ``seconds`` of speech-like audio, written in ``folder``."""
    image = folder / "avatar.png"
    PIL.Image.fromarray(draw_default_avatar()).save(image)
    speech = folder / "speech.wav"
    _write_wav(speech, _speech_like(SPEECH_RATE_HZ, seconds, seed=seed), SPEECH_RATE_HZ)
    return Inputs(image=image, speech=speech)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return write_inputs(tmp_path_factory.mktemp("generate_inputs"), SPEECH_SECONDS)


@pytest.fixture(scope="module")
def generated(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Generated:
    out = tmp_path_factory.mktemp("generate_out") / "talking.mp4"
    command = [
        sys.executable, "-m", "headcast.server.cli", "generate",
        "--engine", "puppet",
        "--image", str(inputs.image),
        "--audio", str(inputs.speech),
        "--out", str(out),
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    wall_s = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    return Generated(out=out, result=result, wall_s=wall_s)


def test_mp4_has_one_h264_video_and_one_aac_audio_stream(generated: Generated) -> None:
    with av.open(str(generated.out)) as container:
        assert len(container.streams.video) == 1
        assert len(container.streams.audio) == 1
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.average_rate == VIDEO_FPS
        assert (video.width, video.height) == (DEFAULT_WIDTH, DEFAULT_HEIGHT)
        assert video.codec_context.pix_fmt == "yuv420p"
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == SPEECH_RATE_HZ  # the original rate, kept
        assert audio.codec_context.channels == 2  # the original stereo, kept


def test_video_covers_the_audio_to_within_one_frame(generated: Generated) -> None:
    with av.open(str(generated.out)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video=0))
        assert video.duration is not None and audio.duration is not None
        video_s = float(video.duration * video.time_base)
        audio_s = float(audio.duration * audio.time_base)
    assert frames == EXPECTED_FRAMES  # 3 chunks = 84 frames, the padding's 8 trimmed
    assert audio_s == pytest.approx(SPEECH_SECONDS, abs=1e-3)
    assert 0.0 <= video_s - audio_s < FRAME_SECONDS


def test_mouth_moves_with_the_muxed_audio_at_zero_lag(generated: Generated) -> None:
    with av.open(str(generated.out)) as container:
        mouth = np.array(
            [
                mouth_open_metric(f.to_ndarray(format="rgb24"), DEFAULT_HEIGHT, DEFAULT_WIDTH)
                for f in container.decode(video=0)
            ]
        )  # [frames]
    with av.open(str(generated.out)) as container:
        sound = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    per_frame = SPEECH_RATE_HZ // VIDEO_FPS
    mono = sound.mean(axis=0)[: mouth.size * per_frame]
    mono = np.pad(mono, (0, mouth.size * per_frame - mono.size))
    rms = np.sqrt(np.mean(mono.reshape(mouth.size, per_frame) ** 2, axis=1))  # [frames]
    level = np.clip(20 * np.log10(rms + 1e-10), SILENT_DBFS, FULL_OPEN_DBFS)

    def correlation(lag: int) -> float:
        a, b = (mouth[lag:], level[: level.size - lag]) if lag >= 0 else (mouth[:lag], level[-lag:])
        return float(np.corrcoef(a, b)[0, 1])

    by_lag = {lag: correlation(lag) for lag in range(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1)}
    assert max(by_lag, key=by_lag.__getitem__) == 0, by_lag
    assert by_lag[0] > MIN_LIP_SYNC_CORRELATION, by_lag
    pause = slice(round(PAUSE_START_S * VIDEO_FPS) + 2, round(PAUSE_END_S * VIDEO_FPS) - 1)
    assert mouth[pause].max() < MOUTH_CLOSED_BELOW  # closed through the pause
    assert mouth.max() > MOUTH_OPEN_ABOVE  # and open while talking


def test_logs_the_engine_honestly_and_a_summary_without_a_progress_bar(
    generated: Generated,
) -> None:
    stderr = generated.result.stderr
    assert "not the FlashTalk model" in stderr
    assert f"{EXPECTED_CHUNKS} chunks, {EXPECTED_FRAMES} frames" in stderr
    assert "RTF" in stderr
    assert "\r" not in stderr  # stderr is a pipe, not a TTY: no progress bar
    assert not generated.out.with_name(generated.out.name + ".partial").exists()
    logging.getLogger(__name__).info(
        "generating %.2f s with puppet took %.2f s wall (interpreter start included)",
        SPEECH_SECONDS,
        generated.wall_s,
    )


# -- bad input ---------------------------------------------------------------------------------

PATH_FLAGS = ("--image", "--audio", "--out")
"""Flags whose bad values below are file names inside the test's folder."""

BAD_CASES: dict[str, tuple[str, str, str]] = {
    "missing image": ("--image", "none.png", "avatar image not found"),
    "unreadable image": ("--image", "face.png", "cannot read avatar image"),
    "missing audio": ("--audio", "none.wav", "audio file not found"),
    "unreadable audio": ("--audio", "voice.wav", "cannot decode audio file"),
    "empty audio": ("--audio", "empty.wav", "contains no samples"),
    "too short audio": ("--audio", "blip.wav", "too short: 20 ms, less than one video frame"),
    "missing output directory": ("--out", "no/such/dir/out.mp4", "output directory does not exist"),
    "unknown engine": ("--engine", "marionette", "choose one of: "),
}
"""Case -> (flag, its bad value, text the one error line must contain)."""


def _write_bad_files(folder: Path) -> None:
    """The broken inputs that ``BAD_CASES`` name."""
    (folder / "face.png").write_text("not pixels")
    (folder / "voice.wav").write_text("not sound " * 50)
    _write_wav(folder / "empty.wav", np.zeros((1, 0)), SPEECH_RATE_HZ)
    blip = np.full((1, round(0.02 * SPEECH_RATE_HZ)), 0.1)  # 20 ms: half a video frame
    _write_wav(folder / "blip.wav", blip, SPEECH_RATE_HZ)


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_exits_2_with_one_readable_line(
    case: str, inputs: Inputs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_bad_files(tmp_path)
    flag, value, expected = BAD_CASES[case]
    arguments = {
        "--image": str(inputs.image),
        "--audio": str(inputs.speech),
        "--out": str(tmp_path / "out.mp4"),
        "--engine": "puppet",
    }
    arguments[flag] = str(tmp_path / value) if flag in PATH_FLAGS else value
    argv = ["generate", "--quiet", *(item for pair in arguments.items() for item in pair)]

    with caplog.at_level(logging.INFO):
        status = main(argv)

    assert status == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    message = errors[0].getMessage()
    assert expected in message
    assert "\n" not in message and errors[0].exc_info is None  # one line, no traceback
    assert not (tmp_path / "out.mp4").exists()
    if case == "unknown engine":
        assert "puppet" in message  # the choices are listed


TINY_SECONDS = 1.5
"""Two chunks of the tiny engine: the diffusion code path end to end, kept short for CI."""


def test_tiny_engine_writes_a_valid_mp4_matching_the_audio(inputs: Inputs, tmp_path: Path) -> None:
    speech = tmp_path / "short.wav"
    _write_wav(speech, _speech_like(SPEECH_RATE_HZ, TINY_SECONDS, seed=1), SPEECH_RATE_HZ)
    out = tmp_path / "tiny.mp4"
    command = [
        sys.executable, "-m", "headcast.server.cli", "generate", "--engine", "tiny", "--steps", "2",
        "--image", str(inputs.image), "--audio", str(speech), "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=4 * CLI_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "noise" in result.stderr  # the tiny engine says what its pictures are
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.average_rate == VIDEO_FPS
        assert audio.codec_context.name == "aac"
        frames = sum(1 for _ in container.decode(video=0))
        video_s = float(video.duration * video.time_base)
        audio_s = float(audio.duration * audio.time_base)
    assert frames == math.ceil(TINY_SECONDS * VIDEO_FPS)
    assert 0.0 <= video_s - audio_s < FRAME_SECONDS

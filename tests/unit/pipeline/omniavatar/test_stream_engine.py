"""The ``omniavatar`` streaming engine on the tiny size (random weights, CPU).

- chunk k of a stream equals the offline segment loop's segment k (its last 28 frames: the
  new frames of every later segment, and for segment 0 the frames after the reference and
  the 12-frame lead-in) for the same picture, audio, seed and settings, when the offline
  render is given the stream-mode audio features and the streaming recipe;
- stream-mode audio of a whole clip is the rows a stream computes chunk by chunk;
- a re-seed continues from the frames shown (the sequence-parallel engine is tested on
  real gloo ranks in ``tests/unit/pipeline/test_sequence_parallel.py``);
- bad options are named in one clear error.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from headcast.pipeline.audio import AudioRing
from headcast.pipeline.engine import default_registry
from headcast.pipeline.engine_api import Engine
from headcast.pipeline.engine_options import OmniAvatarOptions
from headcast.pipeline.media import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    RESEED_FRAMES,
    SAMPLE_RATE_HZ,
    Avatar,
    ChunkJob,
    Reseed,
)
from headcast.pipeline.omniavatar.recipe import DEFAULT_PROMPT, STREAM_SEGMENT_FRAMES
from headcast.pipeline.omniavatar.render import OmniAvatarRenderer, frames_to_uint8
from headcast.pipeline.omniavatar.segments import seeded_noise
from headcast.pipeline.omniavatar.stream_engine import ASSET_NAMES, OmniAvatarStreamEngine

CHUNKS = 2
SEED = 7
UINT8_TOL = 1
"""Frames are compared after the official truncation to uint8: one level of slack for a
float rounding difference at a truncation boundary."""


def _speech(chunks: int) -> np.ndarray:
    """Seeded speech-like audio: a voiced 150 Hz buzz with noise, float32 [chunks * 17920]."""
    rng = np.random.default_rng(3)
    t = np.arange(chunks * CHUNK_SAMPLES) / SAMPLE_RATE_HZ
    buzz = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (buzz + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _picture() -> np.ndarray:
    """A seeded 48 x 40 RGB picture (resized and cropped to the 16 x 16 bucket)."""
    return np.random.default_rng(5).integers(0, 256, (48, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def engine() -> OmniAvatarStreamEngine:
    options = OmniAvatarOptions(
        size="tiny", height=16, width=16, steps=2, guidance=3.0, device="cpu"
    )
    made = default_registry().create("omniavatar", options)
    assert isinstance(made, OmniAvatarStreamEngine) and isinstance(made, Engine)
    made.load()
    assert made.warmup_rtf is not None and made.warmup_rtf > 0
    return made


def test_stream_chunks_equal_the_offline_segment_loop(engine: OmniAvatarStreamEngine) -> None:
    speech, image = _speech(CHUNKS), _picture()
    state = engine.open_session(Avatar("face", image), seed=SEED)
    chunks = [
        engine.step(state, ChunkJob(k, speech[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES]))
        for k in range(CHUNKS)
    ]
    models = engine.models
    assert models is not None and engine.audio is not None
    renderer = OmniAvatarRenderer(
        models.dit,
        models.vae,
        engine.audio,  # the stream-mode features
        models.prompts,
        engine.recipe,
        batch_passes=True,
        attention=engine.speed.attention,
    )
    noise = seeded_noise(SEED, torch.device("cpu"), models.dit.dtype)
    segments = list(renderer.render(image, speech, DEFAULT_PROMPT, noise=noise))
    assert len(segments) == CHUNKS
    assert segments[0].frames.shape[0] == STREAM_SEGMENT_FRAMES  # reference + 12 + 28
    for chunk, segment in zip(chunks, segments, strict=True):
        offline = frames_to_uint8(segment.frames[-CHUNK_FRAMES:])  # [28, 16, 16, 3]
        assert chunk.frames.shape == offline.shape == (CHUNK_FRAMES, 16, 16, 3)
        difference = np.abs(chunk.frames.astype(np.int16) - offline.astype(np.int16))
        assert difference.max() <= UINT8_TOL, f"chunk {chunk.index}: {difference.max()}"
        assert np.array_equal(chunk.audio, speech[chunk.index * CHUNK_SAMPLES :][:CHUNK_SAMPLES])
    assert not np.array_equal(chunks[0].frames, chunks[1].frames)  # the stream moves on


def test_stream_mode_audio_of_a_clip_is_what_the_ring_gives(
    engine: OmniAvatarStreamEngine,
) -> None:
    audio = engine.audio
    assert audio is not None
    speech = _speech(2)
    lead = np.zeros(12 * 640, dtype=np.float32)  # the stream's 12 silent lead-in frames
    clip = audio.encode(np.concatenate([lead, speech]), 40 + 28)  # [68, C]
    ring = AudioRing(audio.window_samples)
    ring.push(speech[:CHUNK_SAMPLES])
    first = audio.rows(ring.window(), 40)
    ring.push(speech[CHUNK_SAMPLES:])
    second = audio.rows(ring.window(), 28)
    torch.testing.assert_close(clip, torch.cat([first, second]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not whole segments"):
        audio.encode(speech, 50)


def test_a_reseed_continues_from_the_frames_shown(
    engine: OmniAvatarStreamEngine, caplog: pytest.LogCaptureFixture
) -> None:
    state = engine.open_session(Avatar("face", _picture()), seed=SEED)
    engine.step(state, ChunkJob(0, _speech(1)))
    grey = np.full((RESEED_FRAMES, 16, 16, 3), 128, dtype=np.uint8)
    engine.reseed(state, Reseed(grey, silent_samples=3 * CHUNK_SAMPLES))
    assert state.carry.window is not None and state.carry.window.shape[0] == 41
    assert state.carry.tail is not None and state.carry.tail.shape == (1, 3, 13, 16, 16)
    assert float(state.carry.tail.abs().max()) < 0.01  # grey 128 is ~0 in [-1, 1]
    chunk = engine.step(state, ChunkJob(4, _speech(1)))
    assert chunk.frames.shape == (CHUNK_FRAMES, 16, 16, 3)
    with caplog.at_level(logging.INFO):
        engine.close_session(state)
    assert "omniavatar session closed: 2 chunks, compute mean" in caplog.text


def test_prepared_assets_open_a_session_and_another_size_is_refused(
    engine: OmniAvatarStreamEngine,
) -> None:
    image = _picture()
    steps = list(engine.prepare_avatar(Avatar("face", image, prompt="a")))
    assets = steps[-1].assets
    assert assets is not None and set(assets) == set(ASSET_NAMES)
    assert assets["reference_latent"].shape == (1, 16, 1, 2, 2)  # the 16 x 16 bucket
    state = engine.open_session(Avatar("face", image, prompt="b", assets=assets), seed=SEED)
    assert state.conditioning.reference_latent.shape == (1, 16, 1, 2, 2)
    wrong = {**assets, "reference_latent": np.zeros((1, 16, 1, 4, 2), np.float32)}
    with pytest.raises(ValueError, match="prepared for another size; prepare the avatar again"):
        engine.open_session(Avatar("face", image, prompt="c", assets=wrong), seed=SEED)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size": "2b"}, "size='2b' must be one of tiny, 1.3b, 14b"),
        ({"steps": 0}, "steps=0 must be a whole number of at least 1"),
        ({"guidance": 0.5}, "guidance=0.5 must be 1 \\(one pass"),
        ({"gen_height": 720}, "gen_height and gen_width must be given together"),
        ({"gen_height": 100, "gen_width": 400}, "gen_height=100 must be a positive multiple"),
        ({"quantize": "int4"}, "quantize='int4' is not offered"),
        ({"size": "1.3b"}, "size=1.3b needs model_dir .* or random_weights: true"),
    ],
)
def test_bad_options_are_named(changes: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"size": "tiny"}
    with pytest.raises(ValueError, match=f"invalid omniavatar engine options: .*{message}"):
        OmniAvatarOptions(**{**base, **changes})  # type: ignore[arg-type]

"""Stream-mode audio: the 8 s ring, the chunk timing and wav2vec2 features against the golden."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headcast.pipeline import media
from headcast.pipeline.audio import (
    CHUNK_SAMPLES,
    TINY_WAV2VEC2_CONFIG,
    AudioConfig,
    AudioRing,
    Wav2VecStreamEncoder,
)
from headcast.pipeline.checkpoint import CheckpointError
from tests.reference import load_golden, rel_err

TOLERANCE = 1e-4
WINDOW_SAMPLES = 128_000


@pytest.fixture(scope="module")
def golden():
    return load_golden("wav2vec_tiny")


@pytest.fixture(scope="module")
def encoder(golden) -> Wav2VecStreamEncoder:
    return Wav2VecStreamEncoder.from_state(golden.config, golden.state)


@pytest.fixture(scope="module")
def window(golden) -> np.ndarray:
    return golden.inputs["audio_8s_16k"].numpy()


# ----- config ---------------------------------------------------------------------------


def test_config_derives_the_official_timing() -> None:
    config = AudioConfig()
    assert config.samples_per_frame == 640
    assert config.new_frames == 28
    assert config.chunk_samples == CHUNK_SAMPLES == 17_920 == media.CHUNK_SAMPLES
    assert config.window_samples == WINDOW_SAMPLES
    assert config.window_frames == 200
    assert config.chunk_first_frame == 167
    assert config.context_radius == 2


@pytest.mark.parametrize(
    "bad", [{"audio_window": 4}, {"motion_frames": 33}, {"fps": 24}, {"window_seconds": 1}]
)
def test_config_rejects_inconsistent_values(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        AudioConfig(**bad)


# ----- ring -----------------------------------------------------------------------------


def test_ring_starts_silent() -> None:
    ring = AudioRing()
    assert ring.window().shape == (WINDOW_SAMPLES,)
    assert ring.window().dtype == np.float32
    assert not ring.window().any()


def test_ring_keeps_exactly_the_last_8_s_across_odd_pushes() -> None:
    rng = np.random.default_rng(0)
    ring = AudioRing()
    history = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    for size in [1, 17_920, 12_345, 0, 127_999, 3, 99_991, 17_920, 250_001, 7]:
        samples = rng.uniform(-1, 1, size).astype(np.float64)
        ring.push(samples)
        history = np.concatenate([history, samples.astype(np.float32)])
        assert np.array_equal(ring.window(), history[-WINDOW_SAMPLES:]), f"after a push of {size}"


def test_ring_window_is_a_snapshot_and_copy_is_independent() -> None:
    ring = AudioRing()
    ring.push(np.ones(10, dtype=np.float32))
    snapshot = ring.window()
    twin = ring.copy()
    ring.push(np.full(5, 2.0, dtype=np.float32))
    assert snapshot[-10:].tolist() == [1.0] * 10
    assert twin.window()[-5:].tolist() == [1.0] * 5
    assert ring.window()[-5:].tolist() == [2.0] * 5
    ring.reset()
    assert not ring.window().any()
    assert twin.window()[-10:].tolist() == [1.0] * 10


def test_ring_rejects_pcm_integers_and_stereo() -> None:
    ring = AudioRing()
    with pytest.raises(TypeError, match="32768"):
        ring.push(np.zeros(4, dtype=np.int16))
    with pytest.raises(ValueError, match="shape"):
        ring.push(np.zeros((4, 2), dtype=np.float32))


# ----- encoder against the golden -------------------------------------------------------


def test_golden_state_loads_strictly(golden, encoder) -> None:
    assert set(encoder.model.state_dict()) == set(golden.state)
    assert encoder.num_layers == 2 and encoder.hidden_size == 32


def test_loudness_and_input_values_match_golden(golden, encoder, window) -> None:
    normed, values = encoder.preprocess(window)
    assert normed.dtype == np.float64 and values.dtype == np.float32
    assert rel_err(torch.from_numpy(normed), golden.outputs["loudness_normed"]) < TOLERANCE
    assert rel_err(torch.from_numpy(values), golden.outputs["input_values"]) < TOLERANCE


def test_per_frame_features_match_golden(golden, encoder, window) -> None:
    features = encoder.per_frame_features(window)
    assert features.dtype == torch.float32
    assert rel_err(features, golden.outputs["per_frame_features"]) < TOLERANCE


def test_chunk_window_matches_golden(golden, encoder, window) -> None:
    chunk = encoder(window)
    assert chunk.shape == (1, 33, 5, 2, 32)
    assert rel_err(chunk, golden.outputs["chunk_window"]) < TOLERANCE


def test_chunk_windows_pick_clamped_neighbours(encoder) -> None:
    frames = torch.arange(200, dtype=torch.float32)[:, None, None].expand(
        200, 2, 32
    )  # value = frame index
    picked = encoder.chunk_windows(frames)[0, :, :, 0, 0]  # [33, 5]
    assert picked[0].tolist() == [165, 166, 167, 168, 169]
    assert picked[-1].tolist() == [197, 198, 199, 199, 199]
    assert picked[:, 2].tolist() == list(range(167, 200))


def test_ring_window_from_float32_storage_stays_within_tolerance(golden, encoder, window) -> None:
    ring = AudioRing()
    for start in range(0, WINDOW_SAMPLES, CHUNK_SAMPLES):
        ring.push(window[start : start + CHUNK_SAMPLES])
    assert rel_err(encoder(ring.window()), golden.outputs["chunk_window"]) < TOLERANCE


def test_silent_window_gives_finite_features(encoder) -> None:
    chunk = encoder(AudioRing().window())
    assert torch.isfinite(chunk).all()


def test_wrong_window_length_is_rejected(encoder) -> None:
    with pytest.raises(ValueError, match="128000"):
        encoder(np.zeros(WINDOW_SAMPLES - 1, dtype=np.float32))


def test_missing_state_key_is_a_checkpoint_error(golden) -> None:
    state = dict(golden.state)
    state.pop("masked_spec_embed")
    with pytest.raises(CheckpointError, match="masked_spec_embed"):
        Wav2VecStreamEncoder.from_state(golden.config, state)


# ----- other constructors ---------------------------------------------------------------


def test_from_dir_round_trip(tmp_path, golden, encoder, window) -> None:
    encoder.model.save_pretrained(tmp_path)
    loaded = Wav2VecStreamEncoder.from_dir(tmp_path, device="cpu", dtype=torch.float32)
    assert rel_err(loaded(window), golden.outputs["chunk_window"]) < TOLERANCE


def test_from_dir_missing_directory_says_what_to_do(tmp_path) -> None:
    missing = tmp_path / "chinese-wav2vec2-base"
    with pytest.raises(CheckpointError, match="headcast doctor --wav2vec-dir") as info:
        Wav2VecStreamEncoder.from_dir(missing)
    assert str(missing) in str(info.value)


def test_from_dir_without_weights_names_the_files(tmp_path, encoder) -> None:
    encoder.model.config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Wav2VecStreamEncoder.from_dir(tmp_path)


def test_from_dir_reads_do_normalize(tmp_path, encoder, window) -> None:
    encoder.model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"do_normalize": false}')
    loaded = Wav2VecStreamEncoder.from_dir(tmp_path)
    assert loaded.normalize_input is False
    normed, values = loaded.preprocess(window)
    assert np.allclose(values, normed.astype(np.float32))


def test_tiny_is_seeded_and_shaped() -> None:
    first = Wav2VecStreamEncoder.tiny(seed=3)
    second = Wav2VecStreamEncoder.tiny(seed=3)
    other = Wav2VecStreamEncoder.tiny(seed=4)
    audio = np.sin(np.linspace(0, 2000, WINDOW_SAMPLES)).astype(np.float32) * 0.1
    out = first(audio)
    layers, channels = (
        TINY_WAV2VEC2_CONFIG["num_hidden_layers"],
        TINY_WAV2VEC2_CONFIG["hidden_size"],
    )
    assert out.shape == (1, 33, 5, layers, channels)
    assert torch.equal(out, second(audio))
    assert not torch.equal(out, other(audio))

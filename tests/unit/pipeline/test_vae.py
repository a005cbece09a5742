"""pipeline.vae against the official Wan 2.1 VAE goldens and the full-size manifest."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from headcast.pipeline.checkpoint import CheckpointError, materialize
from headcast.pipeline.vae import LATENT_MEAN, LATENT_STD, VAEConfig, WanVAE, load_vae
from tests.reference import (
    Golden,
    assert_state_matches_manifest,
    load_golden,
    load_manifest,
    rel_err,
)

GOLDEN_TOL = 1e-4
"""Relative error allowed against the official float32 outputs."""

BF16_TOL = 3e-2
"""Relative error allowed for a bfloat16 model against the float32 goldens."""

SAME_TOL = 1e-6
"""Relative error allowed between two runs of the same computation."""

THREAD_ROUNDS = 2
"""Concurrent rounds in the thread test (more rounds, more interleavings)."""


@pytest.fixture(scope="module")
def golden() -> Golden:
    return load_golden("vae_tiny")


@pytest.fixture(scope="module")
def config(golden: Golden) -> VAEConfig:
    return VAEConfig.from_dict(golden.config)


@pytest.fixture(scope="module")
def vae(golden: Golden, config: VAEConfig) -> WanVAE:
    """The golden's tiny VAE, built on the meta device and materialised strictly."""
    return materialize(lambda: WanVAE(config), golden.state).eval()


@pytest.fixture(scope="module")
def outputs(vae: WanVAE, golden: Golden) -> dict[str, torch.Tensor]:
    """The four golden calls, computed once (batch dim kept)."""
    video = golden.inputs["video"]  # [1, 3, 9, 32, 32]
    return {
        "latent": vae.encode(video),
        "latent_first_frame": vae.encode(video[:, :, :1]),
        "latent_last5": vae.encode(video[:, :, -5:]),
        "video": vae.decode(golden.inputs["latent"].unsqueeze(0)),
    }


# -- golden calls ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["latent", "latent_first_frame", "latent_last5"])
def test_encode_matches_golden(outputs: dict[str, torch.Tensor], golden: Golden, name: str) -> None:
    latents = outputs[name]  # [1, 16, T', 4, 4]
    assert latents.dtype == torch.float32
    assert rel_err(latents[0], golden.outputs[name]) < GOLDEN_TOL


def test_decode_matches_golden(outputs: dict[str, torch.Tensor], golden: Golden) -> None:
    video = outputs["video"]  # [1, 3, 9, 32, 32]
    assert video.dtype == torch.float32
    assert rel_err(video, golden.outputs["video"]) < GOLDEN_TOL
    assert video.min() >= -1.0 and video.max() <= 1.0


def test_decode_is_causal(vae: WanVAE, golden: Golden) -> None:
    """The first 2 latent frames decode to the first 5 frames of the 3-latent decode."""
    video = vae.decode(golden.inputs["latent"][:, :2].unsqueeze(0))  # [1, 3, 5, 32, 32]
    assert rel_err(video, golden.outputs["video"][:, :, :5]) < GOLDEN_TOL


def test_latent_constants_match_golden(golden: Golden) -> None:
    assert torch.equal(torch.tensor(LATENT_MEAN), golden.consts["latent_mean"])
    assert torch.equal(torch.tensor(LATENT_STD), golden.consts["latent_std"])


def test_bfloat16_model_tracks_golden(golden: Golden, config: VAEConfig) -> None:
    vae16 = materialize(lambda: WanVAE(config), golden.state, dtype=torch.bfloat16).eval()
    assert vae16.conv1.weight.dtype == torch.bfloat16
    latents = vae16.encode(golden.inputs["video"][:, :, -5:])
    assert latents.dtype == torch.float32
    assert rel_err(latents[0], golden.outputs["latent_last5"]) < BF16_TOL
    video = vae16.decode(golden.inputs["latent"][:, :2].unsqueeze(0))
    assert rel_err(video, golden.outputs["video"][:, :, :5]) < BF16_TOL


def test_dtype_cast_keeps_latent_statistics_exact(config: VAEConfig) -> None:
    with torch.device("meta"):
        model = WanVAE(config)
    for step in (lambda m: m.to_empty(device="cpu"), lambda m: m.to(torch.bfloat16)):
        model = step(model)
        assert model.latent_mean.dtype == model.latent_std.dtype == torch.float32
        assert torch.equal(model.latent_mean, torch.tensor(LATENT_MEAN))
        assert torch.equal(model.latent_std, torch.tensor(LATENT_STD))
    assert model.conv1.weight.dtype == torch.bfloat16


def test_channels_last_3d_matches_golden(golden: Golden, config: VAEConfig) -> None:
    vae_cl = materialize(lambda: WanVAE(config), golden.state).eval()
    for param in vae_cl.parameters():
        if param.dim() == 5:  # the 2-D conv weights stay 4-D
            param.data = param.data.to(memory_format=torch.channels_last_3d)
    video = golden.inputs["video"][:, :, -5:].contiguous(memory_format=torch.channels_last_3d)
    assert rel_err(vae_cl.encode(video)[0], golden.outputs["latent_last5"]) < GOLDEN_TOL


# -- checkpoint layout and loading ---------------------------------------------------------


def test_full_size_meta_model_matches_manifest() -> None:
    with torch.device("meta"):
        model = WanVAE(VAEConfig.wan21())
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert_state_matches_manifest(shapes, load_manifest("wan21_vae"))
    assert "latent_mean" not in shapes and "latent_std" not in shapes


def test_load_vae_from_saved_file(
    tmp_path: Path, outputs: dict[str, torch.Tensor], golden: Golden, config: VAEConfig
) -> None:
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(golden.state, path)
    loaded = load_vae(path, device="cpu", dtype=torch.float32, config=config)
    assert not loaded.training
    assert torch.equal(loaded.latent_std, torch.tensor(LATENT_STD))
    latents = loaded.encode(golden.inputs["video"][:, :, :1])
    assert rel_err(latents, outputs["latent_first_frame"]) < SAME_TOL


def test_load_vae_missing_file_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "Wan2.1_VAE.pth"
    with pytest.raises(CheckpointError, match="Wan2.1_VAE.pth") as info:
        load_vae(missing, device="cpu", dtype=torch.float32)
    assert "headcast doctor" in str(info.value)


def test_load_vae_wrong_size_is_a_checkpoint_error(tmp_path: Path, golden: Golden) -> None:
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(golden.state, path)  # a dim-8 state for the full-size (dim 96) model
    with pytest.raises(CheckpointError, match="does not fit"):
        load_vae(path, device="cpu", dtype=None)


# -- no shared per-call state -------------------------------------------------------------


def test_concurrent_calls_match_sequential(
    vae: WanVAE, golden: Golden, outputs: dict[str, torch.Tensor]
) -> None:
    videos = [golden.inputs["video"][:, :, -5:], golden.inputs["video"][:, :, :5]]
    expected = [outputs["latent_last5"], vae.encode(videos[1])]  # sequential calls
    barrier = threading.Barrier(len(videos))
    results: list[list[torch.Tensor]] = [[] for _ in videos]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for _ in range(THREAD_ROUNDS):
                barrier.wait()
                results[index].append(vae.encode(videos[index]))
        except BaseException as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(videos))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert rel_err(expected[0], expected[1]) > GOLDEN_TOL  # the two inputs really differ
    for index, runs in enumerate(results):
        assert len(runs) == THREAD_ROUNDS
        for latents in runs:
            assert rel_err(latents, expected[index]) < SAME_TOL


# -- shapes and config ---------------------------------------------------------------------


@pytest.mark.parametrize("frames", [2, 4, 6])
def test_encode_rejects_frame_counts_other_than_1_plus_4k(vae: WanVAE, frames: int) -> None:
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(torch.zeros(1, 3, frames, 32, 32))


def test_encode_rejects_sizes_not_multiple_of_8(vae: WanVAE) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.zeros(1, 3, 1, 36, 32))


def test_config_presets_and_from_dict(golden: Golden, config: VAEConfig) -> None:
    assert VAEConfig.wan21().dim == 96
    assert config == VAEConfig.tiny()
    assert (config.spatial_stride, config.temporal_stride) == (8, 4)
    with pytest.raises(ValueError, match="unknown VAEConfig keys"):
        VAEConfig.from_dict({**golden.config, "bogus": 1})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dim", 0),
        ("z_dim", 4),
        ("num_res_blocks", 0),
        ("dim_mult", ()),
        ("temperal_downsample", (True, True)),
        ("temperal_downsample", (False, False, True)),
        ("dropout", 1.0),
        ("attn_scales", (-1.0,)),
    ],
)
def test_validate_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"VAEConfig.{field}"):
        VAEConfig(**{field: value}).validate()  # type: ignore[arg-type]

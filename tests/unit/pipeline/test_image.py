"""pipeline.image: the CLIP visual tower against the official golden and manifest, and
loading the visual subset of the CLIP checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headcast.pipeline.checkpoint import CheckpointError, materialize
from headcast.pipeline.image import (
    CLIP_MEAN,
    CLIP_STD,
    VISUAL_PREFIX,
    CLIPVisionConfig,
    CLIPVisionEncoder,
    clip_preprocess,
    load_clip_visual,
    split_visual_state,
)
from tests.reference import (
    Golden,
    assert_state_matches_manifest,
    load_golden,
    load_manifest,
    rel_err,
)

GOLDEN_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def golden() -> Golden:
    return load_golden("clip_vision_tiny")


@pytest.fixture(scope="module")
def encoder(golden: Golden) -> CLIPVisionEncoder:
    visual, ignored = split_visual_state(golden.state)
    assert not ignored
    model = CLIPVisionEncoder(CLIPVisionConfig.from_dict(golden.config))
    model.load_state_dict(visual, strict=True)
    return model.eval().requires_grad_(False)


def test_golden_config_is_the_tiny_preset(golden: Golden) -> None:
    assert CLIPVisionConfig.from_dict(golden.config) == CLIPVisionConfig.tiny()


def test_matches_official_golden(golden: Golden, encoder: CLIPVisionEncoder) -> None:
    image = golden.inputs["image"]
    assert image.shape[-2:] != (28, 28), "the golden should exercise the resize"
    features = encoder.features(image)
    assert features.shape == (1, CLIPVisionConfig.tiny().num_tokens, 32)
    assert rel_err(features, golden.outputs["features"]) < GOLDEN_TOLERANCE


def test_full_size_meta_model_matches_the_visual_subset_of_the_manifest() -> None:
    manifest = load_manifest("clip_xlm_roberta_vit_h_14")
    state = {key: torch.empty(shape, device="meta") for key, shape in manifest.items()}
    visual, ignored = split_visual_state(state)
    # The ignored keys are exactly the non-visual ones: the text tower and log_scale.
    assert ignored == sorted(key for key in manifest if not key.startswith(VISUAL_PREFIX))
    assert set(ignored) == {"log_scale"} | {k for k in manifest if k.startswith("textual.")}
    assert len(visual) + len(ignored) == len(manifest)
    with torch.device("meta"):
        model = CLIPVisionEncoder(CLIPVisionConfig.vit_h_14())
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    visual_manifest = {
        key[len(VISUAL_PREFIX) :]: shape
        for key, shape in manifest.items()
        if key.startswith(VISUAL_PREFIX)
    }
    assert_state_matches_manifest(shapes, visual_manifest)
    # The visual subset loads strictly (meta tensors stand in for the weights).
    materialize(lambda: CLIPVisionEncoder(CLIPVisionConfig.vit_h_14()), visual, device="meta")
    assert CLIPVisionConfig.vit_h_14().num_tokens == manifest["visual.pos_embedding"][1]


def test_load_clip_visual_from_saved_file_ignores_the_text_tower(
    tmp_path: Path, golden: Golden, encoder: CLIPVisionEncoder
) -> None:
    state = dict(golden.state)
    state["log_scale"] = torch.tensor(4.6)
    state["textual.norm.weight"] = torch.ones(8)
    path = tmp_path / "clip.pth"
    torch.save(state, path)
    loaded = load_clip_visual(
        path, device="cpu", dtype=torch.float32, config=CLIPVisionConfig.tiny()
    )
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    features = loaded.features(golden.inputs["image"])
    assert torch.equal(features, encoder.features(golden.inputs["image"]))
    assert rel_err(features, golden.outputs["features"]) < GOLDEN_TOLERANCE


def test_load_clip_visual_in_half_precision_stays_close(tmp_path: Path, golden: Golden) -> None:
    path = tmp_path / "clip.pth"
    torch.save(golden.state, path)
    loaded = load_clip_visual(
        path, device="cpu", dtype=torch.float16, config=CLIPVisionConfig.tiny()
    )
    features = loaded.features(golden.inputs["image"])
    assert features.dtype == torch.float16
    assert rel_err(features, golden.outputs["features"]) < 1e-2  # fp16 has ~3 digits


def test_load_clip_visual_is_strict_on_the_visual_subset(tmp_path: Path, golden: Golden) -> None:
    state = dict(golden.state)
    del state["visual.transformer.2.mlp.2.bias"]  # the unused last block still must load
    path = tmp_path / "clip.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="transformer.2.mlp.2.bias"):
        load_clip_visual(path, device="cpu", dtype=torch.float32, config=CLIPVisionConfig.tiny())


def test_load_clip_visual_without_visual_keys_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "clip.pth"
    torch.save({"log_scale": torch.tensor(1.0)}, path)
    with pytest.raises(CheckpointError, match="headcast doctor"):
        load_clip_visual(path, device="cpu", dtype=torch.float32)
    with pytest.raises(CheckpointError, match="headcast doctor"):
        load_clip_visual(tmp_path / "missing.pth", device="cpu", dtype=torch.float32)


def test_preprocess_maps_a_flat_image_to_normalised_constants() -> None:
    value = 0.2  # in [-1, 1]; bicubic resizing keeps a constant image constant
    image = torch.full((1, 3, 1, 40, 24), value)
    pixels = clip_preprocess(image, image_size=28)
    assert pixels.shape == (1, 3, 28, 28)
    expected = (value * 0.5 + 0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels.mean(dim=(0, 2, 3)), expected)
    torch.testing.assert_close(pixels.amax(dim=(0, 2, 3)), pixels.amin(dim=(0, 2, 3)))
    with pytest.raises(ValueError, match="\\[B, 3, T, H, W\\]"):
        clip_preprocess(torch.zeros(1, 3, 40, 24), image_size=28)


def test_features_treat_each_frame_as_one_image(golden: Golden, encoder: CLIPVisionEncoder) -> None:
    frame = golden.inputs["image"]  # [1, 3, 1, H, W]
    two = torch.cat([frame, -frame], dim=2)  # [1, 3, 2, H, W]
    features = encoder.features(two)
    assert features.shape == (2, 5, 32)
    torch.testing.assert_close(features[:1], encoder.features(frame))
    torch.testing.assert_close(features[1:], encoder.features(-frame))


def test_config_validation_names_bad_values() -> None:
    with pytest.raises(ValueError, match="image_size=30 must be divisible by patch_size=14"):
        CLIPVisionConfig.from_dict({**CLIPVisionConfig.tiny().__dict__, "image_size": 30})
    with pytest.raises(ValueError, match="pool_type='attn_pool'"):
        CLIPVisionConfig.from_dict({**CLIPVisionConfig.tiny().__dict__, "pool_type": "attn_pool"})

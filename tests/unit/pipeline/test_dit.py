"""The FlashTalk DiT against the official golden, the full-size manifest and its loaders."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from headcast.pipeline.attention import attention
from headcast.pipeline.checkpoint import CheckpointError
from headcast.pipeline.dit import DiTConfig, DiTConfigError, FlashTalkDiT, load_dit
from headcast.pipeline.rope import ROPE_THETA, apply_rope, rope_axis_dims, rope_cos_sin
from tests.reference import (
    Golden,
    assert_state_matches_manifest,
    load_golden,
    load_manifest,
    rel_err,
)

GOLDEN_TOLERANCE = 1e-4
"""Relative error allowed against the official float32 output."""

BF16_TOLERANCE = 2e-2
"""Relative error allowed for a bf16-weight forward against the float32 golden."""


@pytest.fixture(scope="module")
def golden() -> Golden:
    return load_golden("dit_tiny")


def _run(model: FlashTalkDiT, golden: Golden) -> torch.Tensor:
    """The golden's call: ``model([x], t, [context], seq_len, clip_fea, y, audio)`` batched."""
    inputs = golden.inputs
    with torch.no_grad():
        return model(
            x=inputs["x"].unsqueeze(0),  # [1, 16, F, H, W]
            t=inputs["t"],  # [1]
            context=inputs["context"].unsqueeze(0),  # [1, L_text, text_dim]
            clip_fea=inputs["clip_fea"],  # [1, 257, 1280]
            y=inputs["y"],  # [1, 20, F, H, W]
            audio=inputs["audio"],  # [1, video frames, window, blocks, channels]
        )


def _golden_model(golden: Golden) -> FlashTalkDiT:
    with torch.device("meta"):
        model = FlashTalkDiT(DiTConfig.from_dict(golden.config))
    model.load_state_dict(golden.state, strict=True, assign=True)
    return model.eval()


def test_golden_velocity(golden: Golden) -> None:
    velocity = _run(_golden_model(golden), golden)
    err = rel_err(velocity, golden.outputs["velocity"])
    assert velocity.dtype == torch.float32
    assert err < GOLDEN_TOLERANCE, f"dit_tiny velocity relative error {err:.3e}"


def test_tiny_preset_is_the_golden_config(golden: Golden) -> None:
    assert DiTConfig.from_dict(golden.config) == DiTConfig.tiny()


def test_full_size_model_matches_manifest() -> None:
    with torch.device("meta"):
        model = FlashTalkDiT(DiTConfig.flashtalk_14b())
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert_state_matches_manifest(shapes, load_manifest("flashtalk_dit_14b"))


def _write_checkpoint(golden: Golden, directory: Path) -> list[str]:
    """The golden state as 2 shards + index + an official-style config.json; returns shard names."""
    names = sorted(golden.state)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    shard_names = [f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors" for i in range(2)]
    weight_map = {}
    for shard_name, keys in zip(shard_names, halves):
        save_file({key: golden.state[key].contiguous() for key in keys}, directory / shard_name)
        weight_map.update({key: shard_name for key in keys})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    official_extras = {
        "_class_name": "WanModel",
        "_diffusers_version": "0.31.0",
        "model_type": "i2v",
        "weight_init": True,
    }
    (directory / "config.json").write_text(json.dumps({**golden.config, **official_extras}))
    return shard_names


def test_load_dit_from_shards(golden: Golden, tmp_path: Path) -> None:
    _write_checkpoint(golden, tmp_path)
    model = load_dit(tmp_path, device="cpu", dtype=torch.float32)
    err = rel_err(_run(model, golden), golden.outputs["velocity"])
    assert err < GOLDEN_TOLERANCE, f"loaded dit_tiny velocity relative error {err:.3e}"
    assert not any(p.requires_grad for p in model.parameters())


def test_load_dit_bf16_keeps_float32_conditioning(golden: Golden, tmp_path: Path) -> None:
    _write_checkpoint(golden, tmp_path)
    model = load_dit(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert model.time_projection[1].weight.dtype == torch.float32
    assert model.head.head.weight.dtype == torch.float32
    velocity = _run(model, golden)
    err = rel_err(velocity, golden.outputs["velocity"])
    assert velocity.dtype == torch.float32
    assert err < BF16_TOLERANCE, f"bf16 dit_tiny velocity relative error {err:.3e}"


def test_load_dit_without_config_names_the_file(golden: Golden, tmp_path: Path) -> None:
    _write_checkpoint(golden, tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json.*headcast doctor"):
        load_dit(tmp_path, device="cpu", dtype=torch.float32)


def test_load_dit_without_a_shard_names_the_file(golden: Golden, tmp_path: Path) -> None:
    shard_names = _write_checkpoint(golden, tmp_path)
    (tmp_path / shard_names[1]).unlink()
    with pytest.raises(CheckpointError, match=shard_names[1].replace(".", r"\.")):
        load_dit(tmp_path, device="cpu", dtype=torch.float32)


def test_load_dit_with_a_bad_config_names_the_value(golden: Golden, tmp_path: Path) -> None:
    _write_checkpoint(golden, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**golden.config, "num_heads": 3}))
    with pytest.raises(CheckpointError, match=r"config\.json.*dim=128.*num_heads=3"):
        load_dit(tmp_path, device="cpu", dtype=torch.float32)


def test_config_from_official_keys(caplog: pytest.LogCaptureFixture) -> None:
    official = {
        "_class_name": "WanModel",
        "model_type": "i2v",
        "dim": 5120,
        "ffn_dim": 13824,
        "freq_dim": 256,
        "in_dim": 36,
        "num_heads": 40,
        "num_layers": 40,
        "out_dim": 16,
        "text_len": 512,
        "eps": 1e-06,
        "weight_init": True,
    }
    with caplog.at_level(logging.DEBUG, logger="headcast.pipeline.dit"):
        config = DiTConfig.from_dict(official)
    assert config == DiTConfig.flashtalk_14b()
    assert "_class_name" in caplog.text and "weight_init" in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": 130}, r"dim=130 is not divisible by num_heads=4"),
        ({"ffn_dim": 0}, r"ffn_dim=0 must be a positive integer"),
        ({"patch_size": [2, 2, 2]}, r"patch_size=\(2, 2, 2\)"),
        ({"eps": -1.0}, r"eps=-1.0"),
        ({"model_type": "t2v"}, r"model_type='t2v'"),
    ],
)
def test_config_rejects_bad_values(golden: Golden, change: dict, message: str) -> None:
    with pytest.raises(DiTConfigError, match=message):
        DiTConfig.from_dict({**golden.config, **change})


def test_config_names_missing_keys(golden: Golden) -> None:
    config = dict(golden.config)
    del config["num_layers"]
    with pytest.raises(DiTConfigError, match="num_layers"):
        DiTConfig.from_dict(config)


def test_forward_rejects_audio_of_the_wrong_length(golden: Golden) -> None:
    model = _golden_model(golden)
    inputs = dict(golden.inputs)
    inputs["audio"] = inputs["audio"][:, :-1]
    with pytest.raises(ValueError, match="audio"):
        _run(model, Golden(inputs=inputs))


def test_rope_tables_are_cached_outside_the_state_dict(golden: Golden) -> None:
    model = _golden_model(golden)
    keys = set(model.state_dict())
    _run(model, golden)
    device = torch.device("cpu")
    assert model.rope_tables((3, 4, 4), device) is model.rope_tables((3, 4, 4), device)
    assert set(model.state_dict()) == keys


def _complex_rope_reference(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The official formulation: complex float64 frequency tables, complex product per pair."""
    frames, rows, cols = grid
    head_dim = x.shape[-1]
    pairs = head_dim // 2
    axis_pairs = [pairs - 2 * (pairs // 3), pairs // 3, pairs // 3]
    tables = []
    for size, count in zip(grid, axis_pairs):
        dim = 2 * count
        exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
        angles = torch.outer(torch.arange(size, dtype=torch.float64), ROPE_THETA**-exponents)
        tables.append(torch.polar(torch.ones_like(angles), angles))  # [size, count] complex128
    freqs = torch.cat(
        [
            tables[0].view(frames, 1, 1, -1).expand(frames, rows, cols, -1),
            tables[1].view(1, rows, 1, -1).expand(frames, rows, cols, -1),
            tables[2].view(1, 1, cols, -1).expand(frames, rows, cols, -1),
        ],
        dim=-1,
    ).reshape(frames * rows * cols, 1, pairs)
    x_complex = torch.view_as_complex(x.double().unflatten(-1, (pairs, 2)))
    return torch.view_as_real(x_complex * freqs).flatten(-2)


@pytest.mark.parametrize(("head_dim", "grid"), [(128, (9, 48, 28)), (32, (3, 4, 4))])
def test_real_rope_equals_complex_reference(head_dim: int, grid: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, math.prod(grid), 3, head_dim, generator=generator)  # [B, L, H, D]
    cos, sin = rope_cos_sin(grid, head_dim)
    rotated = apply_rope(x, cos, sin)
    reference = _complex_rope_reference(x, grid)
    err = rel_err(rotated, reference)
    assert err < 1e-6, f"RoPE relative error {err:.3e} against the complex reference"
    assert sum(rope_axis_dims(head_dim)) == head_dim


def test_attention_is_exact_softmax_attention() -> None:
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 7, 3, 16, generator=generator)  # [B, Lq, H, D]
    k = torch.randn(2, 11, 3, 16, generator=generator)  # [B, Lk, H, D]
    v = torch.randn(2, 11, 3, 16, generator=generator)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(16)
    reference = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.double())
    out = attention(q, k, v)
    assert out.shape == (2, 7, 3, 16)
    err = rel_err(out, reference)
    assert err < 1e-6, f"attention relative error {err:.3e} against float64 softmax attention"

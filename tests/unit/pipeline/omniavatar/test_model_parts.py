"""OmniAvatar's model parts without goldens: full-size manifests, LoRA merging, tiling, TeaCache.

The full-size DiTs are built on the meta device and their checkpoint tensor lists (whole
model, Wan base shards, ``pytorch_model.pt``) compared with the reference manifests.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headcast.pipeline.checkpoint import CheckpointError
from headcast.pipeline.omniavatar.config import (
    LoraConfig,
    OmniConfigError,
    OmniDiTConfig,
    omni_size,
)
from headcast.pipeline.omniavatar.dit import OmniAvatarDiT
from headcast.pipeline.omniavatar.guidance import Guidance, Pass
from headcast.pipeline.omniavatar.loader import build_omni_dit, expected_tensors
from headcast.pipeline.omniavatar.lora import (
    LoraError,
    LoraPair,
    checkpoint_shapes,
    merged_weight,
    split_lora,
)
from headcast.pipeline.omniavatar.teacache import TeaCacheSchedule, teacache_schedule
from headcast.pipeline.omniavatar.tiled_vae import blend_ramp, tile_plan
from tests.reference import OMNIAVATAR, load_manifest

MANIFESTS = {"14b": "omniavatar_dit_14b", "1.3b": "omniavatar_dit_1_3b"}


@pytest.mark.parametrize("size_name", sorted(MANIFESTS))
def test_full_size_models_built_on_meta_match_the_manifests(size_name: str) -> None:
    size = omni_size(size_name)
    manifest = MANIFESTS[size_name]
    with torch.device("meta"):
        model = OmniAvatarDiT(size.dit)
    base, omni = expected_tensors(size.dit, size.lora)
    for ours, table in (
        (checkpoint_shapes(model, size.lora), "tensors"),
        (base, "wan_base_tensors"),
        (omni, "omniavatar_tensors"),
    ):
        reference = {k: tuple(v) for k, v in load_manifest(manifest, OMNIAVATAR, table).items()}
        assert ours == reference, table
    assert size.dit.audio_projections == {"14b": 19, "1.3b": 14}[size_name]


def test_the_wav2vec2_manifest_is_the_base_architecture() -> None:
    manifest = load_manifest("omniavatar_wav2vec2_base", OMNIAVATAR)
    layers = {int(k.split(".")[2]) for k in manifest if k.startswith("encoder.layers.")}
    assert len(layers) == 12 and manifest["encoder.layer_norm.weight"] == [768]
    assert omni_size("14b").dit.audio_input_dim == 14 * 768  # last layer + 13 hidden states


def test_lora_merge_equals_the_unmerged_sum() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    pair = LoraPair(down=torch.randn(3, 6), up=torch.randn(5, 3))
    x = torch.randn(4, 6)
    scaling = 0.5
    unmerged = linear(x) + scaling * (x @ pair.down.T @ pair.up.T)
    merged = nn.functional.linear(
        x, merged_weight(linear.weight.detach(), pair, scaling, torch.float32), linear.bias
    )
    assert torch.allclose(merged, unmerged, atol=1e-6)
    with pytest.raises(LoraError, match="do not fit"):
        merged_weight(
            linear.weight, LoraPair(torch.randn(3, 7), torch.randn(5, 3)), scaling, torch.float32
        )


def test_split_lora_accepts_peft_names_and_names_unpaired_tensors() -> None:
    weight = torch.zeros(2, 2)
    base, pairs = split_lora(
        {
            "blocks.0.ffn.0.base_layer.weight": weight,
            "blocks.0.ffn.0.base_layer.bias": weight[0],
            "blocks.0.ffn.0.lora_A.default.weight": weight,
            "blocks.0.ffn.0.lora_B.default.weight": weight,
        }
    )
    assert set(base) == {"blocks.0.ffn.0.weight", "blocks.0.ffn.0.bias"} and set(pairs) == {
        "blocks.0.ffn.0"
    }
    with pytest.raises(LoraError, match="blocks.0.q"):
        split_lora({"blocks.0.q.lora_A.default.weight": weight})


def test_loading_names_missing_tensors_and_targets_without_lora(
    dit_golden, lora: LoraConfig
) -> None:
    config = OmniDiTConfig.from_dict(dit_golden.config)
    state = dict(dit_golden.state)
    del state["audio_cond_projs.1.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing tensors: audio_cond_projs\.1\.bias"):
        build_omni_dit(config, lora, state)
    state = {k: v for k, v in dit_golden.state.items() if not k.startswith("blocks.3.ffn.2.lora")}
    with pytest.raises(CheckpointError, match=r"LoRA targets without A/B: blocks\.3\.ffn\.2"):
        build_omni_dit(config, lora, state)


def test_configs_refuse_inconsistent_sizes() -> None:
    with pytest.raises(OmniConfigError, match="in_dim=36"):
        OmniDiTConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=6, in_dim=36)
    with pytest.raises(OmniConfigError, match="num_heads"):
        OmniDiTConfig(dim=130, ffn_dim=256, num_heads=4, num_layers=6)
    with pytest.raises(OmniConfigError, match="choose one of"):
        omni_size("7b")


def test_tile_plan_drops_a_tile_its_predecessor_covers_and_ramps_only_inside() -> None:
    # the official decode tiling of a 400x720 frame (50 x 90 latents): 3 x 3 tiles
    tiles = tile_plan(50, 90, (30, 52), (15, 26))
    assert sorted({t.top for t in tiles}) == [0, 15, 30] and sorted({t.left for t in tiles}) == [
        0,
        26,
        52,
    ]
    assert len(tile_plan(20, 20, (30, 52), (15, 26))) == 1  # one tile covers a small frame
    ramp = blend_ramp(6, True, False, 3)
    assert torch.allclose(ramp, torch.tensor([1 / 3, 2 / 3, 1, 1, 1, 1]))
    assert torch.equal(blend_ramp(4, False, False, 3), torch.ones(4))


def test_guidance_passes_and_mix() -> None:
    assert Guidance(1.0).passes == (Pass.COND,)
    assert Guidance(4.5).passes == Guidance(4.5, 4.5).passes == (Pass.COND, Pass.UNCOND)
    assert Guidance(4.5, 3.0).passes == (Pass.COND, Pass.UNCOND_AUDIO, Pass.UNCOND)
    c, t, u = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([1.0])
    assert Guidance(4.5).combine({Pass.COND: c, Pass.UNCOND: u}).item() == pytest.approx(
        1 + 4.5 * 2
    )
    mixed = Guidance(4.5, 3.0).combine({Pass.COND: c, Pass.UNCOND_AUDIO: t, Pass.UNCOND: u})
    assert mixed.item() == pytest.approx(1 + 4.5 * 1 + 3.0 * 1)


def test_teacache_first_and_last_steps_always_compute() -> None:
    t_mods = torch.linspace(1.0, 1.001, 6)[:, None].expand(6, 4)  # tiny changes: skip-prone
    schedule = teacache_schedule(t_mods, threshold=1e6, coefficients=(1.0, 0.0))
    assert schedule.skip == (False, True, True, True, True, False)
    assert teacache_schedule(t_mods, threshold=0.0) == TeaCacheSchedule.never(6)


FP8_TOL = 0.1
"""e4m3 operands (3 mantissa bits) move each GEMM by a few percent; through the golden's six
blocks of random weights the velocity moves by 6.4 % (measured; FlashTalk's two-block
golden stays under 6 %)."""


def test_fp8_linears_quantise_the_t2v_blocks_within_the_format_rounding(
    dit_golden, lora: LoraConfig
) -> None:
    from headcast.pipeline.quantize import Float8Linear, quantize_dit
    from tests.reference import rel_err

    config = OmniDiTConfig.from_dict(
        {**dit_golden.config, "text_len": dit_golden.inputs["context"].shape[1]}
    )
    dit = build_omni_dit(config, lora, dit_golden.state)
    summary = quantize_dit(dit, "fp8")
    assert (
        summary.linears == config.num_layers * 8
    )  # q k v o, cross q o, ffn 0 2: the video-token GEMMs
    assert (
        isinstance(dit.blocks[0].cross_attn.q, Float8Linear)
        and type(dit.blocks[0].cross_attn.k) is nn.Linear
    )
    inputs = dit_golden.inputs
    with torch.no_grad():
        velocity = dit(
            inputs["x"], inputs["timestep"], inputs["context"], inputs["y"], inputs["audio_emb"]
        )
    assert rel_err(velocity, dit_golden.outputs["velocity"]) < FP8_TOL

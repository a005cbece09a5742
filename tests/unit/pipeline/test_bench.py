"""``headcast bench`` on the tiny preset, and the speed paths on CPU against the goldens.

The benchmark must run end to end on CPU and report every stage; fused projections,
channels-last VAE decode and fp8/int8/int4 linears must compute what the plain path computes
(exactly up to float32 summation order, or within the format's rounding). Timing values are
never asserted beyond being measured (positive).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from headcast.pipeline.bench import count_flops
from headcast.pipeline.bench_parallel import band_flops
from headcast.pipeline.checkpoint import materialize
from headcast.pipeline.config import preset
from headcast.pipeline.dit import DiTConfig, FlashTalkDiT
from headcast.pipeline.media import CHUNK_SECONDS
from headcast.pipeline.quantize import FP8_MAX, Float8Linear, quantize_dit, quantize_rows_fp8
from headcast.pipeline.speedups import SpeedOptions
from headcast.pipeline.timing import HostStageTimer, stage_timer
from headcast.pipeline.vae import VAEConfig, WanVAE
from headcast.pipeline.vae_kernels import norm_silu
from headcast.server.cli import main as headcast
from tests.reference import Golden, load_golden, rel_err

GOLDEN_TOLERANCE = 1e-4
FP8_TOLERANCE = 6e-2
"""e4m3 has 3 mantissa bits: a product of two rounded operands is off by a few percent."""
REFERENCE_DIT_STEP_TFLOP = 471.2
"""One full-size DiT step at 768x448, from shared/reference/README.md (471 TFLOP)."""
STAGES = (
    "audio_s", "dit_step0_s", "dit_step1_s", "dit_step2_s", "dit_step3_s",
    "vae_decode_s", "color_s", "motion_encode_s", "to_host_s",
)  # fmt: skip


@pytest.fixture(scope="module")
def dit_golden() -> Golden:
    return load_golden("dit_tiny")


def _golden_dit(golden: Golden) -> FlashTalkDiT:
    model = materialize(lambda: FlashTalkDiT(DiTConfig.from_dict(golden.config)), golden.state)
    return model.eval()


def _velocity(model: FlashTalkDiT, golden: Golden) -> torch.Tensor:
    inputs = golden.inputs
    with torch.no_grad():
        return model(
            inputs["x"].unsqueeze(0),
            inputs["t"],
            inputs["context"].unsqueeze(0),
            inputs["clip_fea"],
            inputs["y"],
            inputs["audio"],
        )


def test_headcast_bench_on_tiny_writes_every_stage(tmp_path: Path, capsys) -> None:
    report_path = tmp_path / "bench.json"
    status = headcast(
        ["bench", "--preset", "tiny", "--fuse", "--chunks", "2", "--warmup", "0",
         "--self-check", "--json", str(report_path)]
    )  # fmt: skip
    assert status == 0
    report = json.loads(report_path.read_text())
    assert tuple(report["stages_s"]) == STAGES
    assert all(seconds > 0.0 for seconds in report["stages_s"].values())
    assert len(report["chunk_walls_s"]) == 2 and report["chunk_s"] > 0.0
    assert math.isclose(report["rtf"], report["chunk_s"] / CHUNK_SECONDS)
    # the chunk's wall time covers its stages (the host clock times them on CPU)
    assert report["chunk_s"] >= 0.9 * sum(report["stages_s"].values())
    assert report["preset"] == "tiny" and report["steps"] == 4
    assert report["gpus"] == 1 and report["quantize"] == "none"
    assert (report["height"], report["width"]) == (64, 32)
    assert report["vae_decode_s"] == report["stages_s"]["vae_decode_s"]
    assert report["comm"] == {} and report["scaling"] == {}
    assert report["options"]["fuse_projections"] is True
    assert report["command"].startswith("headcast bench --preset tiny --fuse")
    assert report["flops"]["dit_step_flops"] > 0 and report["flops"]["vae_decode_flops"] > 0
    assert report["peak_memory_gib"] is None  # no device memory on CPU
    assert "chunk (wall)" in capsys.readouterr().out
    # the run's path and its own eager path are the same model here: identical outputs
    assert report["check"]["velocity_rel_err_vs_eager"] < 1e-6
    assert report["check"]["video_rel_err_vs_eager"] < 1e-6


def test_headcast_bench_on_two_gloo_ranks_checks_the_group_and_its_scaling(tmp_path: Path) -> None:
    single, group = tmp_path / "single.json", tmp_path / "group.json"
    common = ["bench", "--preset", "tiny", "--chunks", "1", "--warmup", "0"]
    assert headcast([*common, "--json", str(single)]) == 0
    status = headcast(
        [*common, "--gpus", "2", "--check-parallel", "--scaling-reference", str(single),
         "--json", str(group)]
    )  # fmt: skip
    assert status == 0
    report = json.loads(group.read_text())
    assert report["gpus"] == 2 and report["label"].startswith("2gpu-")
    assert tuple(report["stages_s"]) == STAGES
    assert report["vae_decode_s"] > 0.0 and report["dit_step_s"] > 0.0
    # the group's outputs against rank 0 alone on the same weights and inputs
    for output in ("velocity", "video", "motion"):
        assert report["check"][f"{output}_rel_err_vs_1gpu"] < 1e-5
    assert report["comm"]["comm_step_s"] > 0.0 and report["comm"]["video_gather_s"] > 0.0
    # 2 layers x (q, k, v out + attention back) x 36 of 72 tokens x 128 channels, float32
    assert report["comm"]["all_to_all_bytes_per_step"] == 2 * 4 * 36 * 128 * 4
    speedup = report["scaling"]["chunk_speedup"]
    assert report["scaling"]["chunk_efficiency"] == pytest.approx(speedup / 2)
    # 8 latent rows in bands of 4: the halo covers the whole tiny frame, so no rank saves work
    assert 0.5 <= report["flops"]["vae_decode_rank_share"] <= 1.0


def test_full_size_vae_work_per_rank_is_a_little_over_half_on_two_ranks() -> None:
    flops = band_flops(preset("flashtalk-14b"), 2)
    assert flops["vae_decode_flops"] / 1e12 == pytest.approx(97.1, rel=1e-3)
    # each rank decodes its 384 of 768 rows plus a halo (and the latent-size trunk entire)
    assert 0.5 < flops["vae_decode_rank_share"] < 0.56
    assert 0.5 < flops["motion_encode_rank_share"] < 0.62


def test_full_size_dit_step_is_471_tflop() -> None:
    flops = count_flops(preset("flashtalk-14b"))
    assert flops["dit_step_flops"] / 1e12 == pytest.approx(REFERENCE_DIT_STEP_TFLOP, rel=1e-3)
    # self-, text/image- and audio attention: about a quarter of the step
    assert 0.2 < flops["dit_step_attention_flops"] / flops["dit_step_flops"] < 0.3


def test_fused_projections_keep_the_golden_velocity(dit_golden: Golden) -> None:
    model = _golden_dit(dit_golden)  # loads the official keys strictly
    model.fuse_projections()
    keys = set(model.state_dict())
    assert "blocks.0.self_attn.qkv.weight" in keys and "blocks.0.self_attn.q.weight" not in keys
    assert "blocks.0.cross_attn.kv_img.weight" in keys
    assert rel_err(_velocity(model, dit_golden), dit_golden.outputs["velocity"]) < GOLDEN_TOLERANCE


def test_fp8_rows_keep_their_maximum_and_zero_rows() -> None:
    x = torch.randn(5, 64) * torch.tensor([1e-3, 1.0, 10.0, 1e3, 0.0])[:, None]
    quantized, scale = quantize_rows_fp8(x)
    assert quantized.dtype == torch.float8_e4m3fn and scale.shape == (5, 1)
    restored = quantized.float() * scale
    assert torch.isfinite(restored).all()
    assert torch.equal(restored[4], torch.zeros(64))
    peaks = quantized[:4].float().abs().amax(dim=1)
    assert torch.equal(peaks, torch.full((4,), FP8_MAX))
    assert rel_err(restored[:4], x[:4]) < FP8_TOLERANCE


def test_fp8_linear_emulation_tracks_float32() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 96)
    x = torch.randn(3, 40, 256)
    fp8 = Float8Linear.from_linear(linear)
    assert not fp8.use_scaled_mm  # CPU: the float32 emulation of the fp8 product
    with torch.no_grad():
        out, ref = fp8(x), linear(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert 1e-3 < rel_err(out, ref) < FP8_TOLERANCE  # quantised, and only by rounding


@pytest.mark.parametrize(("mode", "tolerance"), [("fp8", 0.1), ("int8", 2e-2), ("int4", 0.2)])
def test_quantized_dit_tracks_the_golden(dit_golden: Golden, mode: str, tolerance: float) -> None:
    model = _golden_dit(dit_golden)
    model.fuse_projections()
    summary = quantize_dit(model, mode)
    assert summary.linears > 0 and summary.parameters > 0
    error = rel_err(_velocity(model, dit_golden), dit_golden.outputs["velocity"])
    assert 1e-5 < error < tolerance


def test_channels_last_vae_decode_matches_golden() -> None:
    golden = load_golden("vae_tiny")
    vae = materialize(lambda: WanVAE(VAEConfig.from_dict(golden.config)), golden.state).eval()
    latents = golden.inputs["latent"][None]  # [1, z, T, h, w]
    reference = vae.decode(latents)
    out = vae.to_channels_last().decode(latents)
    assert rel_err(out, reference) < 1e-5


def test_fused_norm_silu_keeps_the_golden_decode() -> None:
    golden = load_golden("vae_tiny")
    vae = materialize(lambda: WanVAE(VAEConfig.from_dict(golden.config)), golden.state).eval()
    latents = golden.inputs["latent"][None]  # [1, z, T, h, w]
    reference = vae.decode(latents)
    assert vae.fuse_norms(norm_silu) > 0  # CPU: the float32 reference function
    assert not any(isinstance(m, torch.nn.SiLU) for m in vae.decoder.upsamples.modules())
    assert rel_err(vae.decode(latents), reference) < GOLDEN_TOLERANCE


def test_speed_options_name_bad_combinations() -> None:
    assert SpeedOptions.fast("cpu").attention == "auto"
    assert SpeedOptions.fast("cuda").attention == "cudnn"
    with pytest.raises(ValueError, match="compile with quantize='int4'"):
        SpeedOptions(quantize="int4", compile_mode="default")
    with pytest.raises(ValueError, match="attention='fastest'"):
        SpeedOptions(attention="fastest")
    with pytest.raises(ValueError, match="vae_fused_norms needs vae_channels_last"):
        SpeedOptions(vae_fused_norms=True)


def test_host_stage_timer_sums_repeated_stages() -> None:
    timer = stage_timer("cpu")
    assert isinstance(timer, HostStageTimer)
    with pytest.raises(RuntimeError, match="before start"):
        timer.mark("x")
    timer.start()
    sum(range(10_000))
    timer.mark("a")
    timer.mark("b")
    timer.mark("a")
    stages = timer.read()
    assert list(stages) == ["a", "b"] and all(v >= 0.0 for v in stages.values())

"""fp8 attention's quantisation and its PyTorch twin (``pipeline.attention_fp8``), and how
the speed options switch a DiT's self-attention to it.

cuDNN's kernel needs a Hopper GPU: tests/gpu/test_attention_fp8.py checks it against the
twin tested here.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from headcast.pipeline import bench
from headcast.pipeline.attention_fp8 import (
    FP8_MAX,
    attend_fp8_rows,
    attention_fp8,
    fp8_attention_problem,
    quantize_fp8,
    reference_attention_fp8,
)
from headcast.pipeline.dit import DiTConfig, FlashTalkDiT, SelfAttention
from headcast.pipeline.quantize import Float8Linear
from headcast.pipeline.rope import rope_cos_sin
from headcast.pipeline.speedups import (
    SpeedOptions,
    bf16_attention,
    check_attention_fp8,
    prepare_dit_block,
)

SHAPE = (2, 300, 3, 64)
"""Batch, tokens, heads, head dim."""


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)  # [B, L, H, D]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def qkv(seed: int, shape: tuple[int, ...] = SHAPE) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator) for _ in range(3))


def test_each_tensor_maps_its_maximum_to_448_and_keys_lose_their_shared_offset() -> None:
    q, k, v = qkv(0)
    k = k + 3.0  # an offset every key shares
    q8, k8, v8, descale_q, descale_k, descale_v = quantize_fp8(q, k, v)
    assert {t.dtype for t in (q8, k8, v8)} == {torch.float8_e4m3fn}
    assert q8.shape == k8.shape == v8.shape == SHAPE
    for x8, descale in ((q8, descale_q), (k8, descale_k), (v8, descale_v)):
        assert descale.shape == (1, 1, 1, 1) and descale.dtype == torch.float32
        assert float(x8.float().abs().max()) == FP8_MAX
    assert rel_err(q8.float() * descale_q, q) < 0.04  # e4m3: 3 mantissa bits
    keys = k8.float() * descale_k
    assert keys.mean(dim=1).abs().max() < 0.05  # smoothed
    assert rel_err(keys, k - k.mean(dim=1, keepdim=True)) < 0.04


def test_twin_tracks_exact_attention_and_ignores_a_shared_key_offset() -> None:
    q, k, v = qkv(1)
    reference = exact(q, k, v)
    out = attention_fp8(q, k, v)
    assert out.shape == SHAPE and out.dtype == v.dtype
    assert 1e-3 < rel_err(out, reference) < 0.08  # quantised (not exact), and close
    shifted = attention_fp8(q, k + 5.0, v)  # the same softmax: the offset is smoothed away
    assert rel_err(shifted, out) < 1e-2
    assert torch.equal(reference_attention_fp8(*quantize_fp8(q, k, v)), out)


def test_bf16_input_returns_bf16() -> None:
    q, k, v = (t.to(torch.bfloat16) for t in qkv(2, (1, 130, 2, 32)))
    out = attention_fp8(q, k, v)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, exact(q.float(), k.float(), v.float())) < 0.08


def test_speed_options_switch_self_attention_and_bf16_attention_restores_it() -> None:
    dit = FlashTalkDiT(DiTConfig.tiny())
    for block in dit.blocks:
        prepare_dit_block(block, SpeedOptions(attention_fp8=True))
    layers = [block.self_attn for block in dit.blocks]
    assert all(isinstance(layer, SelfAttention) and layer.use_fp8 for layer in layers)
    with bf16_attention(dit.blocks):
        assert not any(layer.use_fp8 for layer in layers)
    assert all(layer.use_fp8 for layer in layers)
    check_attention_fp8(SpeedOptions(attention_fp8=True), "cpu")  # the twin runs on CPU
    assert fp8_attention_problem(torch.device("cpu")) is None


def test_self_attention_in_fp8_tracks_bf16() -> None:
    torch.manual_seed(0)
    layer = SelfAttention(128, 2, qk_norm=True, eps=1e-6)
    cos, sin = rope_cos_sin((2, 6, 8), 64)
    x = torch.randn(1, 96, 128)
    with torch.no_grad():
        plain = layer(x, cos, sin)
        layer.use_fp8 = True
        low = layer(x, cos, sin)
    assert 1e-4 < rel_err(low, plain) < 0.08


def test_rows_are_the_e4m3_output_at_vs_scale() -> None:
    q, k, v = qkv(3)
    rows = attend_fp8_rows(quantize_fp8(q, k, v), v.dtype)
    batch, tokens, heads, head_dim = SHAPE
    assert rows.data.dtype == torch.float8_e4m3fn
    assert rows.data.shape == (batch * tokens, heads * head_dim)
    assert rows.lead == (batch, tokens) and rows.dtype == v.dtype
    assert rows.scale.shape == (batch * tokens, 1) and rows.scale.unique().numel() == 1
    dequantized = (rows.data.float() * rows.scale).reshape(SHAPE)
    assert torch.equal(dequantized, attention_fp8(q, k, v))


def test_an_fp8_output_projection_reads_the_e4m3_output() -> None:
    torch.manual_seed(0)
    layer = SelfAttention(128, 2, qk_norm=True, eps=1e-6)
    layer.use_fp8 = True
    cos, sin = rope_cos_sin((2, 6, 8), 64)
    x = torch.randn(1, 96, 128)
    with torch.no_grad():
        float_o = layer(x, cos, sin)  # a float32 o on the dequantised output
        layer.o = Float8Linear.from_linear(layer.o)
        fp8_o = layer(x, cos, sin)  # the e4m3 output straight into the fp8 GEMM
    assert fp8_o.shape == float_o.shape
    assert 1e-4 < rel_err(fp8_o, float_o) < 0.05  # the fp8 weights' rounding alone


def test_bench_flag_reaches_the_speed_options() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    cpu = torch.device("cpu")
    assert bench.resolve_options(parser.parse_args(["--attention-fp8"]), cpu).attention_fp8
    assert not bench.resolve_options(parser.parse_args([]), cpu).attention_fp8

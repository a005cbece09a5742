"""The 8-bit attention's quantisation and its PyTorch twin (``pipeline.attention_8bit``),
and how the speed options switch a DiT's self-attention to it.

The Triton kernel itself needs a GPU: tests/gpu/test_attention_8bit.py checks it against
the twin tested here.
"""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from headcast.pipeline import bench
from headcast.pipeline.attention_8bit import (
    INT8_MAX,
    KEY_BLOCK,
    attention_8bit,
    quantize_qkv,
    reference_attention,
)
from headcast.pipeline.dit import DiTConfig, FlashTalkDiT, SelfAttention
from headcast.pipeline.speedups import SpeedOptions, bf16_attention, prepare_dit_block

SHAPE = (2, 300, 3, 64)
"""Batch, tokens (a partial last key block), heads, head dim."""


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)  # [B, L, H, D]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def qkv(seed: int, shape: tuple[int, ...] = SHAPE) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator) for _ in range(3))


def test_quantised_operands_have_the_kernels_layout_and_rounding() -> None:
    q, k, v = qkv(0)
    k = k + 3.0  # an offset every key shares
    quantized = quantize_qkv(q, k, v)
    batch, tokens, heads, head_dim = SHAPE
    padded = KEY_BLOCK * 3  # 300 tokens -> 384
    assert quantized.q.dtype == quantized.k.dtype == torch.int8
    assert quantized.v_t.dtype == torch.float8_e4m3fn
    assert quantized.q.shape == SHAPE and quantized.q_scale.shape == (batch, tokens, heads)
    assert quantized.k.shape == (batch, padded, heads, head_dim)
    assert quantized.v_t.shape == (batch, heads, head_dim, padded)
    assert quantized.v_scale.shape == (batch, heads, padded // KEY_BLOCK)
    assert quantized.keys == tokens
    # Q: within half an int8 step of each row (the softmax scale and log2 e are in the scale)
    softmax = 1.4426950408889634 / head_dim**0.5
    step = quantized.q_scale.unsqueeze(-1) / softmax  # [B, L, H, 1]
    assert (quantized.q.float() * step - q).abs().le(step / 2 + 1e-6).all()
    assert quantized.q.abs().amax(dim=-1).eq(int(INT8_MAX)).all()
    # K: smoothed (the shared offset is gone), zero rows past the real keys
    smoothed = quantized.k[:, :tokens].float() * quantized.k_scale[:, :tokens].unsqueeze(-1)
    assert smoothed.mean(dim=1).abs().max() < 0.05
    assert rel_err(smoothed, k - k.mean(dim=1, keepdim=True)) < 1e-2
    assert quantized.k[:, tokens:].eq(0).all() and quantized.v_t[..., tokens:].float().eq(0).all()
    # V: e4m3 per block of keys, within e4m3's relative step
    v_back = quantized.v_t.float() * quantized.v_scale.repeat_interleave(KEY_BLOCK, -1)[:, :, None]
    assert rel_err(v_back[..., :tokens].permute(0, 3, 1, 2), v) < 0.04


def test_twin_tracks_exact_attention_and_ignores_a_shared_key_offset() -> None:
    q, k, v = qkv(1)
    reference = exact(q, k, v)
    out = attention_8bit(q, k, v)
    assert out.shape == SHAPE and out.dtype == v.dtype
    error = rel_err(out, reference)
    assert 1e-3 < error < 5e-2  # quantised (not exact), and close
    shifted = attention_8bit(q, k + 5.0, v)  # the same softmax: the offset is smoothed away
    assert rel_err(shifted, out) < 1e-2
    # a kernel key block of 64 (half a scale block): the same maths, P rounded against
    # another running maximum
    quantized = quantize_qkv(q, k, v)
    assert rel_err(reference_attention(quantized, block=64), out) < 2e-2
    with pytest.raises(ValueError, match="must divide"):
        reference_attention(quantized, block=96)


def test_bf16_input_returns_bf16() -> None:
    q, k, v = (t.to(torch.bfloat16) for t in qkv(2, (1, 130, 2, 32)))
    out = attention_8bit(q, k, v)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, exact(q.float(), k.float(), v.float())) < 5e-2


def test_speed_options_switch_self_attention_and_bf16_attention_restores_it() -> None:
    config = DiTConfig.tiny()
    dit = FlashTalkDiT(config)
    for block in dit.blocks:
        prepare_dit_block(block, SpeedOptions(attention_8bit=True))
    layers = [block.self_attn for block in dit.blocks]
    assert all(isinstance(layer, SelfAttention) and layer.use_8bit for layer in layers)
    with bf16_attention(dit.blocks):
        assert not any(layer.use_8bit for layer in layers)
    assert all(layer.use_8bit for layer in layers)


def test_self_attention_in_8_bits_tracks_bf16() -> None:
    from headcast.pipeline.rope import rope_cos_sin

    torch.manual_seed(0)
    layer = SelfAttention(128, 2, qk_norm=True, eps=1e-6)
    cos, sin = rope_cos_sin((2, 6, 8), 64)
    x = torch.randn(1, 96, 128)
    with torch.no_grad():
        plain = layer(x, cos, sin)
        layer.use_8bit = True
        low = layer(x, cos, sin)
    assert 1e-4 < rel_err(low, plain) < 5e-2


def test_bench_flag_reaches_the_speed_options() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--attention-8bit"])
    assert bench.resolve_options(args, torch.device("cpu")).attention_8bit
    args = parser.parse_args([])
    assert not bench.resolve_options(args, torch.device("cpu")).attention_8bit

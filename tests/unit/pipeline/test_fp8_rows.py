"""The fused fp8 inputs of a block's linears (``pipeline.fp8_rows``) on CPU: the reference
maths are the unfused block's, ``Float8Linear`` takes the rows as it takes a tensor, and an
OmniAvatar block with fused inputs computes exactly what it computes without them.

The Triton kernels need a GPU: tests/gpu/test_fp8_rows.py checks them against these
references.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headcast.pipeline.dit import BLOCK_MODULATION_TERMS, LayerNormF32
from headcast.pipeline.fp8_rows import (
    adaln_quantize_rows,
    adaln_reference,
    add_adaln_quantize_rows,
    gelu_quantize_rows,
    gelu_reference,
    row_split,
)
from headcast.pipeline.omniavatar.config import omni_size
from headcast.pipeline.omniavatar.dit import T2VBlock
from headcast.pipeline.quantize import Float8Linear, Fp8Rows
from headcast.pipeline.random_weights import init_random_
from headcast.pipeline.rope import rope_cos_sin
from headcast.pipeline.speedups import SpeedOptions, prepare_dit_block

DIM = 96


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("width", "head", "tail"),
    [
        (5120, 4096, 1024),  # 14B model width: both blocks full
        (1536, 1024, 512),  # 1.3B model width
        (8960, 8192, 1024),  # 1.3B FFN: 768 of the tail's 1024 lanes used
        (13824, 8192, 8192),  # 14B FFN
        (1000, 512, 512),
        (64, 64, 0),  # a power of two: no tail
        (1, 1, 0),
    ],
)
def test_a_row_is_two_power_of_two_blocks_that_cover_it(width: int, head: int, tail: int) -> None:
    assert row_split(width) == (head, tail)
    assert head <= width <= head + tail or (tail == 0 and head == width)
    assert tail == 0 or width - head > tail // 2  # the smallest tail that covers the rest


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_references_are_the_unfused_block_maths(dtype: torch.dtype) -> None:
    x = (2 * randn(2, 7, DIM) + 1).to(dtype)
    shift, scale = 0.2 * randn(2, 1, DIM, seed=1), 0.2 * randn(2, 1, DIM, seed=2)
    plain = LayerNormF32(DIM, 1e-6, elementwise_affine=False)
    affine = LayerNormF32(DIM, 1e-6, elementwise_affine=True)
    with torch.no_grad():
        affine.weight.normal_(1.0, 0.1)
        affine.bias.normal_(0.0, 0.1)
        modulated = (plain(x).float() * (1 + scale) + shift).to(dtype)
        assert torch.equal(adaln_reference(x, shift, scale, None, None, 1e-6), modulated)
        normed = adaln_reference(x, None, None, affine.weight, affine.bias, 1e-6)
        assert torch.equal(normed, affine(x))
        assert torch.equal(gelu_reference(x), nn.GELU(approximate="tanh")(x))


def test_rows_dequantise_to_the_reference_within_e4m3() -> None:
    x = randn(2, 7, DIM)
    shift, scale = 0.2 * randn(2, 1, DIM, seed=1), 0.2 * randn(2, 1, DIM, seed=2)
    rows = adaln_quantize_rows(x, shift, scale, None, None, 1e-6)
    assert rows.data.dtype == torch.float8_e4m3fn and rows.data.shape == (14, DIM)
    assert rows.scale.shape == (14, 1) and rows.lead == (2, 7) and rows.dtype == x.dtype
    dequantized = (rows.data.float() * rows.scale).reshape(2, 7, DIM)
    assert rel_err(dequantized, adaln_reference(x, shift, scale, None, None, 1e-6)) < 0.04
    gelu = gelu_quantize_rows(x)
    assert gelu.lead == (2, 7)
    assert rel_err((gelu.data.float() * gelu.scale).reshape(2, 7, DIM), gelu_reference(x)) < 0.04


def test_the_residual_comes_first_gated_in_float32_or_plain() -> None:
    x, delta = randn(2, 7, DIM).bfloat16(), randn(2, 7, DIM, seed=1).bfloat16()
    gate = randn(2, 1, DIM, seed=2)
    added, rows = add_adaln_quantize_rows(x, delta, gate, None, None, None, None, 1e-6)
    assert torch.equal(added, (x + delta * gate).to(torch.bfloat16))
    assert torch.equal(rows.data, adaln_quantize_rows(added, None, None, None, None, 1e-6).data)
    plain, _ = add_adaln_quantize_rows(x, delta, None, None, None, None, None, 1e-6)
    assert torch.equal(plain, x + delta)


def test_a_half_given_pair_is_refused() -> None:
    x = randn(1, 3, DIM)
    with pytest.raises(ValueError, match="shift with scale"):
        adaln_quantize_rows(x, randn(1, 1, DIM), None, None, None, 1e-6)
    with pytest.raises(ValueError, match="weight with bias"):
        adaln_quantize_rows(x, None, None, torch.ones(DIM), None, 1e-6)


def test_float8_linear_takes_rows_as_it_takes_a_tensor() -> None:
    linear = Float8Linear.from_linear(nn.Linear(DIM, 32))
    x = randn(2, 5, DIM)
    with torch.no_grad():
        assert torch.equal(linear(Fp8Rows.quantize(x)), linear(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_block_with_fused_inputs_computes_the_same(dtype: torch.dtype) -> None:
    config = omni_size("tiny").dit
    block = T2VBlock(config)
    init_random_(block, seed=0)
    with torch.no_grad():
        block.modulation.normal_(0.0, 0.1)
        block.norm3.weight.normal_(1.0, 0.1)
        block.norm3.bias.normal_(0.0, 0.1)
    prepare_dit_block(block, SpeedOptions(quantize="fp8"))
    assert block.fp8_inputs
    block = block.to(dtype)
    grid = (3, 4, 4)
    x = randn(2, 48, config.dim).to(dtype)
    t_mod = 0.1 * randn(2, BLOCK_MODULATION_TERMS, config.dim, seed=1)
    context = randn(2, config.text_len, config.dim, seed=2).to(dtype)
    cos, sin = rope_cos_sin(grid, config.head_dim)
    with torch.no_grad():
        fused = block(x, t_mod, context, cos, sin)
        block.fp8_inputs = False
        unfused = block(x, t_mod, context, cos, sin)
    assert torch.equal(fused, unfused)
    assert not torch.equal(fused, x)  # the block did change the stream


def test_fused_inputs_come_with_fp8_linears_only() -> None:
    block = T2VBlock(omni_size("tiny").dit)
    prepare_dit_block(block, SpeedOptions())
    assert not block.fp8_inputs

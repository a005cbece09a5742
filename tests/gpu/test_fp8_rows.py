"""GPU correctness of the fused fp8 row producers (``pipeline.fp8_rows``'s Triton kernels).

Each kernel against the reference maths quantised the unfused way, on row widths that are
not powers of two (5,120 and 13,824 as in the 14B, and odd small ones), with and without
the modulation and the affine norm; and a compiled OmniAvatar block with fused inputs
against the same block quantising each linear's input itself (with bf16 attention, and with
fp8 attention, whose e4m3 output the fp8 output projection reads directly). Opt-in
(tests/gpu).
"""

from __future__ import annotations

import pytest
import torch

from headcast.pipeline.attention_fp8 import fp8_attention_problem
from headcast.pipeline.dit import BLOCK_MODULATION_TERMS
from headcast.pipeline.fp8_rows import (
    adaln_quantize_rows,
    adaln_reference,
    add_adaln_quantize_rows,
    gelu_quantize_rows,
    gelu_reference,
)
from headcast.pipeline.omniavatar.config import OmniDiTConfig
from headcast.pipeline.omniavatar.dit import T2VBlock
from headcast.pipeline.quantize import Fp8Rows
from headcast.pipeline.random_weights import init_random_
from headcast.pipeline.rope import rope_cos_sin
from headcast.pipeline.speedups import SpeedOptions, prepare_dit_block

DEVICE = torch.device("cuda")
SAME_CODE_FRACTION = 0.999
"""e4m3 codes equal to the unfused path's: the kernel's float32 statistics (and its GELU
through one exp) can move a value across a rounding boundary, rarely."""
DEQUANT_TOL = 2e-3
"""Relative difference of the dequantised rows (a moved code is one e4m3 step of 6 %)."""
NO_WORSE = 1.5
"""The compiled block with fused inputs may differ from the eager unfused block at most this
many times as much as the compiled unfused block does (compilation alone moves bf16
roundings, and so some e4m3 codes: about 4 % of the block's update on random weights)."""


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def dequantized(rows: Fp8Rows) -> torch.Tensor:
    return rows.data.float() * rows.scale


def assert_rows_match(fused: Fp8Rows, unfused: Fp8Rows) -> None:
    assert fused.data.shape == unfused.data.shape and fused.lead == unfused.lead
    assert fused.dtype == unfused.dtype
    same = (fused.data.view(torch.uint8) == unfused.data.view(torch.uint8)).float().mean()
    assert float(same) >= SAME_CODE_FRACTION
    torch.testing.assert_close(fused.scale, unfused.scale, rtol=1e-3, atol=0.0)
    assert rel_err(dequantized(fused), dequantized(unfused)) < DEQUANT_TOL


@pytest.fixture(autouse=True)
def _cuda_here() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.parametrize("dim", [5120, 1000])
@pytest.mark.parametrize("modulate", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_adaln_kernel_matches_the_unfused_maths(dim: int, modulate: bool, affine: bool) -> None:
    generator = torch.Generator(device=DEVICE).manual_seed(dim)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, device=DEVICE, generator=generator)

    x = (3.0 * randn(2, 777, dim) + 0.5).bfloat16()
    shift, scale = (0.3 * randn(2, 1, dim), 0.3 * randn(2, 1, dim)) if modulate else (None, None)
    weight, bias = (1 + 0.2 * randn(dim), 0.2 * randn(dim)) if affine else (None, None)
    fused = adaln_quantize_rows(x, shift, scale, weight, bias, 1e-6)
    unfused = Fp8Rows.quantize(adaln_reference(x, shift, scale, weight, bias, 1e-6))
    assert_rows_match(fused, unfused)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("modulate", [True, False])
def test_residual_kernel_adds_then_matches_the_unfused_maths(gated: bool, modulate: bool) -> None:
    dim = 5120
    generator = torch.Generator(device=DEVICE).manual_seed(7)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, device=DEVICE, generator=generator)

    x = (3.0 * randn(2, 333, dim)).bfloat16()
    delta = randn(2, 333, dim).bfloat16()
    gate = 0.5 * randn(2, 1, dim) if gated else None
    shift, scale = (0.3 * randn(2, 1, dim), 0.3 * randn(2, 1, dim)) if modulate else (None, None)
    weight, bias = (None, None) if modulate else (1 + 0.2 * randn(dim), 0.2 * randn(dim))
    added, fused = add_adaln_quantize_rows(x, delta, gate, shift, scale, weight, bias, 1e-6)
    expected = x + delta if gate is None else (x + delta * gate).to(x.dtype)
    same = (added == expected).float().mean()
    assert float(same) >= SAME_CODE_FRACTION  # a fused multiply-add may round once less
    torch.testing.assert_close(added, expected, rtol=8e-3, atol=0.0)
    unfused = Fp8Rows.quantize(adaln_reference(added, shift, scale, weight, bias, 1e-6))
    assert_rows_match(fused, unfused)


@pytest.mark.parametrize("width", [13824, 8960, 333])
def test_gelu_kernel_matches_the_unfused_maths(width: int) -> None:
    generator = torch.Generator(device=DEVICE).manual_seed(width)
    h = (2.0 * torch.randn((2, 501, width), device=DEVICE, generator=generator)).bfloat16()
    assert_rows_match(gelu_quantize_rows(h), Fp8Rows.quantize(gelu_reference(h)))


@pytest.mark.parametrize("attention_fp8", [False, True])
def test_compiled_block_with_fused_inputs_tracks_the_unfused_block(attention_fp8: bool) -> None:
    if attention_fp8 and (problem := fp8_attention_problem(DEVICE)) is not None:
        pytest.skip(problem)
    config = OmniDiTConfig(dim=512, ffn_dim=1536, num_heads=4, num_layers=4)
    block = T2VBlock(config).to(DEVICE)
    init_random_(block, seed=0)
    with torch.no_grad():
        block.modulation.normal_(0.0, 0.1)
    block = block.to(torch.bfloat16)
    prepare_dit_block(block, SpeedOptions(quantize="fp8", attention_fp8=attention_fp8))
    assert block.fp8_inputs
    grid = (3, 6, 10)
    tokens = grid[0] * grid[1] * grid[2]
    x = torch.randn(2, tokens, config.dim, device=DEVICE).bfloat16()
    t_mod = 0.1 * torch.randn(2, BLOCK_MODULATION_TERMS, config.dim, device=DEVICE)
    context = torch.randn(2, config.text_len, config.dim, device=DEVICE).bfloat16()
    cos, sin = rope_cos_sin(grid, config.head_dim, device=DEVICE)
    compiled = torch.compile(block, dynamic=False)
    with torch.no_grad():
        fused = compiled(x, t_mod, context, cos, sin)
        block.fp8_inputs = False
        compiled_unfused = compiled(x, t_mod, context, cos, sin)  # recompiles: a new flag
        eager_unfused = block(x, t_mod, context, cos, sin)
    assert fused.dtype == torch.bfloat16
    update = eager_unfused - x  # what the block adds to the stream
    fused_err = rel_err(fused - x, update)
    compiled_err = rel_err(compiled_unfused - x, update)
    assert fused_err < NO_WORSE * compiled_err + 1e-3, (fused_err, compiled_err)

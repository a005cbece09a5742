"""The fp8 self-attention's inputs on CPU (``pipeline.attention_fp8_inputs``).

Off CUDA ``norm_rope_quantize`` runs the unfused maths; these tests pin that the fp8
self-attention routed through it computes exactly what it computed before (norm, rotation,
``quantize_fp8``, the kernel's twin), that strided chunks of one projection are read right, and that
``rms_norm`` is the RMSNorm. The Triton kernels are checked on the GPU
(tests/gpu/test_attention_fp8_inputs.py).
"""

from __future__ import annotations

import pytest
import torch

from headcast.pipeline.attention_fp8 import attend_fp8, attend_fp8_rows, quantize_fp8
from headcast.pipeline.attention_fp8_inputs import norm_rope_quantize, rms_norm
from headcast.pipeline.dit import SelfAttention
from headcast.pipeline.quantize import Float8Linear
from headcast.pipeline.rope import apply_rope, rope_cos_sin

GRID = (2, 6, 8)
DIM, HEADS = 128, 2


def test_rms_norm_is_the_float64_formula() -> None:
    torch.manual_seed(0)
    x, weight = 3 * torch.randn(4, 7, 96), 1 + 0.1 * torch.randn(96)
    x64 = x.double()
    expected = x64 / x64.pow(2).mean(dim=-1, keepdim=True).add(1e-6).sqrt() * weight.double()
    torch.testing.assert_close(rms_norm(x, weight, 1e-6).double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fp8_output_projection", [False, True])
def test_fp8_self_attention_is_the_unfused_maths(
    dtype: torch.dtype, fp8_output_projection: bool
) -> None:
    torch.manual_seed(1)
    layer = SelfAttention(DIM, HEADS, qk_norm=True, eps=1e-6)
    layer.fuse_projections()
    layer = layer.to(dtype)
    if fp8_output_projection:
        layer.o = Float8Linear.from_linear(layer.o)
    layer.use_fp8 = True
    cos, sin = rope_cos_sin(GRID, DIM // HEADS)
    x = torch.randn(2, GRID[0] * GRID[1] * GRID[2], DIM).to(dtype)
    with torch.no_grad():
        got = layer(x, cos, sin)
        assert layer.qkv is not None
        q, k, v = layer.qkv(x).chunk(3, dim=-1)
        split = (HEADS, -1)
        q = apply_rope(layer.norm_q(q).unflatten(-1, split), cos, sin)
        k = apply_rope(layer.norm_k(k).unflatten(-1, split), cos, sin)
        quantized = quantize_fp8(q, k, v.unflatten(-1, split))
        if fp8_output_projection:  # the e4m3 output as the kernel wrote it
            expected = layer.o(attend_fp8_rows(quantized, dtype))
        else:
            expected = layer.o(attend_fp8(quantized, dtype).flatten(2))
    assert got.dtype == dtype
    assert torch.equal(got, expected)


def test_strided_chunks_are_read_as_their_rows() -> None:
    torch.manual_seed(2)
    tokens = GRID[0] * GRID[1] * GRID[2]
    qkv = (torch.randn(2, tokens, 3 * DIM) + 0.5).bfloat16()
    q, k, v = qkv.chunk(3, dim=-1)
    weights = (1 + 0.1 * torch.randn(DIM)).bfloat16(), (1 + 0.1 * torch.randn(DIM)).bfloat16()
    cos, sin = rope_cos_sin(GRID, DIM // HEADS)
    strided = norm_rope_quantize(q, k, v, *weights, 1e-6, cos, sin, HEADS)
    copies = (t.contiguous() for t in (q, k, v))
    contiguous = norm_rope_quantize(*copies, *weights, 1e-6, cos, sin, HEADS)
    for got, want in zip(strided, contiguous, strict=True):
        assert torch.equal(got.float(), want.float())
    k_rope = apply_rope(rms_norm(k, weights[1], 1e-6).unflatten(-1, (HEADS, -1)), cos, sin)
    smoothed = quantize_fp8(k_rope, k_rope, k_rope).k8.float()
    assert torch.equal(strided.k8.float(), smoothed)  # K minus its mean over the tokens

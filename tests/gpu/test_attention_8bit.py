"""GPU correctness of the 8-bit attention kernel (``pipeline.attention_8bit``).

The Triton kernel against its PyTorch twin (the same quantised maths in float32) and
against bf16 attention, on shapes with a partial last key block, several heads and a
batch of two; and the kernel inside a compiled DiT self-attention. Opt-in (tests/gpu).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from headcast.pipeline.attention_8bit import (
    _kernel,
    attention_8bit,
    quantize_qkv,
    reference_attention,
)

DEVICE = torch.device("cuda")
TWIN_TOL = 1e-2
"""Kernel vs twin: the same quantised operands; only summation order and the rounding of
P near e4m3 steps differ."""
BF16_TOL = 6e-2
"""8-bit vs bf16 attention on random data: int8 Q/K and e4m3 V/P give ~3.5 %."""


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)  # [B, L, H, D]


@pytest.mark.parametrize(
    ("batch", "tokens", "heads", "head_dim"),
    [(1, 128, 1, 128), (2, 1000, 3, 128), (1, 4133, 2, 64), (2, 3037, 5, 128)],
)
def test_kernel_matches_its_twin_and_bf16(
    batch: int, tokens: int, heads: int, head_dim: int
) -> None:
    generator = torch.Generator(device=DEVICE).manual_seed(tokens)
    shape = (batch, tokens, heads, head_dim)
    q, k, v = (
        torch.randn(shape, device=DEVICE, generator=generator, dtype=torch.bfloat16)
        for _ in range(3)
    )
    k = k + 2.0  # a shared key offset: the smoothing takes it out
    out = attention_8bit(q, k, v)
    assert out.shape == shape and out.dtype == torch.bfloat16
    block = _kernel().best_config.kwargs["BLOCK_N"]  # the autotuned key block
    twin = reference_attention(quantize_qkv(q.cpu(), k.cpu(), v.cpu()), block).to(DEVICE)
    assert rel_err(out, twin) < TWIN_TOL
    assert rel_err(out, bf16_attention(q, k, v)) < BF16_TOL


def test_compiled_self_attention_uses_the_kernel() -> None:
    from headcast.pipeline.dit import SelfAttention
    from headcast.pipeline.rope import rope_cos_sin

    dim, heads = 512, 4
    layer = SelfAttention(dim, heads, qk_norm=True, eps=1e-6).to(DEVICE, torch.bfloat16)
    grid = (3, 8, 12)
    cos, sin = rope_cos_sin(grid, dim // heads, device=DEVICE)
    x = torch.randn(2, 288, dim, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        plain = layer(x, cos, sin)
        layer.use_8bit = True
        compiled = torch.compile(layer)(x, cos, sin)
    assert rel_err(compiled, plain) < BF16_TOL
    assert rel_err(compiled, plain) > 1e-4  # the 8-bit path ran, not bf16

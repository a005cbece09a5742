"""GPU correctness of the fp8 self-attention's fused inputs (``pipeline.attention_fp8_inputs``).

Its three Triton kernels against the unfused maths run by PyTorch on the same GPU (qk
RMSNorm, RoPE, ``quantize_fp8`` with K smoothed): the strided chunks of one QKV projection
as the block passes them, keys with a shared offset (what the smoothing removes), token
counts that are multiples of neither the tiles nor the statistics chunk, the 14B's width
(40 heads of 128) and small ones; and the op's fake implementation and its use under
``torch.compile`` (``opcheck``). Opt-in (tests/gpu).
"""

from __future__ import annotations

import pytest
import torch

from headcast.pipeline.attention_fp8 import QuantizedQKV, quantize_fp8
from headcast.pipeline.attention_fp8_inputs import norm_rope_quantize, rms_norm
from headcast.pipeline.rope import apply_rope, rope_cos_sin

DEVICE = torch.device("cuda")
SAME_CODE_FRACTION = 0.999
"""e4m3 codes equal to the unfused path's: the kernels' float32 sums (1/rms, K's mean) run in
another order, which can move a value across a rounding boundary, rarely."""
SCALE_RTOL = 1e-3
"""The per-tensor descales (absolute maxima are exact; K's mean is a float32 sum)."""


@pytest.fixture(autouse=True)
def _cuda_here() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


def inputs(
    batch: int, grid: tuple[int, int, int], heads: int, head_dim: int
) -> tuple[torch.Tensor, ...]:
    """q, k, v (chunks of one ``[B, L, 3 dim]`` projection), the two norm gains, cos, sin."""
    generator = torch.Generator(device=DEVICE).manual_seed(grid[0] * 1000 + heads)
    dim = heads * head_dim

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, device=DEVICE, generator=generator)

    tokens = grid[0] * grid[1] * grid[2]
    offset = 0.8 * randn(3 * dim)  # a per-channel offset every token shares
    qkv = (2.0 * randn(batch, tokens, 3 * dim) + offset).bfloat16()
    q, k, v = qkv.chunk(3, dim=-1)  # each [B, L, dim], rows 3 dim apart
    q_weight, k_weight = ((1 + 0.2 * randn(dim)).bfloat16() for _ in range(2))
    cos, sin = rope_cos_sin(grid, head_dim, device=DEVICE)
    return q, k, v, q_weight, k_weight, cos, sin


def unfused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
) -> QuantizedQKV:
    """The block's unfused maths, as separate PyTorch ops."""
    split = (heads, -1)
    q_rope = apply_rope(rms_norm(q, q_weight, 1e-6).unflatten(-1, split), cos, sin)
    k_rope = apply_rope(rms_norm(k, k_weight, 1e-6).unflatten(-1, split), cos, sin)
    return quantize_fp8(q_rope, k_rope, v.unflatten(-1, split))


@pytest.mark.parametrize(
    ("batch", "grid", "heads", "head_dim"),
    [(2, (3, 21, 25), 40, 128), (1, (7, 11, 1), 3, 64), (2, (4, 10, 15), 2, 16)],
)
def test_kernels_match_the_unfused_maths(
    batch: int, grid: tuple[int, int, int], heads: int, head_dim: int
) -> None:
    q, k, v, q_weight, k_weight, cos, sin = inputs(batch, grid, heads, head_dim)
    fused = norm_rope_quantize(q, k, v, q_weight, k_weight, 1e-6, cos, sin, heads)
    reference = unfused(q, k, v, q_weight, k_weight, cos, sin, heads)
    for name in ("q8", "k8", "v8"):
        got, want = getattr(fused, name), getattr(reference, name)
        assert got.shape == want.shape and got.dtype == want.dtype == torch.float8_e4m3fn
        same = (got.view(torch.uint8) == want.view(torch.uint8)).float().mean()
        assert float(same) >= SAME_CODE_FRACTION, (name, float(same))
    for name in ("descale_q", "descale_k", "descale_v"):
        got, want = getattr(fused, name), getattr(reference, name)
        assert got.shape == (1, 1, 1, 1)
        torch.testing.assert_close(got, want, rtol=SCALE_RTOL, atol=0.0)


def test_contiguous_and_strided_inputs_give_the_same_codes() -> None:
    q, k, v, q_weight, k_weight, cos, sin = inputs(2, (3, 6, 10), 4, 128)
    strided = norm_rope_quantize(q, k, v, q_weight, k_weight, 1e-6, cos, sin, 4)
    copies = (t.contiguous() for t in (q, k, v))
    contiguous = norm_rope_quantize(*copies, q_weight, k_weight, 1e-6, cos, sin, 4)
    for got, want in zip(strided, contiguous, strict=True):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_the_op_checks_out_for_compilation() -> None:
    q, k, v, q_weight, k_weight, cos, sin = inputs(2, (2, 5, 7), 3, 64)
    args = (q, k, v, q_weight, k_weight, 1e-6, cos, sin, 3)
    torch.library.opcheck(
        torch.ops.headcast.norm_rope_quantize.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )

"""GPU correctness of the fast paths: each computes what the plain bf16 path computes.

fp8 linears against their float32 emulation and bf16, fused projections, cuDNN attention,
a compiled block, the channels-last VAE and its Triton norm + SiLU kernel, bf16 against
float32 at full width, and the CUDA event timer. Relative errors are ‖out − ref‖ / ‖ref‖ on fresh
random inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from headcast.pipeline.attention import sdpa_backends
from headcast.pipeline.dit import DiTBlock, DiTConfig, FlashTalkDiT
from headcast.pipeline.quantize import Float8Linear, scaled_mm_supported
from headcast.pipeline.random_weights import init_random_
from headcast.pipeline.rope import rope_cos_sin
from headcast.pipeline.timing import CudaStageTimer
from headcast.pipeline.vae import VAEConfig, WanVAE
from headcast.pipeline.vae_blocks import rms_norm_silu
from headcast.pipeline.vae_kernels import norm_silu

DEVICE = torch.device("cuda")
BF16_TOL = 1e-2
"""bf16 operands: relative errors land between 1e-3 and 1e-2."""
FP8_TOL = 8e-2
"""e4m3 operands (3 mantissa bits) against bf16."""
FULL = DiTConfig.flashtalk_14b()
SMALL_GRID = (3, 8, 12)
"""Latent frames x token rows x token columns of the block checks (288 tokens)."""


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def _block(config: DiTConfig, seed: int, dtype: torch.dtype = torch.bfloat16) -> DiTBlock:
    with torch.device("meta"):
        block = DiTBlock(config)
    block = block.to(dtype).to_empty(device=DEVICE)
    init_random_(block, seed)
    return block.eval().requires_grad_(False)


def _block_inputs(config: DiTConfig, seed: int) -> tuple:
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    frames, rows, cols = SMALL_GRID
    tokens = frames * rows * cols

    def randn(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=DEVICE, dtype=dtype)

    x = randn(1, tokens, config.dim)
    e0 = randn(1, 6, config.dim, dtype=torch.float32) * 0.1
    context = randn(1, 257 + 64, config.dim)
    audio = randn(frames, config.context_tokens, config.output_dim)
    rope = rope_cos_sin(SMALL_GRID, config.head_dim, device=DEVICE)
    return x, e0, context, audio, rope, frames


@torch.no_grad()
def test_fp8_linear_matches_its_emulation_and_tracks_bf16() -> None:
    if not scaled_mm_supported(DEVICE):
        pytest.skip("no fp8 tensor cores on this GPU")
    torch.manual_seed(0)
    linear = nn.Linear(FULL.dim, FULL.ffn_dim, device=DEVICE, dtype=torch.bfloat16)
    x = torch.randn(2, 1000, FULL.dim, device=DEVICE, dtype=torch.bfloat16)
    fp8 = Float8Linear.from_linear(linear)
    assert fp8.use_scaled_mm
    emulated = copy.deepcopy(fp8)
    emulated.use_scaled_mm = False
    out = fp8(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1000, FULL.ffn_dim)
    assert torch.isfinite(out).all()
    assert rel_err(out, emulated(x)) < BF16_TOL
    assert rel_err(out, linear(x)) < FP8_TOL


@torch.no_grad()
def test_fused_projections_match_separate_ones_at_full_width() -> None:
    block = _block(FULL, seed=1)
    inputs = _block_inputs(FULL, seed=2)
    reference = block(*inputs)
    block.self_attn.fuse_projections()
    block.cross_attn.fuse_projections()
    assert block.self_attn.qkv is not None and not hasattr(block.self_attn, "q")
    assert rel_err(block(*inputs), reference) < BF16_TOL


@pytest.mark.parametrize(
    ("batch", "queries", "keys"),
    [(1, 12096, 12096), (1, 12096, 512), (1, 12096, 257), (9, 1344, 32)],
    ids=["self", "text", "image", "audio"],
)
@torch.no_grad()
def test_cudnn_attention_matches_float32_math(batch: int, queries: int, keys: int) -> None:
    generator = torch.Generator(device=DEVICE).manual_seed(queries + keys)
    shape_q = (batch, FULL.num_heads, queries, FULL.head_dim)
    shape_k = (batch, FULL.num_heads, keys, FULL.head_dim)
    q = torch.randn(shape_q, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(shape_k, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn(shape_k, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    rows = slice(0, 2048)  # float32 reference on the first queries (memory)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, rows].float(), k.float(), v.float()
    )
    with sdpa_backends("cudnn"):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert rel_err(out[:, :, rows], ref) < BF16_TOL


@torch.no_grad()
def test_compiled_block_matches_eager() -> None:
    config = DiTConfig.tiny()
    block = _block(config, seed=3)
    inputs = _block_inputs(config, seed=4)
    reference = block(*inputs)
    compiled = torch.compile(block, dynamic=False)
    assert rel_err(compiled(*inputs), reference) < BF16_TOL


@torch.no_grad()
def test_bf16_full_width_layers_track_float32() -> None:
    config = DiTConfig(**{**FULL.__dict__, "num_layers": 2})
    with torch.device("meta"):
        model = FlashTalkDiT(config)
    model = model.to_empty(device=DEVICE)
    init_random_(model, seed=5)
    model.eval().requires_grad_(False)
    frames, rows, cols = SMALL_GRID
    generator = torch.Generator(device=DEVICE).manual_seed(6)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=DEVICE)

    args = (
        randn(1, 16, frames, 2 * rows, 2 * cols),
        torch.full((1,), 937.5, device=DEVICE),
        randn(1, 32, config.text_dim),
        randn(1, 257, 1280),
        randn(1, 20, frames, 2 * rows, 2 * cols),
        randn(1, 1 + 4 * (frames - 1), 5, 12, 768),
    )
    reference = model(*args)
    bf16 = model.to(torch.bfloat16)
    for name in ("time_embedding", "time_projection", "head"):
        getattr(bf16, name).float()
    assert rel_err(bf16(*args), reference) < 2 * BF16_TOL


@torch.no_grad()
def test_channels_last_vae_decode_is_as_close_to_float32_as_the_default_layout() -> None:
    with torch.device("meta"):
        vae = WanVAE(VAEConfig.wan21())
    vae = vae.to_empty(device=DEVICE)
    init_random_(vae, seed=7)
    latents = torch.randn(1, 16, 3, 16, 24, device=DEVICE)
    reference = vae.decode(latents)  # float32
    vae = vae.to(torch.bfloat16)
    default_error = rel_err(vae.decode(latents), reference)
    out = vae.to_channels_last().decode(latents)
    assert out.shape == reference.shape == (1, 3, 9, 128, 192)
    # bf16 through ~30 random conv layers: each layout is about 1 % off float32, by rounding
    channels_last_error = rel_err(out, reference)
    assert default_error < 3 * BF16_TOL and channels_last_error < 3 * BF16_TOL
    assert channels_last_error < 1.5 * default_error + 1e-3
    assert vae.fuse_norms(norm_silu) > 0
    fused_error = rel_err(vae.decode(latents), reference)
    assert fused_error < 1.5 * default_error + 1e-3


@pytest.mark.parametrize("channels", [96, 192, 384])
@torch.no_grad()
def test_triton_norm_silu_matches_the_reference(channels: int) -> None:
    x = torch.randn(1, channels, 4, 40, 56, device=DEVICE, dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    gain = torch.rand(channels, 1, 1, 1, device=DEVICE) + 0.5
    out = norm_silu(x, gain)
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and out.dtype == x.dtype
    reference = torch.nn.functional.silu(torch.nn.functional.normalize(x.float(), dim=1) * gain)
    assert rel_err(out, reference) < BF16_TOL
    assert rel_err(out, rms_norm_silu(x, gain)) < BF16_TOL


def test_cuda_stage_timer_reads_event_times() -> None:
    a = torch.randn(4096, 4096, device=DEVICE)
    timer = CudaStageTimer(DEVICE)
    timer.start()
    for _ in range(10):
        a = a @ a.T / 4096
    timer.mark("matmuls")
    timer.mark("nothing")
    stages = timer.read()
    assert list(stages) == ["matmuls", "nothing"]
    assert stages["matmuls"] > 0.0
    assert 0.0 <= stages["nothing"] < stages["matmuls"]

"""Micro-benchmarks that attribute the chunk's time: GEMM ceilings, attention kernels,
fused vs separate projections, fp8 vs bf16 linears, VAE decode layouts.

Run on the GPU machine (see benchmarks/README.md): ``python3 benchmarks/micro.py --json
OUT.json``. Prints a markdown table; every number is the median of CUDA-event timings after
warm-up, on random data (never zeros). Shapes are the 14B model's at 768x448 (12,096 tokens).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from headcast.pipeline.attention import sdpa_backends
from headcast.pipeline.config import preset
from headcast.pipeline.quantize import Float8Linear
from headcast.pipeline.random_weights import init_random_
from headcast.pipeline.vae import WanVAE
from headcast.pipeline.vae_kernels import norm_silu

logger = logging.getLogger("micro")

DEVICE = torch.device("cuda")
TERA = 1e12
CEILING_SIZE = 8192
"""Square matrix size of the matmul ceiling measurements."""
WARMUP = 3
REPEAT = 10
VAE_REPEAT = 5


def time_cuda(fn: Callable[[], object], warmup: int = WARMUP, repeat: int = REPEAT) -> float:
    """Median seconds of ``fn()`` between CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return statistics.median(times)


def randn(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(shape, device=DEVICE, dtype=dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


@torch.no_grad()
def ceilings(rows: list[dict]) -> None:
    n = CEILING_SIZE
    a, b = randn(n, n), randn(n, n)
    seconds = time_cuda(lambda: a @ b)
    rows.append({"what": f"bf16 matmul {n}^3", "s": seconds, "tflops": 2 * n**3 / seconds / TERA})
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    sa = torch.ones(n, 1, device=DEVICE)
    sb = torch.ones(1, n, device=DEVICE)
    seconds = time_cuda(
        lambda: torch._scaled_mm(
            a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=True
        )
    )
    rows.append({"what": f"fp8 row-wise scaled_mm {n}^3", "s": seconds,
                 "tflops": 2 * n**3 / seconds / TERA})  # fmt: skip
    x = randn(1 << 30)  # 2 GiB
    seconds = time_cuda(lambda: x.clone())
    rows.append({"what": "device copy 2 GiB (read+write)", "s": seconds,
                 "tb_per_s": 2 * x.numel() * 2 / seconds / TERA})  # fmt: skip


@torch.no_grad()
def attention(rows: list[dict], tokens: int, dim: int, heads: int) -> None:
    head_dim = dim // heads
    q, k, v = (randn(1, tokens, heads, head_dim).transpose(1, 2) for _ in range(3))
    flops = 4 * tokens * tokens * dim
    reference = None
    for name in ("flash", "cudnn", "efficient"):
        with sdpa_backends(name):
            try:
                out = F.scaled_dot_product_attention(q, k, v)
                seconds = time_cuda(lambda: F.scaled_dot_product_attention(q, k, v))
            except RuntimeError as exc:  # a backend that refuses the shape
                rows.append({"what": f"self-attention {name}", "error": str(exc)[:200]})
                continue
        reference = out if reference is None else reference
        rows.append({"what": f"self-attention {name} ({tokens} tokens)", "s": seconds,
                     "tflops": flops / seconds / TERA,
                     "rel_err_vs_flash": rel_err(out, reference)})  # fmt: skip


@torch.no_grad()
def projections(rows: list[dict], tokens: int, dim: int, ffn: int) -> None:
    x = randn(tokens, dim)
    wq, wk, wv = randn(dim, dim), randn(dim, dim), randn(dim, dim)
    bias = randn(dim)
    fused_w, fused_b = torch.cat([wq, wk, wv]), torch.cat([bias] * 3)
    separate = time_cuda(lambda: [F.linear(x, w, bias) for w in (wq, wk, wv)])
    fused = time_cuda(lambda: F.linear(x, fused_w, fused_b))
    flops = 3 * 2 * tokens * dim * dim
    rows.append({"what": "q,k,v as 3 GEMMs", "s": separate, "tflops": flops / separate / TERA})
    rows.append({"what": "qkv as 1 fused GEMM", "s": fused, "tflops": flops / fused / TERA})
    for name, (k_in, n_out) in {
        "ffn up": (dim, ffn),
        "ffn down": (ffn, dim),
        "o": (dim, dim),
    }.items():
        linear = torch.nn.Linear(k_in, n_out, device=DEVICE, dtype=torch.bfloat16)
        inputs = randn(tokens, k_in)
        fp8 = Float8Linear.from_linear(linear)
        flops = 2 * tokens * k_in * n_out
        bf16_s = time_cuda(lambda linear=linear, inputs=inputs: linear(inputs))
        fp8_s = time_cuda(lambda fp8=fp8, inputs=inputs: fp8(inputs))
        err = rel_err(fp8(inputs), linear(inputs))
        rows.append({"what": f"{name} bf16 [{tokens}x{k_in}]x[{k_in}x{n_out}]", "s": bf16_s,
                     "tflops": flops / bf16_s / TERA})  # fmt: skip
        rows.append({"what": f"{name} fp8 eager (incl. activation quantisation)", "s": fp8_s,
                     "tflops": flops / fp8_s / TERA, "rel_err_vs_bf16": err})  # fmt: skip


@torch.no_grad()
def vae_decode(rows: list[dict]) -> None:
    config = preset("flashtalk-14b")
    with torch.device("meta"):
        vae = WanVAE(config.vae)
    vae = vae.to(torch.bfloat16).to_empty(device=DEVICE)
    init_random_(vae, seed=0)
    vae.eval()
    latents = torch.randn(1, 16, config.latent_frames, config.latent_height, config.latent_width,
                          device=DEVICE)  # fmt: skip
    reference = vae.decode(latents)
    variants = (("default layout", False, False), ("channels-last", True, False),
                ("default layout + cudnn.benchmark", False, True),
                ("channels-last + cudnn.benchmark", True, True))  # fmt: skip
    for name, channels_last, benchmark in variants:
        torch.backends.cudnn.benchmark = benchmark
        if channels_last and not vae.channels_last:
            vae.to_channels_last()
        out = vae.decode(latents)
        seconds = time_cuda(lambda: vae.decode(latents), warmup=2, repeat=VAE_REPEAT)
        rows.append({"what": f"VAE decode 33 frames, {name}", "s": seconds,
                     "rel_err_vs_default": rel_err(out, reference)})  # fmt: skip
    torch.backends.cudnn.benchmark = False


PROFILE_TOP_KERNELS = 10
"""Kernels listed per profiled call, by device time."""


def profile_kernels(rows: list[dict], what: str, fn: Callable[[], object]) -> None:
    """Device time per kernel of one ``fn()`` call (after a warm-up call), largest first."""
    fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    total = sum(e.device_time_total for e in events)
    rows.append({"what": f"profile {what}: all kernels", "s": total / 1e6,
                 "kernels": len(events)})  # fmt: skip
    for event in sorted(events, key=lambda e: -e.device_time_total)[:PROFILE_TOP_KERNELS]:
        rows.append({"what": f"  {event.key[:90]}", "s": event.device_time_total / 1e6,
                     "share": event.device_time_total / total, "calls": event.count})  # fmt: skip


@torch.no_grad()
def profiles(rows: list[dict]) -> None:
    """Where one VAE decode and one DiT block (eager, cuDNN attention) spend device time."""
    from headcast.pipeline.dit import DiTBlock
    from headcast.pipeline.rope import rope_cos_sin

    config = preset("flashtalk-14b")
    with torch.device("meta"):
        vae = WanVAE(config.vae)
        block = DiTBlock(config.dit)
    vae = vae.to(torch.bfloat16).to_empty(device=DEVICE)
    init_random_(vae, seed=0)
    vae.eval().to_channels_last()
    vae.fuse_norms(norm_silu)
    torch.backends.cudnn.benchmark = True
    grid = (config.latent_frames, config.latent_height, config.latent_width)
    latents = torch.randn(1, 16, *grid, device=DEVICE)
    profile_kernels(
        rows,
        "VAE decode (channels-last, cudnn.benchmark, Triton norm+SiLU)",
        lambda: vae.decode(latents),
    )
    block = block.to(torch.bfloat16).to_empty(device=DEVICE)
    init_random_(block, seed=1)
    dit = config.dit
    token_grid = (grid[0], grid[1] // 2, grid[2] // 2)
    tokens = grid[0] * token_grid[1] * token_grid[2]
    inputs = (
        randn(1, tokens, dit.dim),
        randn(1, 6, dit.dim, dtype=torch.float32) * 0.1,
        randn(1, 257 + dit.text_len, dit.dim),
        randn(grid[0], dit.context_tokens, dit.output_dim),
        rope_cos_sin(token_grid, dit.head_dim, device=DEVICE),
        grid[0],
    )
    with sdpa_backends("cudnn"):
        profile_kernels(rows, "one DiT block, eager, cuDNN attention", lambda: block(*inputs))
        compiled = torch.compile(block, dynamic=False)
        profile_kernels(rows, "one DiT block, compiled, cuDNN attention", lambda: compiled(*inputs))
    torch.backends.cudnn.benchmark = False


@torch.no_grad()
def quantized_linear_errors(rows: list[dict], tokens: int, dim: int, ffn: int) -> None:
    """Relative error of one quantised FFN-up linear against bf16, per mode, and its time."""
    from headcast.pipeline.quantize import QuantizeUnavailable, quantize_block

    inputs = randn(tokens, dim)
    reference_layer = torch.nn.Linear(dim, ffn, device=DEVICE, dtype=torch.bfloat16)
    reference = reference_layer(inputs)
    flops = 2 * tokens * dim * ffn
    for mode in ("fp8", "int8", "int4", "nf4"):
        holder = torch.nn.Module()
        holder.ffn = torch.nn.Sequential(
            torch.nn.Linear(dim, ffn, device=DEVICE, dtype=torch.bfloat16)
        )
        holder.ffn[0].load_state_dict(reference_layer.state_dict())
        try:
            quantize_block(holder, mode)
        except (QuantizeUnavailable, RuntimeError, ImportError) as exc:
            rows.append({"what": f"ffn up {mode}", "error": str(exc)[:160]})
            continue
        layer = holder.ffn[0]
        seconds = time_cuda(lambda layer=layer: layer(inputs))
        rows.append({"what": f"ffn up {mode} eager [{tokens}x{dim}]x[{dim}x{ffn}]", "s": seconds,
                     "tflops": flops / seconds / TERA,
                     "rel_err_vs_bf16": rel_err(layer(inputs), reference)})  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| what | median s | TFLOP/s | note |", "|---|---|---|---|"]
    for row in rows:
        rate = row.get("tflops", row.get("tb_per_s"))
        note = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in row.items() if k not in {"what", "s", "tflops"})  # fmt: skip
        seconds = f"{row['s']:.5f}" if "s" in row else "-"
        lines.append(
            f"| {row['what']} | {seconds} | {'-' if rate is None else f'{rate:.0f}'} | {note} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-vae", action="store_true", help="skip the VAE layout timings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    cfg = preset("flashtalk-14b")
    tokens = cfg.latent_frames * (cfg.latent_height // 2) * (cfg.latent_width // 2)
    rows: list[dict] = []
    for step in (
        ceilings,
        lambda r: attention(r, tokens, cfg.dit.dim, cfg.dit.num_heads),
        lambda r: projections(r, tokens, cfg.dit.dim, cfg.dit.ffn_dim),
        *(() if args.skip_vae else (vae_decode,)),
        profiles,
        lambda r: quantized_linear_errors(r, tokens, cfg.dit.dim, cfg.dit.ffn_dim),
    ):
        step(rows)
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(DEVICE), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    sys.stdout.write(f"micro-benchmarks on {meta}\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

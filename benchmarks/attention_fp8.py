"""Speed and error of cuDNN's fp8 attention against its bf16 attention, at the 14B's shapes.

Run on the GPU machine (benchmarks/README.md): ``python3 benchmarks/attention_fp8.py --json
OUT.json``. For each shape (the 14B DiT's self-attention, 40 heads of 128: OmniAvatar's
official segment at 400x720 with both guidance passes batched, its fast preset's segment,
one of two sequence-parallel ranks, and FlashTalk's chunk at 768x448) it times, with CUDA
events after warm-up: cuDNN bf16 SDPA; the fp8 kernel alone on quantised operands; and
quantisation plus kernel compiled as one function (what a compiled DiT block runs). TFLOP/s
are at the bf16 FLOP count (4 B H L^2 D); the error is against bf16 attention on random data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from headcast.pipeline.attention import sdpa_backends
from headcast.pipeline.attention_fp8 import attention_fp8, quantize_fp8
from headcast.pipeline.bench_checks import relative_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from micro import time_cuda  # the benchmarks' shared CUDA-event timer

logger = logging.getLogger("attention_fp8")

SHAPES = {
    # name: (batch, tokens, heads, head_dim)
    "omniavatar-14b official segment, 2 passes": (2, 30375, 40, 128),
    "omniavatar-14b fast segment, 2 passes": (2, 20250, 40, 128),
    "omniavatar-14b official, one of 2 sequence-parallel ranks": (2, 30375, 20, 128),
    "flashtalk-14b chunk, 768x448": (1, 12096, 40, 128),
}


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)  # [B, L, H, D]


def measure(name: str, shape: tuple[int, int, int, int]) -> dict[str, object]:
    batch, tokens, heads, head_dim = shape
    flops = 4.0 * batch * heads * tokens * tokens * head_dim
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_backends("cudnn"):
        reference = sdpa(q, k, v)
        cudnn_s = time_cuda(lambda: sdpa(q, k, v))
    quantized = quantize_fp8(q, k, v)
    kernel_s = time_cuda(lambda: torch.ops.headcast.cudnn_fp8_attention(*quantized))
    compiled = torch.compile(attention_fp8, dynamic=False)
    whole_s = time_cuda(lambda: compiled(q, k, v))
    row = {
        "shape": name,
        "batch_tokens_heads_dim": list(shape),
        "cudnn_bf16_ms": cudnn_s * 1e3,
        "fp8_kernel_ms": kernel_s * 1e3,
        "fp8_compiled_ms": whole_s * 1e3,
        "cudnn_bf16_tflops": flops / cudnn_s / 1e12,
        "fp8_kernel_tflops": flops / kernel_s / 1e12,
        "fp8_compiled_tflops": flops / whole_s / 1e12,
        "speedup_compiled_vs_bf16": cudnn_s / whole_s,
        "rel_err_vs_bf16": relative_error(compiled(q, k, v), reference),
    }
    logger.info("%s", row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [measure(name, shape) for name, shape in SHAPES.items()]
    lines = [
        "| shape (B, L, H, D) | cuDNN bf16 ms (TFLOP/s) | fp8 kernel ms (TFLOP/s) | fp8 with "
        "its quantisation, compiled ms (TFLOP/s) | speed-up | error vs bf16 |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['shape']} {tuple(row['batch_tokens_heads_dim'])} "  # type: ignore[arg-type]
            f"| {row['cudnn_bf16_ms']:.1f} ({row['cudnn_bf16_tflops']:.0f}) "
            f"| {row['fp8_kernel_ms']:.1f} ({row['fp8_kernel_tflops']:.0f}) "
            f"| {row['fp8_compiled_ms']:.1f} ({row['fp8_compiled_tflops']:.0f}) "
            f"| {row['speedup_compiled_vs_bf16']:.2f}x | {row['rel_err_vs_bf16']:.1e} |"
        )
    table = "\n".join(lines)
    sys.stdout.write(table + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()

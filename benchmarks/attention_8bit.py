"""Speed and error of the 8-bit self-attention kernel against cuDNN's bf16 attention.

Run on the GPU machine (benchmarks/README.md): ``python3 benchmarks/attention_8bit.py --json
OUT.json``. For each shape (the 14B DiT's self-attention: 40 heads of 128; OmniAvatar's
official segment at 400x720 with both guidance passes batched, its fast preset's segment,
and FlashTalk's chunk at 768x448) it times, with CUDA events after warm-up: cuDNN bf16 SDPA,
the 8-bit kernel alone on quantised operands, and quantisation plus kernel compiled as one
function (what a compiled DiT block runs). It reports TFLOP/s at the bf16 FLOP count (4 B H
L^2 D), the error against bf16 attention on random data, and the autotuned tile.
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
from headcast.pipeline.attention_8bit import _kernel, attention_8bit, quantize_qkv
from headcast.pipeline.bench_checks import relative_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from micro import time_cuda  # the benchmarks' shared CUDA-event timer

logger = logging.getLogger("attention_8bit")

SHAPES = {
    # name: (batch, tokens, heads, head_dim)
    "omniavatar-14b-official (2 passes, 105 frames, 400x720)": (2, 30375, 40, 128),
    "omniavatar-14b-fast (2 passes, 69 frames)": (2, 20250, 40, 128),
    "omniavatar-14b-official, one of 2 sequence-parallel ranks": (2, 30375, 20, 128),
    "flashtalk-14b (768x448 chunk)": (1, 12096, 40, 128),
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
    quantized = quantize_qkv(q, k, v)
    tensors = (quantized.q, quantized.q_scale, quantized.k, quantized.k_scale)
    tensors += (quantized.v_t, quantized.v_scale)
    kernel_s = time_cuda(lambda: torch.ops.headcast.attention_8bit(*tensors, quantized.keys))
    compiled = torch.compile(attention_8bit, dynamic=False)
    whole_s = time_cuda(lambda: compiled(q, k, v))
    eager_s = time_cuda(lambda: attention_8bit(q, k, v))
    error = relative_error(compiled(q, k, v), reference)
    best = getattr(_kernel(), "best_config", None)
    row = {
        "shape": name,
        "batch_tokens_heads_dim": list(shape),
        "cudnn_bf16_ms": cudnn_s * 1e3,
        "kernel_8bit_ms": kernel_s * 1e3,
        "compiled_8bit_ms": whole_s * 1e3,
        "eager_8bit_ms": eager_s * 1e3,
        "cudnn_tflops": flops / cudnn_s / 1e12,
        "kernel_tflops": flops / kernel_s / 1e12,
        "compiled_tflops": flops / whole_s / 1e12,
        "speedup_compiled_vs_cudnn": cudnn_s / whole_s,
        "rel_err_vs_bf16": error,
        "best_config": str(best),
    }
    logger.info("%s", row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [measure(name, shape) for name, shape in SHAPES.items()]
    header = (
        "| shape | cuDNN bf16 ms (TFLOP/s) | 8-bit kernel ms (TFLOP/s) | 8-bit with "
        "quantisation, compiled ms (TFLOP/s) | eager ms | speed-up | error vs bf16 | tile |"
    )
    lines = [header, "|" + "---|" * 8]
    for row in rows:
        lines.append(
            f"| {row['shape']} | {row['cudnn_bf16_ms']:.1f} ({row['cudnn_tflops']:.0f}) "
            f"| {row['kernel_8bit_ms']:.1f} ({row['kernel_tflops']:.0f}) "
            f"| {row['compiled_8bit_ms']:.1f} ({row['compiled_tflops']:.0f}) "
            f"| {row['eager_8bit_ms']:.1f} | {row['speedup_compiled_vs_cudnn']:.2f}x "
            f"| {row['rel_err_vs_bf16']:.1e} | {row['best_config']} |"
        )
    table = "\n".join(lines)
    sys.stdout.write(table + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()

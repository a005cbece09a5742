"""Where one compiled OmniAvatar DiT block spends its time, kernel by kernel.

Run on the GPU machine (benchmarks/README.md): ``python3 benchmarks/omni_block_profile.py
--json OUT.json [--size 14b] [--quantize fp8] [--attention-fp8] [--grid 27 25 45]
[--batch 2]``. Builds one T2V block of the chosen size with random weights (bf16 on the GPU),
prepares it as the bench does (fp8 linears, fp8 self-attention), compiles it, times it with
CUDA events (median of ``--repeat`` after warm-up) and records ``--profiled`` forwards with
``torch.profiler``. Prints the kernels by GPU time per forward, grouped into GEMMs,
attention kernels (self- and cross-attention), Inductor's fused kernels (elementwise work,
norms, quantisation) and the rest, and how much of each forward the GPU was busy. The
default shape is the 14B official segment at 400x720 with both guidance passes batched
(2 x 30,375 tokens), where section 7 of BENCHMARKS.md left 17 ms per block unaccounted for.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from headcast.pipeline.attention import sdpa_backends
from headcast.pipeline.dit import BLOCK_MODULATION_TERMS
from headcast.pipeline.omniavatar.config import omni_size
from headcast.pipeline.omniavatar.dit import T2VBlock
from headcast.pipeline.random_weights import init_random_
from headcast.pipeline.rope import rope_cos_sin
from headcast.pipeline.speedups import SpeedOptions, prepare_dit_block

sys.path.insert(0, str(Path(__file__).resolve().parent))
from micro import time_cuda  # the benchmarks' shared CUDA-event timer

logger = logging.getLogger("omni_block_profile")

GROUPS = ("gemm", "attention", "fused (Inductor)", "rest")


def kernel_group(name: str) -> str:
    """The group of a CUDA kernel, from its name."""
    lowered = name.lower()
    if lowered.startswith("triton_"):  # named after every op it fuses, GEMMs' included
        return "fused (Inductor)"
    if any(word in lowered for word in ("fmha", "flash", "sdpa", "attention", "attn")):
        return "attention"
    if any(word in lowered for word in ("gemm", "nvjet", "cutlass", "sm90_xmma", "scaled_mm")):
        return "gemm"
    return "rest"


def build_block(args: argparse.Namespace, device: torch.device) -> T2VBlock:
    """One randomly initialised block of ``args.size``, prepared and compiled as the bench does."""
    config = omni_size(args.size).dit
    with torch.device("meta"):
        block = T2VBlock(config)
    block = block.to(torch.bfloat16).to_empty(device=device)
    init_random_(block, seed=0)
    with torch.no_grad():
        block.modulation.normal_(0.0, 0.05)  # zero modulation would hide the AdaLN terms
    options = SpeedOptions(quantize=args.quantize, attention_fp8=args.attention_fp8)
    prepare_dit_block(block, options)
    if args.unfused_fp8_inputs:
        block.fp8_inputs = False
    if args.compile:
        block.compile(dynamic=False)
    return block


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="14b")
    parser.add_argument("--quantize", default="fp8")
    parser.add_argument("--attention-fp8", action="store_true")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--grid", type=int, nargs=3, default=(27, 25, 45))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--profiled", type=int, default=3)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--unfused-fp8-inputs",
        action="store_true",
        help="each fp8 linear quantises its own input (not pipeline.fp8_rows's fused kernels)",
    )
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    config = omni_size(args.size).dit
    device = torch.device(args.device)
    block = build_block(args, device)
    tokens = args.grid[0] * args.grid[1] * args.grid[2]
    x = torch.randn(args.batch, tokens, config.dim, device=device, dtype=torch.bfloat16)
    t_mod = 0.05 * torch.randn(args.batch, BLOCK_MODULATION_TERMS, config.dim, device=device)
    context = torch.randn(args.batch, config.text_len, config.dim, device=device).bfloat16()
    cos, sin = rope_cos_sin(tuple(args.grid), config.head_dim, device=device)

    def forward() -> torch.Tensor:
        out: torch.Tensor = block(x, t_mod, context, cos, sin)
        return out

    with sdpa_backends("cudnn"):
        if device.type == "cuda":
            seconds = time_cuda(forward, warmup=3, repeat=args.repeat)
        else:  # the dry run: wall time
            forward()
            start = time.perf_counter()
            forward()
            seconds = time.perf_counter() - start
        activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
        with profile(activities=[activity]) as prof:
            for _ in range(args.profiled):
                forward()
            if device.type == "cuda":
                torch.cuda.synchronize()

    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # name -> [us, calls]
    for event in prof.key_averages():
        spent = event.device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if event.device_type.name != activity.name or spent <= 0:
            continue
        per_kernel[event.key][0] += spent / args.profiled
        per_kernel[event.key][1] += event.count / args.profiled
    spans = sorted(
        (event.time_range.start, event.time_range.end)
        for event in prof.events()
        if event.device_type.name == activity.name and event.time_range.end > event.time_range.start
    )
    busy_us, reach = 0.0, float("-inf")
    for start, end in spans:  # the union of the kernels' time ranges
        busy_us += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    window_ms = (spans[-1][1] - spans[0][0]) / 1e3 / args.profiled if spans else 0.0
    groups = dict.fromkeys(GROUPS, 0.0)
    for name, (us, _) in per_kernel.items():
        groups[kernel_group(name)] += us
    kernel_ms = sum(groups.values()) / 1e3
    lines = [
        f"block {args.size}, grid {tuple(args.grid)} x batch {args.batch} ({args.batch * tokens} "
        f"tokens), quantize {args.quantize}, fp8 attention {args.attention_fp8}, "
        f"fused fp8 inputs {block.fp8_inputs}, compiled {args.compile}: "
        f"{seconds * 1e3:.2f} ms per forward (CUDA events), "
        f"{kernel_ms:.2f} ms of kernels (profiler); GPU busy {busy_us / 1e3 / args.profiled:.2f} "
        f"of {window_ms:.2f} ms per forward between the first and last kernel",
        "",
        "| group | ms per forward | share |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {us / 1e3:.2f} | {us / 1e3 / kernel_ms:.1%} |" for g, us in groups.items()]
    lines += ["", "| kernel | group | ms per forward | calls |", "|---|---|---|---|"]
    ranked = sorted(per_kernel.items(), key=lambda item: -item[1][0])
    for name, (us, calls) in ranked[: args.top]:
        lines.append(f"| `{name[:110]}` | {kernel_group(name)} | {us / 1e3:.3f} | {calls:.0f} |")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {
                        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    },
                    "device": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else "cpu",
                    "torch": torch.__version__,
                    "forward_ms": seconds * 1e3,
                    "groups_ms": {g: us / 1e3 for g, us in groups.items()},
                    "busy_ms": busy_us / 1e3 / args.profiled,
                    "window_ms": window_ms,
                    "kernels": [
                        {"name": n, "group": kernel_group(n), "ms": us / 1e3, "calls": c}
                        for n, (us, c) in ranked
                    ],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# Device call (nvidia-h200): the opt-in GPU correctness checks and the micro-benchmarks
# (matmul/fp8 ceilings, attention kernels, fused vs separate projections, fp8 linears,
# VAE layouts, kernel profiles of a VAE decode and a DiT block).
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_checks.sh")
source benchmarks/common.sh
HEADCAST_GPU_TESTS=1 timeout 200 python3 -m pytest tests/gpu -q -p no:cacheprovider \
    >"$OUT/gpu_tests.log" 2>&1
tail -3 "$OUT/gpu_tests.log"
timeout "$((DEADLINE - SECONDS))" python3 benchmarks/micro.py --json "$OUT/micro.json" >>"$LOG" 2>&1
grep -A80 "^micro-benchmarks" "$LOG" | tee -a "$OUT/summary.md"

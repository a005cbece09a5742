#!/usr/bin/env bash
# Device call (nvidia-h200): GPU checks, micro-benchmarks (kernel profiles of the VAE decode
# and of a DiT block eager and compiled, per-mode error and speed of one quantised linear),
# then the weight-only memory modes: bitsandbytes nf4 and quanto int4 under a 24 GiB cap,
# quanto int8.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_memory.sh")
source benchmarks/common.sh
HEADCAST_GPU_TESTS=1 timeout 200 python3 -m pytest tests/gpu -q -p no:cacheprovider \
    >"$OUT/gpu_tests.log" 2>&1
tail -3 "$OUT/gpu_tests.log" | tee -a "$OUT/summary.md"
timeout 150 python3 benchmarks/micro.py --skip-vae --json "$OUT/micro.json" >>"$LOG" 2>&1
grep -A80 "^micro-benchmarks" "$LOG" | tee -a "$OUT/summary.md"
bench nf4-eager-24gib --quantize nf4 --memory-limit-gib 24
bench int8-eager --quantize int8
bench int4-eager-24gib --quantize int4 --memory-limit-gib 24
cat "$OUT/summary.md"

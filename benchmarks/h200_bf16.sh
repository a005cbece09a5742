#!/usr/bin/env bash
# Device call (nvidia-h200): the bf16 chunk before and after the speed-ups, then fp8:
# official settings eager, fast eager (cuDNN attention, channels-last VAE, cuDNN autotune),
# fast eager with fused projections, fast compiled, fp8 compiled.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_bf16.sh")
source benchmarks/common.sh
bench official-eager --baseline --save-reference /tmp/reference.pt
bench fast-eager --compare-reference /tmp/reference.pt
bench fast-compiled --compile --compare-reference /tmp/reference.pt
bench fp8-compiled --quantize fp8 --compile --compare-reference /tmp/reference.pt
bench fast-eager-fused --fuse --compare-reference /tmp/reference.pt
left=$((DEADLINE - SECONDS))
((left > 30)) && timeout "$left" python3 benchmarks/micro.py --skip-vae --json "$OUT/micro.json" >>"$LOG" 2>&1
grep -A80 "^micro-benchmarks" "$LOG" >>"$OUT/summary.md"
cat "$OUT/summary.md"

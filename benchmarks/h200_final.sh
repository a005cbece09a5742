#!/usr/bin/env bash
# Device call (nvidia-h200): the final code. GPU checks (incl. the Triton VAE norm kernel),
# compiled bf16 and fp8 with consistency checks, eager bf16, the realtime-1gpu profile
# (configs/realtime-1gpu.yaml: fp8, 2 steps, 640x368), then kernel profiles. SM clock and
# power are sampled during each bench run.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_final.sh")
source benchmarks/common.sh
HEADCAST_GPU_TESTS=1 timeout 200 python3 -m pytest tests/gpu -q -p no:cacheprovider \
    >"$OUT/gpu_tests.log" 2>&1
tail -3 "$OUT/gpu_tests.log" | tee -a "$OUT/summary.md"
bench bf16-compiled --compile --save-reference /tmp/reference.pt --self-check --float32-check
bench fp8-compiled --quantize fp8 --compile --compare-reference /tmp/reference.pt --self-check
bench realtime-1gpu --quantize fp8 --compile --steps 2 --height 640 --width 368
bench bf16-eager --compare-reference /tmp/reference.pt
grep "clock while busy\|=== bench" "$LOG" >>"$OUT/summary.md"
left=$((DEADLINE - SECONDS))
((left > 40)) && timeout "$left" python3 benchmarks/micro.py --skip-vae --json "$OUT/micro.json" >>"$LOG" 2>&1
grep -A80 "^micro-benchmarks" "$LOG" >>"$OUT/summary.md"
cat "$OUT/summary.md"

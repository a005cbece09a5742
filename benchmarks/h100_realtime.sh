#!/usr/bin/env bash
# Device call (nvidia-h100-x1): the realtime-1gpu profile on an H100 (same compute as the
# H200, 80 GB of slower memory), its smaller-frame fallback, and the compiled fp8 chunk at
# the official size for comparison with the H200 figures.
#   run(kind="nvidia-h100-x1", carry=[".whl"], command="bash benchmarks/h100_realtime.sh")
source benchmarks/common.sh
bench h100-realtime-1gpu --quantize fp8 --compile --steps 2 --height 640 --width 368
bench h100-fp8-2steps-576x336 --quantize fp8 --compile --steps 2 --height 576 --width 336
bench h100-fp8-compiled --quantize fp8 --compile
grep "clock while busy\|=== bench" "$LOG" >>"$OUT/summary.md"
cat "$OUT/summary.md"

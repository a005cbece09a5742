#!/usr/bin/env bash
# Device call (nvidia-h200): the compiled bf16 and fp8 chunk with their consistency checks
# (own eager path, float32 copy of the weights, fp8 against bf16 on the same inputs), eager
# bf16 with the same code, and the realtime-1gpu candidates (fp8, 2 steps, smaller frames).
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_fast.sh")
source benchmarks/common.sh
bench bf16-compiled --compile --save-reference /tmp/reference.pt --self-check --float32-check
bench fp8-compiled --quantize fp8 --compile --compare-reference /tmp/reference.pt --self-check
bench bf16-eager --compare-reference /tmp/reference.pt
bench rt-fp8-2steps-768x448 --quantize fp8 --compile --steps 2
bench rt-fp8-2steps-640x368 --quantize fp8 --compile --steps 2 --height 640 --width 368
bench rt-fp8-2steps-576x336 --quantize fp8 --compile --steps 2 --height 576 --width 336
cat "$OUT/summary.md"

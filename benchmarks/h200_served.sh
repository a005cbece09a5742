#!/usr/bin/env bash
# Device call (nvidia-h200): the server end to end on a GPU. `headcast serve` runs the
# realtime-1gpu profile with random full-size weights (--random-weights: the real model's
# speed, noise pictures), then the load driver on the same host asks for 2 sessions of 30 s
# (the profile admits 1): received fps and stalls per session, the server's per-chunk RTF,
# A/V skew and /metrics, GPU clock and power while streaming, and the shutdown.
#   carry .whl/ holding the serving stack as cp312 wheels (benchmarks/README.md), then
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_served.sh")
source benchmarks/serve_common.sh
served realtime-1gpu "${SESSIONS:-2}" "${DURATION:-30}" configs/realtime-1gpu.yaml --random-weights

#!/usr/bin/env bash
# Device call (nvidia-h200-x2): the server end to end on two GPUs (issue 9), random full-size
# weights, the load driver on the same host:
#   1. realtime-2gpu: one engine group of 2 GPUs (sequence parallel over NCCL), 4 steps; one
#      session of 60 s (received fps, first frame, per-chunk RTF), a second gets 429;
#   2. pool mode: the realtime-1gpu settings on both GPUs with gpus_per_session 1 (two
#      groups of one GPU): three sessions asked for, two served at once, the third 429.
#   carry .whl/ holding the serving stack (benchmarks/README.md), then
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash benchmarks/h200x2_served.sh")
source benchmarks/serve_common.sh
served realtime-2gpu 2 60 configs/realtime-2gpu.yaml --random-weights
HEADCAST_GPUS=0,1 HEADCAST_GPUS_PER_SESSION=1 served pool-1gpu 3 30 configs/realtime-1gpu.yaml --random-weights

#!/usr/bin/env bash
# Device call (nvidia-h200, about 4 min): the 14B at the official recipe (50 steps, guidance
# 4.5 in two passes, 105-frame segments, 400x720, tiled VAE), compiled, guidance batched, in
# bf16 and with fp8 linears, the VAE warmed before it is timed: the rows to set against the
# official code's 98.6 min for 60 s of video (BENCHMARKS.md section 7; the official run is
# benchmarks/h200_omniavatar.sh, which needs the official checkout carried).
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_omniavatar_recipe.sh")
# FP8_ONLY=1: the fp8 run alone.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEADLINE=${DEADLINE:-420}
source benchmarks/common.sh
source benchmarks/omni_recipe.sh

recipe 14b-fp8 --quantize fp8
[[ -n $FP8_ONLY ]] || recipe 14b-bf16
cat "$SUMMARY"

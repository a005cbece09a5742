#!/usr/bin/env bash
# Device call (nvidia-h200, about 5 min): one compiled 14B OmniAvatar block with fp8 linears
# and fp8 attention at the official segment's shape (2 x 30,375 tokens), kernel by kernel
# (benchmarks/omni_block_profile.py): as the bench runs it, with Inductor's multi-kernel
# choice (which lets rows of up to 16,384 stay in registers: persistent reductions), with
# the FFN's tanh GELU written as x * sigmoid(2u), and both.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_block_profile.sh")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source benchmarks/setup.sh
profile_block() {  # profile_block LABEL FLAGS...
    local label=$1
    shift
    echo "=== $label: $* (TORCHINDUCTOR_MULTI_KERNEL=${TORCHINDUCTOR_MULTI_KERNEL:-0})" | tee -a "$LOG"
    timeout 200 python3 benchmarks/omni_block_profile.py --json "$OUT/$label.json" "$@" \
        >"$OUT/$label.md" 2>>"$LOG" || echo "$label failed (exit $?)" | tee -a "$LOG"
    head -${HEAD:-9} "$OUT/$label.md"
}
HEAD=30 profile_block fp8-attnfp8 --attention-fp8 --top 60
TORCHINDUCTOR_MULTI_KERNEL=1 HEAD=24 profile_block fp8-attnfp8-multikernel --attention-fp8 --top 60
profile_block fp8-attnfp8-gelusigmoid --attention-fp8 --gelu-sigmoid --top 60
TORCHINDUCTOR_MULTI_KERNEL=1 HEAD=24 profile_block fp8-attnfp8-both --attention-fp8 --gelu-sigmoid --top 60

#!/usr/bin/env bash
# Device call (nvidia-h200, about 5 min): one compiled 14B OmniAvatar block at the official
# segment's shape (2 x 30,375 tokens), kernel by kernel (benchmarks/omni_block_profile.py):
# fp8 linears with fp8 attention, then the same with Inductor's coordinate-descent tuning of
# its own kernels, then fp8 linears with bf16 attention.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_block_profile.sh")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source benchmarks/setup.sh
profile_block() {  # profile_block LABEL FLAGS...
    local label=$1
    shift
    echo "=== $label: $*" | tee -a "$LOG"
    timeout 200 python3 benchmarks/omni_block_profile.py --json "$OUT/$label.json" "$@" \
        >"$OUT/$label.md" 2>>"$LOG" || echo "$label failed (exit $?)" | tee -a "$LOG"
    head -12 "$OUT/$label.md"
}
profile_block fp8-attnfp8 --attention-fp8 --top 60
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 profile_block fp8-attnfp8-cdt --attention-fp8 --top 60
profile_block fp8-attnbf16 --top 60
sed -n 12,60p "$OUT/fp8-attnfp8.md"

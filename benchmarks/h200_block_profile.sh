#!/usr/bin/env bash
# Device call (nvidia-h200, about 7 min): the fused fp8 inputs (pipeline/fp8_rows.py) and the
# timed choice of cuDNN's fp8 attention plan (pipeline/attention_fp8.py) -- their GPU checks;
# one compiled 14B OmniAvatar block at the official segment's shape (2 x 30,375 tokens),
# kernel by kernel (benchmarks/omni_block_profile.py), with and without the fused inputs;
# then the 14B at the official recipe with fp8 linears and fp8 attention (RECIPE=0 skips it).
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_block_profile.sh")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEADLINE=${DEADLINE:-570}
source benchmarks/common.sh
HEADCAST_GPU_TESTS=1 timeout 200 python3 -m pytest tests/gpu/test_fp8_rows.py \
    tests/gpu/test_attention_fp8.py -q -p no:cacheprovider >"$OUT/gpu_tests.log" 2>&1
tail -4 "$OUT/gpu_tests.log"
profile_block() {  # profile_block LABEL FLAGS...
    local label=$1
    shift
    echo "=== $label: $*" | tee -a "$LOG"
    timeout 200 python3 benchmarks/omni_block_profile.py --json "$OUT/$label.json" "$@" \
        >"$OUT/$label.md" 2>>"$LOG" || echo "$label failed (exit $?)" | tee -a "$LOG"
    head -"${HEAD:-9}" "$OUT/$label.md" | cut -c1-160
}
HEAD=26 profile_block block-fused --attention-fp8 --top 60
profile_block block-unfused --attention-fp8 --unfused-fp8-inputs --top 60
grep "fp8 attention (" "$LOG" | cut -c1-200
[[ ${RECIPE:-1} == 0 ]] && exit 0
source benchmarks/omni_recipe.sh
recipe 14b-fp8-attnfp8 --quantize fp8 --attention-fp8
cat "$SUMMARY"

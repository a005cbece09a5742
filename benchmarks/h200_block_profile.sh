#!/usr/bin/env bash
# Device call (nvidia-h200, about 8 min): the fused fp8 inputs (pipeline/fp8_rows.py: norm,
# AdaLN and the residual before it, GELU; pipeline/attention_fp8_inputs.py: the queries' and
# keys' norm and RoPE and the per-tensor e4m3 of Q, K and V; Triton's autotuner choosing
# rows per program and warps) and the fp8 output projection reading the attention's e4m3
# output -- their GPU checks (GPU_TESTS: which files; PROFILE_ONLY=1: then only the fused
# block's profile, about 3 min, and with ATTENTION_MICRO=1 benchmarks/attention_fp8.py);
# the 14B at the official recipe with fp8 linears and fp8 attention; the official
# code at its own settings in the same call (carry .official, benchmarks/README.md;
# OFFICIAL=0 skips it); the recipe once more (REPEAT=0 skips it: how much the same run moves
# within a call); then, if time is left, one compiled 14B block at the official segment's
# shape (2 x 30,375 tokens) kernel by kernel (benchmarks/omni_block_profile.py), with and
# without the fused inputs.
#   run(kind="nvidia-h200", carry=[".whl", ".official"], command="bash benchmarks/h200_block_profile.sh")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TRITON_PRINT_AUTOTUNING=1  # the autotuner's choices go to the log
DEADLINE=${DEADLINE:-570}
source benchmarks/common.sh
GPU_TESTS=${GPU_TESTS:-tests/gpu/test_attention_fp8_inputs.py tests/gpu/test_fp8_rows.py \
tests/gpu/test_attention_fp8.py}
# shellcheck disable=SC2086  # a list of test files
gpu_tests $GPU_TESTS
if [[ ${PROFILE_ONLY:-0} == 1 ]]; then
    HEAD=40 profile_block block-fused --attention-fp8 --top 60
    grep -E "Triton autotuning|best config" "$LOG" | cut -c1-200 | sort -u | head -20
    if [[ ${ATTENTION_MICRO:-0} == 1 ]] && budget attention-micro; then
        timeout "$LEFT" python3 benchmarks/attention_fp8.py --json "$OUT/attention_fp8.json" \
            >"$OUT/attention_fp8.md" 2>>"$LOG"
        cat "$OUT/attention_fp8.md"
    fi
    exit 0
fi
source benchmarks/omni_recipe.sh
recipe 14b-fp8-attnfp8 --quantize fp8 --attention-fp8
if [[ ${OFFICIAL:-1} != 0 ]] && budget official-14b; then
    echo "=== official-14b (limit ${LEFT}s)" | tee -a "$LOG"
    timeout "$LEFT" python3 benchmarks/omniavatar_official.py --size 14b \
        --official .official/OmniAvatar --label official-14b --json /tmp/official-14b.jsonl \
        --video-seconds 60 --timed-steps 2 >/tmp/official-14b.md 2>>"$LOG" \
        || echo "| official-14b | failed (exit $?): see log.txt |" >>"$SUMMARY"
    [[ -f /tmp/official-14b.jsonl ]] && cat /tmp/official-14b.jsonl >>"$OUT/reports.jsonl"
    grep "^| " /tmp/official-14b.md | grep -v "^| run |" >>"$SUMMARY"
fi
[[ ${REPEAT:-1} != 0 ]] && recipe 14b-fp8-attnfp8-again --quantize fp8 --attention-fp8
cat "$SUMMARY"
grep -E "Triton autotuning|best config" "$LOG" | cut -c1-200 | sort -u | head -12
HEAD=22 profile_block block-fused --attention-fp8 --top 60
profile_block block-unfused --attention-fp8 --unfused-fp8-inputs --top 60

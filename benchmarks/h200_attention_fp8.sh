#!/usr/bin/env bash
# Device call (nvidia-h200, about 9 min): fp8 self-attention through cuDNN
# (pipeline/attention_fp8.py; carries the nvidia-cudnn-frontend wheel in .whl/) -- its GPU
# checks, its speed and error against cuDNN's bf16 attention at the 14B's shapes
# (benchmarks/attention_fp8.py), then the 14B OmniAvatar at the official recipe with it (fp8
# linears + fp8 attention, then bf16 linears + fp8 attention; STEPS_ONLY=1 stops after the
# kernel).
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_attention_fp8.sh")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEADLINE=${DEADLINE:-570}
source benchmarks/common.sh
HEADCAST_GPU_TESTS=1 timeout 240 python3 -m pytest tests/gpu/test_attention_fp8.py -q \
    -p no:cacheprovider >"$OUT/gpu_tests.log" 2>&1
tail -5 "$OUT/gpu_tests.log" | tee -a "$LOG"
timeout 240 python3 benchmarks/attention_fp8.py --json "$OUT/attention_fp8.json" \
    >"$OUT/attention_fp8.md" 2>>"$LOG" || echo "attention_fp8.py failed (exit $?)" | tee -a "$LOG"
cat "$OUT/attention_fp8.md"
[[ -n ${STEPS_ONLY:-} ]] && exit 0
grep -q "^| omniavatar" "$OUT/attention_fp8.md" || { echo "no kernel timings: recipe skipped" | tee -a "$LOG"; exit 0; }

source benchmarks/omni_recipe.sh
recipe 14b-fp8-attnfp8 --quantize fp8 --attention-fp8
recipe 14b-bf16-attnfp8 --attention-fp8
cat "$SUMMARY"

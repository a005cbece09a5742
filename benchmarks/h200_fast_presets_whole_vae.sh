#!/usr/bin/env bash
# Device call (nvidia-h200, about 6 min): the fast presets (1.3B: 15 steps, 53-frame
# segments; 14B: 20 steps, 69-frame segments; two passes batched, 400x720) with fp8 linears
# and fp8 attention and the VAE on whole frames: the fused kernels' GPU checks (GPU_TESTS),
# one compiled 1.3B block and one 14B block at the presets' shapes kernel by kernel
# (benchmarks/omni_block_profile.py), then the bench's fast case of each size, compiled.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_fast_presets_whole_vae.sh")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TRITON_PRINT_AUTOTUNING=1  # the autotuner's choices go to the log
DEADLINE=${DEADLINE:-560}
source benchmarks/common.sh
GPU_TESTS=${GPU_TESTS:-tests/gpu/test_fp8_rows.py tests/gpu/test_attention_fp8_inputs.py}
# shellcheck disable=SC2086  # a list of test files
gpu_tests $GPU_TESTS
HEAD=16 profile_block block-1.3b-fast --size 1.3b --grid 14 25 45 --attention-fp8 --top 40
HEAD=16 profile_block block-14b-fast --size 14b --grid 18 25 45 --attention-fp8 --top 40
grep -E "best config" "$LOG" | cut -c1-200 | sort -u | head -12
source benchmarks/omni_recipe.sh
recipe 1.3b-fast-wholevae --size 1.3b --quantize fp8 --attention-fp8 --case fast
recipe 14b-fast-wholevae --quantize fp8 --attention-fp8 --case fast
cat "$SUMMARY"

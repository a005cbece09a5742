#!/usr/bin/env bash
# Device call (nvidia-h200, about 4 min): the OmniAvatar fast presets on one GPU with fp8
# linears and fp8 attention (the current fused kernels), compiled, projected to 60 s of
# video: the 14B (20 steps, two passes batched, 20,000 tokens) and the 1.3B (15 steps,
# 15,000 tokens). TeaCache on random weights computes only the first and last step, so the
# figure to read is the DiT step; BENCHMARKS.md derives "every step computed" from it.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_fast_presets.sh")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEADLINE=${DEADLINE:-290}
source benchmarks/common.sh
source benchmarks/omni_recipe.sh
# recipe's flags are the official case of the 14B; the later --case and --size override them.
# --tiled-vae: the official tiles, as these figures were taken (2026-11-30); the presets
# decode whole frames since (benchmarks/h200_fast_presets_whole_vae.sh)
recipe 14b-fast-fp8-attnfp8 --quantize fp8 --attention-fp8 --case fast --tiled-vae
recipe 1.3b-fast-fp8-attnfp8 --size 1.3b --quantize fp8 --attention-fp8 --case fast --tiled-vae
cat "$SUMMARY"

#!/usr/bin/env bash
# Device call (nvidia-h200-x2): sequence-parallel FlashTalk on 2 GPUs (issue 9), 768x448,
# 4 steps, full-size random weights. The 2-GPU runs check the group against one GPU alone
# on the same weights and inputs (DiT velocity, decoded video, motion latents:
# --check-parallel) and take the 1-GPU run before them as their scaling reference; every
# report has the communication of a DiT step timed alone (comm) and each rank's share of
# the VAE work (flops). Last, the realtime-2gpu candidate: fp8, 4 steps, 640x368.
# pipeline.launch starts every rank with NVLink multicast off (NCCL_NVLS_ENABLE=0,
# TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1); exported here too.
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash benchmarks/h200x2_parallel.sh")
# TORCH_LOGS puts every graph break and recompile in log.txt: the parallel blocks must compile
# once per rank (the one expected recompile is rank 0's single-GPU path of --check-parallel).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCH_LOGS=graph_breaks,recompiles
source benchmarks/common.sh
{
    python3 -c "import torch; print('visible GPUs', torch.cuda.device_count())"
    nvidia-smi topo -m
} 2>&1 | tee -a "$LOG"
bench 1gpu-bf16-compiled --compile
bench 2gpu-bf16-compiled --compile --gpus 2 --check-parallel \
    --scaling-reference /tmp/1gpu-bf16-compiled.json
bench 1gpu-fp8-compiled --quantize fp8 --compile
bench 2gpu-fp8-compiled --quantize fp8 --compile --gpus 2 --check-parallel \
    --scaling-reference /tmp/1gpu-fp8-compiled.json
bench 2gpu-realtime-fp8-4steps-640x368 --quantize fp8 --compile --gpus 2 --height 640 --width 368
grep "clock while busy\|=== bench\|Recompiling\|Graph break" "$LOG" >>"$OUT/summary.md"
python3 - "$OUT/reports.jsonl" <<'PY' | tee -a "$OUT/summary.md"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['label']}: gpus {r.get('gpus', 1)} chunk {r['chunk_s']:.3f} s (RTF {r['rtf']:.2f}), "
          f"DiT step {r['dit_step_s']:.3f} s, VAE decode {r['stages_s']['vae_decode_s']:.3f} s, "
          f"motion {r['stages_s']['motion_encode_s']:.3f} s; comm {r.get('comm', {})}; "
          f"scaling {r.get('scaling', {})}; check {r.get('check', {})}")
PY
cat "$OUT/summary.md"

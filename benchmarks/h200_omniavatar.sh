#!/usr/bin/env bash
# Device call (nvidia-h200, <= 10 min): OmniAvatar, the official code against this code on the
# same GPU, random full-size weights. Every run times one segment (CUDA events) and projects
# it to a 60 s 400x720 video: seconds of compute per second of video and per step, the FLOP
# floor at the bf16 peak, the first segment, peak memory. Most important first:
#   1. official-14b: the official code (Omni-Avatar/OmniAvatar, carried in .official/) at its
#      own settings (configs/inference.yaml: 50 steps, two guidance passes, one forward each,
#      its SDPA fallback, VRAM management, tiled VAE): benchmarks/omniavatar_official.py
#   2. 14b-bf16: this code, 14B compiled bf16, guidance batched: official recipe, fast-14b
#   3. 1.3b-bf16: 1.3B compiled bf16: official, fast-1.3b and the two streaming candidates
#      (41-frame segments, 28 new = the 1.12 s chunk, 4 steps, 1 pass or 2 batched: RTF)
#   4. 14b-fp8: 14B compiled, fp8 linears: fast-14b
#   5. official-1.3b, 14b-baseline (this code eager at the official settings): if time is left
# Each run has its own time cap; a run is skipped, not cut short, once less than a minute is
# left before DEADLINE. The fast paths' guided velocity is checked against their own eager
# one-pass-at-a-time run (--self-check).
#   run(kind="nvidia-h200", carry=[".whl", ".official"], timeout_s=600,
#       command="bash benchmarks/h200_omniavatar.sh")
# (.whl: pyloudnorm alone; .official/OmniAvatar: the official checkout; benchmarks/README.md)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEADLINE=${DEADLINE:-570}
source benchmarks/common.sh
SUMMARY=$OUT/omniavatar.md
{
    echo "## OmniAvatar, $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python3 -c "from headcast.pipeline.omniavatar.bench import TABLE_HEADER; print(TABLE_HEADER, end='')"
} >"$SUMMARY"
python3 -c "import peft, transformers; print('peft', peft.__version__, 'transformers', transformers.__version__)" \
    2>&1 | tee -a "$LOG"

run_step() {  # run_step LABEL CAP_S COMMAND...: one run under min(CAP_S, time left)
    local label=$1 cap=$2
    shift 2
    budget "$label" || { echo "skip $label: out of time" >>"$SUMMARY"; return 0; }
    local limit=$((LEFT < cap ? LEFT : cap)) started=$SECONDS rc=0
    echo "=== $label: $* (limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" >"/tmp/$label.md" 2>>"$LOG" || rc=$?
    echo "=== $label: exit $rc after $((SECONDS - started)) s" | tee -a "$LOG"
    ((rc == 0)) || echo "| $label | failed (exit $rc after $((SECONDS - started)) s): see log.txt |" >>"$SUMMARY"
    [[ -f /tmp/$label.jsonl ]] && cat "/tmp/$label.jsonl" >>"$OUT/reports.jsonl"
    grep "^| " "/tmp/$label.md" | grep -v "^| run |" >>"$SUMMARY"
}

omni() {  # omni LABEL CAP_S FLAGS...: python -m headcast.pipeline.omniavatar.bench
    local label=$1 cap=$2
    shift 2
    run_step "$label" "$cap" python3 -m headcast.pipeline.omniavatar.bench --label "$label" \
        --json "/tmp/$label.jsonl" --video-seconds 60 --timed-steps 2 "$@"
}

official() {  # official LABEL CAP_S SIZE: benchmarks/omniavatar_official.py
    run_step "$1" "$2" python3 benchmarks/omniavatar_official.py --size "$3" \
        --official .official/OmniAvatar --label "$1" --json "/tmp/$1.jsonl" --video-seconds 60 \
        --timed-steps 2
}

official official-14b 220 14b
omni 14b-bf16 200 --size 14b --compile --case official fast --self-check
omni 1.3b-bf16 150 --size 1.3b --compile --self-check
omni 14b-fp8 150 --size 14b --compile --quantize fp8 --case fast --self-check
official official-1.3b 100 1.3b
omni 14b-baseline 120 --size 14b --baseline --case official
cat "$SUMMARY"

#!/usr/bin/env bash
# Device call (nvidia-h200, about 4 min): the 1.3B OmniAvatar streaming candidates (41-frame
# segments, 28 new frames = the 1.12 s chunk, 4 steps; one pass, or two batched) with the
# official blended tiles (--tiled-vae) and with whole-frame VAE calls (--no-tiled-vae),
# compiled bf16, random full-size weights. The VAE is warmed before it is timed.
# $OUT/omniavatar_stream.md and $OUT/reports.jsonl.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_omniavatar_stream.sh")
DEADLINE=${DEADLINE:-400}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source benchmarks/common.sh
SUMMARY=$OUT/omniavatar_stream.md
echo "## OmniAvatar 1.3B streaming, $(date -u +%Y-%m-%d)" >"$SUMMARY"

stream() {  # stream LABEL FLAGS...: one bench run of the streaming cases under the deadline
    local label=$1
    shift
    budget "$label" || { echo "skip $label: out of time" >>"$SUMMARY"; return 0; }
    echo "=== omniavatar $label: $* (limit ${LEFT}s)" | tee -a "$LOG"
    timeout "$LEFT" python3 -m headcast.pipeline.omniavatar.bench --label "$label" \
        --json "/tmp/$label.jsonl" --size 1.3b --compile --case stream --timed-steps 3 \
        --self-check "$@" >"/tmp/$label.md" 2>>"$LOG" \
        || echo "| $label | failed (exit $?): see log.txt |" >>"$SUMMARY"
    [[ -f /tmp/$label.jsonl ]] && cat "/tmp/$label.jsonl" >>"$OUT/reports.jsonl"
    grep "^|" "/tmp/$label.md" >>"$SUMMARY" 2>/dev/null
}

stream 1.3b-stream-untiled --no-tiled-vae
stream 1.3b-stream-tiled --tiled-vae
cat "$SUMMARY"

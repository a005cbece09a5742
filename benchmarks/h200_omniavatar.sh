#!/usr/bin/env bash
# Device call (nvidia-h200, <= 9 min): OmniAvatar with random full-size weights, one segment
# per case timed with CUDA events and projected to a 60 s 400x720 video: seconds of compute
# per second of video and per step, the FLOP floor at the bf16 peak, peak memory, and each
# fast path's guided velocity against its own eager one-pass-at-a-time run (--self-check).
#   1. 14B, compiled bf16, batched guidance: the official recipe and the fast-14b preset
#   2. 14B at the official settings (this code eager, one forward per pass, PyTorch's SDPA
#      choice, tiled VAE): the official recipe, the baseline the fast paths are compared to
#   3. 1.3B, compiled bf16: the official recipe, fast-1.3b and the two streaming candidates
#      (41-frame segments, 28 new = the 1.12 s chunk, 4 steps, 1 pass or 2 batched: RTF)
#   4. 14B, compiled fp8 linears, batched guidance: the fast-14b preset
# Steps are skipped, not cut short, once less than a minute is left.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_omniavatar.sh")
DEADLINE=${DEADLINE:-530}
source benchmarks/common.sh
SUMMARY=$OUT/omniavatar.md
echo "## OmniAvatar, $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" >"$SUMMARY"

omni() {  # omni LABEL FLAGS...: one python -m headcast.pipeline.omniavatar.bench run under the deadline
    local label=$1
    shift
    budget "$label" || { echo "skip $label: out of time" >>"$SUMMARY"; return 0; }
    echo "=== omniavatar $label: $* (limit ${LEFT}s)" | tee -a "$LOG"
    timeout "$LEFT" python3 -m headcast.pipeline.omniavatar.bench --label "$label" --json "/tmp/$label.jsonl" \
        --video-seconds 60 --timed-steps 2 --self-check "$@" >"/tmp/$label.md" 2>>"$LOG" \
        || echo "| $label | failed (exit $?): see log.txt |" >>"$SUMMARY"
    [[ -f /tmp/$label.jsonl ]] && cat "/tmp/$label.jsonl" >>"$OUT/reports.jsonl"
    grep "^|" "/tmp/$label.md" >>"$SUMMARY" 2>/dev/null
}

omni 14b-bf16 --size 14b --compile --case official fast
omni 14b-baseline --size 14b --baseline --case official
omni 1.3b-bf16 --size 1.3b --compile
omni 14b-fp8 --size 14b --compile --quantize fp8 --case fast
cat "$SUMMARY"

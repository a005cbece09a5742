# Shared by the device scripts that time the 14B OmniAvatar at the official recipe: sourced
# after benchmarks/common.sh, never run alone. Starts $OUT/omniavatar_recipe.md ($SUMMARY)
# with the bench's table header and defines `recipe LABEL FLAGS...`: the official case of the
# 14B (50 steps, two passes batched, 105-frame segments, 400x720), compiled, projected to 60 s,
# with --self-check, under the script's DEADLINE; its JSON line goes to $OUT/reports.jsonl and
# its row to the summary.
SUMMARY=$OUT/omniavatar_recipe.md
python3 -c "from headcast.pipeline.omniavatar.bench import TABLE_HEADER; print(TABLE_HEADER, end='')" >"$SUMMARY"

recipe() {  # recipe LABEL FLAGS...: the official case of the 14B under the deadline
    local label=$1
    shift
    budget "$label" || { echo "skip $label: out of time" >>"$SUMMARY"; return 0; }
    echo "=== $label: $* (limit ${LEFT}s)" | tee -a "$LOG"
    timeout "$LEFT" python3 -m headcast.pipeline.omniavatar.bench --label "$label" \
        --json "/tmp/$label.jsonl" --video-seconds 60 --timed-steps 2 --size 14b --compile \
        --case official --self-check "$@" >"/tmp/$label.md" 2>>"$LOG" \
        || echo "| $label | failed (exit $?): see log.txt |" >>"$SUMMARY"
    [[ -f /tmp/$label.jsonl ]] && cat "/tmp/$label.jsonl" >>"$OUT/reports.jsonl"
    grep "^| " "/tmp/$label.md" | grep -v "^| run |" >>"$SUMMARY"
}

# Shared set-up of the device scripts: sourced, never run alone.
# benchmarks/setup.sh installs the carried wheels (.whl/: pyloudnorm, optimum-quanto,
# bitsandbytes) and records the GPU and versions; this defines `bench LABEL ARGS...`, which
# runs `python3 -m headcast.pipeline.bench` with a time limit and appends its one-line JSON
# report to $OUT/reports.jsonl and its table to $OUT/summary.md, `budget LABEL` (the time
# left before DEADLINE, for the scripts' own steps), `gpu_tests` (the opt-in GPU checks) and
# `profile_block` (one OmniAvatar block kernel by kernel).
source benchmarks/setup.sh

# Seconds after the script's start by which every step must have ended.
DEADLINE=${DEADLINE:-570}
python3 benchmarks/table.py | tee -a "$OUT/summary.md"

# budget LABEL: the seconds left before DEADLINE in $LEFT; with less than a minute, says that
# LABEL is skipped and returns 1.
budget() {
    LEFT=$((DEADLINE - SECONDS))
    if ((LEFT < 60)); then
        echo "skip $1: only ${LEFT}s left" | tee -a "$LOG"
        return 1
    fi
}

bench() {
    local label=$1
    shift
    budget "$label" || return 0
    local left=$LEFT
    echo "=== bench $label: $* (limit ${left}s)" | tee -a "$LOG"
    # SM clock and power every 0.5 s while it runs (sustained vs burst rates)
    nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 500 \
        >"/tmp/smi_$label.txt" 2>/dev/null &
    local smi=$!
    timeout "$left" python3 -m headcast.pipeline.bench --random-weights --label "$label" \
        --json "/tmp/$label.json" "$@" >>"$LOG" 2>&1
    local rc=$?
    kill "$smi" 2>/dev/null
    python3 -c "
import statistics, sys
rows = [l.split(',') for l in open(sys.argv[1]) if l.count(',') == 1]
busy = [(float(c), float(p)) for c, p in rows if float(p) > 300.0]
if busy:
    print(f'clock while busy (power > 300 W): median SM {statistics.median(c for c, _ in busy):.0f} MHz, '
          f'median power {statistics.median(p for _, p in busy):.0f} W, {len(busy)} samples')
" "/tmp/smi_$label.txt" >>"$LOG" 2>&1
    if [[ -f /tmp/$label.json ]]; then
        python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))" \
            "/tmp/$label.json" >>"$OUT/reports.jsonl"
        python3 benchmarks/table.py "/tmp/$label.json" | tail -1 | tee -a "$OUT/summary.md"
    else
        echo "| $label | failed (exit $rc): see log.txt |" | tee -a "$OUT/summary.md"
    fi
}

# gpu_tests FILES_OR_TESTS...: the opt-in GPU checks (HEADCAST_GPU_TESTS=1) within 200 s, the
# log in $OUT/gpu_tests.log, its last lines shown.
gpu_tests() {
    HEADCAST_GPU_TESTS=1 timeout 200 python3 -m pytest "$@" -q -p no:cacheprovider \
        >"$OUT/gpu_tests.log" 2>&1
    tail -3 "$OUT/gpu_tests.log"
}

# profile_block LABEL FLAGS...: one compiled OmniAvatar block kernel by kernel
# (benchmarks/omni_block_profile.py) under the deadline; $OUT/LABEL.md and .json, its first
# ${HEAD:-9} lines shown.
profile_block() {
    local label=$1
    shift
    budget "$label" || return 0
    echo "=== $label: $* (limit ${LEFT}s)" | tee -a "$LOG"
    timeout "$LEFT" python3 benchmarks/omni_block_profile.py --json "$OUT/$label.json" "$@" \
        >"$OUT/$label.md" 2>>"$LOG" || echo "$label failed (exit $?)" | tee -a "$LOG"
    head -"${HEAD:-9}" "$OUT/$label.md" | cut -c1-160
}

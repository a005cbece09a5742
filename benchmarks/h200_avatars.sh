#!/usr/bin/env bash
# Device call (nvidia-h200): avatar preparation of the flashtalk engine with random full-size
# weights (benchmarks/avatar_prepare.py): the time per avatar at the full output size
# (768x448, bf16, 4 steps: the official recipe, eager), each preparation step's device time,
# and a live session's chunk latencies at the media clock's pace, alone and with avatar
# preparations queued between its chunks; then the same on the realtime-1gpu profile (2 steps,
# 640x368 generated, fp8, compiled), where the engine has the least slack.
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_avatars.sh")
source benchmarks/common.sh
prepare() {
    local label=$1
    shift
    budget "$label" || return 0
    echo "=== avatars $label: $* (limit ${LEFT}s)" | tee -a "$LOG"
    timeout "$LEFT" python3 benchmarks/avatar_prepare.py --label "$label" \
        --json "$OUT/$label.json" "$@" >>"$LOG" 2>&1 || echo "$label failed: see log.txt" | tee -a "$LOG"
}
prepare full-size-bf16 --steps 4 --avatars 5 --no-live
prepare realtime-1gpu --steps 2 --gen-height 640 --gen-width 368 --quantize fp8 --compile \
    --latency-budget-s 2.24 \
    --avatars 5 --chunks 20
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.md"
import json, pathlib, sys
print("| run | prepare (median s) | steps | longest step (s) | assets (MB) | chunk latency alone median / max (s) | with preparation median / max (s) | over budget alone / with |")
print("|---|---|---|---|---|---|---|---|")
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    if "preparation" not in r:
        continue
    p = r["preparation"][-1]
    a, w = r.get("alone"), r.get("with_preparation")
    live = (f"{a['latency_median_s']} / {a['latency_max_s']} | {w['latency_median_s']} / {w['latency_max_s']} "
            f"| {a['over_budget']} / {w['over_budget']}") if a else "- | - | -"
    print(f"| {r['label']} | {r['preparation_median_s']:.3f} | {p['steps']} | {max(x['longest_step_s'] for x in r['preparation']):.3f} "
          f"| {p['assets_mb']} | {live} |")
PY

#!/usr/bin/env bash
# Device call (nvidia-h200, about 3 minutes): GPU time only for speech. `headcast serve` runs
# the realtime-1gpu profile with random full-size weights and idle_mode loop, one generation
# slot (the profile's RTF 0.88 makes floor(1 / RTF) = 1; set here so the figure does not hang
# on the warm-up) and 3 sessions (max_sessions); the load driver on the same host runs 3 push
# sessions that each speak 30 % of the time (2.24 s bursts at seeded random times) for 60 s.
# Writes $OUT/load.json (per session: speech wait p50/p95/max, fps, chunks generated vs
# played, seams; "duty_cycle": the whole run), $OUT/duty_cycle.md (the BENCHMARKS.md rows),
# /metrics, GPU clock and power while streaming, and the log.
#   carry .whl/ holding the serving stack as cp312 wheels (benchmarks/README.md), then
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_duty_cycle.sh")
source benchmarks/serve_common.sh
SESSIONS=${SESSIONS:-3}
DUTY=${DUTY:-0.3}
DURATION=${DURATION:-60}
LOAD_LIMIT_S=${LOAD_LIMIT_S:-150}

# PROFILE / SERVE_FLAGS: a dry run elsewhere (PROFILE=configs/cpu-demo.yaml SERVE_FLAGS=)
HEADCAST_IDLE_MODE=loop HEADCAST_GENERATION_SLOTS=1 HEADCAST_MAX_SESSIONS=$SESSIONS \
    start_server "${PROFILE:-configs/realtime-1gpu.yaml}" ${SERVE_FLAGS---random-weights}
wait_ready
sample_gpu streaming
timeout "$LOAD_LIMIT_S" python3 -m loadtests --url "$URL" --sessions "$SESSIONS" \
    --duration "$DURATION" --ramp 1 --duty-cycle "$DUTY" --json "$OUT/load.json" 2>&1 | tee -a "$LOG"
stop_sampling
summarise_gpu streaming
python3 - "$OUT/load.json" <<'PY' 2>&1 | tee "$OUT/duty_cycle.md" | tee -a "$LOG"
import json, sys
report = json.load(open(sys.argv[1]))
plan, run, server = report["plan"], report.get("duty_cycle") or {}, report["server"]
print(f"{len(report['sessions'])} sessions at duty cycle {plan['duty_cycle']}, bursts {plan['burst_s']} s "
      f"({plan['spread']}), {plan['duration_s']:.0f} s; server mean RTF {server['rtf_mean']}")
print("| session | fps | speech wait p50 / p95 / max (ms) | utterances (dropped) | chunks generated / played | resume jump / p99 |")
print("| --- | --- | --- | --- | --- | --- |")
for row in report["sessions"]:
    s = row["speech"] or {}
    jumps = s.get("resume_jumps") or [None]
    print(f"| {row['index']} ({row['outcome']}) | {row['fps'] and round(row['fps'], 2)} | "
          f"{s.get('wait_p50_ms')} / {s.get('wait_p95_ms')} / {s.get('wait_max_ms')} | "
          f"{s.get('started')} ({s.get('dropped')}) | {s.get('chunks_generated')} / {s.get('chunks_played')} | "
          f"{max(j for j in jumps if j is not None) if jumps != [None] else None} / {s.get('frame_change_p99')} |")
print("all:", json.dumps(run))
PY
stop_server

#!/usr/bin/env bash
# Device call (nvidia-h200): the server end to end on a GPU. `headcast serve` runs the
# realtime-1gpu profile with random full-size weights (--random-weights: the real model's
# speed, noise pictures), then the load driver on the same host asks for 2 sessions of 30 s
# (the profile admits 1): received fps and stalls per session, the server's per-chunk RTF,
# A/V skew and /metrics, GPU clock and power while streaming, and the shutdown.
#   carry .whl/ holding the serving stack as cp312 wheels (benchmarks/README.md), then
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_served.sh")
set -u
: "${OUT:?OUT must be set (the device tool sets it)}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/clients/python PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee -a "$LOG"

PORT=8000
URL=http://127.0.0.1:$PORT
SESSIONS=${SESSIONS:-2}
DURATION=${DURATION:-30}
READY_LIMIT_S=${READY_LIMIT_S:-360}

HEADCAST_ICE_LOOPBACK_ONLY=true HEADCAST_LOG_LEVEL=info \
    python3 -m server serve --config configs/realtime-1gpu.yaml --random-weights \
    --host 127.0.0.1 --port "$PORT" >"$OUT/server.log" 2>&1 &
SERVER=$!

# Ready: weights built, blocks compiled, two warm-up chunks run.
python3 - "$URL" "$READY_LIMIT_S" "$SERVER" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, sys, time, urllib.error, urllib.request
url, limit, server = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
started = time.monotonic()
while time.monotonic() - started < limit:
    try:
        os.kill(server, 0)
    except ProcessLookupError:
        print("the server exited before it was ready")
        sys.exit(1)
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            print(f"ready after {time.monotonic() - started:.1f} s:", json.load(response))
            sys.exit(0)
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"{}")
        if body.get("state") == "failed":
            print("engine failed:", body)
            sys.exit(1)
    except OSError:
        pass
    time.sleep(2)
print(f"not ready within {limit:.0f} s")
sys.exit(1)
EOF
if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
    kill "$SERVER" 2>/dev/null
    tail -50 "$OUT/server.log"
    exit 1
fi

nvidia-smi --query-gpu=clocks.sm,power.draw,memory.used --format=csv,noheader,nounits -lms 500 \
    >"$OUT/smi_streaming.csv" 2>/dev/null &
SMI=$!
python3 -m loadtests --url "$URL" --sessions "$SESSIONS" --duration "$DURATION" --ramp 1 \
    --json "$OUT/load.json" 2>&1 | tee -a "$LOG"
kill "$SMI" 2>/dev/null
python3 - "$OUT/smi_streaming.csv" <<'EOF' 2>&1 | tee -a "$LOG"
import statistics, sys
rows = [[float(v) for v in line.split(",")] for line in open(sys.argv[1]) if line.count(",") == 2]
busy = [row for row in rows if row[1] > 150.0]
if busy:
    print(f"while streaming ({len(busy)} samples over 150 W): median SM {statistics.median(r[0] for r in busy):.0f} MHz, "
          f"median power {statistics.median(r[1] for r in busy):.0f} W, "
          f"memory used {max(r[2] for r in rows):.0f} MiB")
EOF
curl -s "$URL/metrics" >"$OUT/metrics.txt" || python3 -c \
    "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('$URL/metrics').read().decode())" \
    >"$OUT/metrics.txt"
grep -E "^headcast_[a-z_]+(_count|_sum|_total)(\{| )|^headcast_sessions_(active|capacity) " "$OUT/metrics.txt" | tee -a "$LOG"

started=$SECONDS
kill -TERM "$SERVER"
wait "$SERVER"
echo "server exited $? after SIGTERM in $((SECONDS - started)) s" | tee -a "$LOG"
grep -E "engine|warm|capacity|RTF|WARNING|ERROR|Traceback" "$OUT/server.log" | head -40 | tee -a "$LOG"

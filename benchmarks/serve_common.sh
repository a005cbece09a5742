# Shared set-up of the device scripts that run the whole server: sourced, never run alone.
# benchmarks/setup.sh installs the carried serving stack (.whl/, benchmarks/README.md) and
# records the GPU and versions; this defines
#   start_server PROFILE [FLAGS...]   headcast serve in the background (env HEADCAST_* apply),
#                                     log in $OUT/server.log, pid in $SERVER
#   wait_ready                        until /readyz is 200 (READY_LIMIT_S), else exit 1
#   sample_gpu NAME / stop_sampling   nvidia-smi every 0.5 s into $OUT/smi_NAME.csv
#   summarise_gpu NAME                median SM clock and power while busy, peak memory
#   stop_server                       /metrics to $OUT/metrics.txt, SIGTERM, the log's key lines
set -u
source benchmarks/setup.sh

PORT=${PORT:-8000}
URL=http://127.0.0.1:$PORT
READY_LIMIT_S=${READY_LIMIT_S:-360}

start_server() {
    local profile=$1
    shift
    HEADCAST_ICE_LOOPBACK_ONLY=true HEADCAST_LOG_LEVEL=${HEADCAST_LOG_LEVEL:-info} \
        python3 -m server serve --config "$profile" "$@" \
        --host 127.0.0.1 --port "$PORT" >"$OUT/server.log" 2>&1 &
    SERVER=$!
}

# Ready: weights built, blocks compiled, two warm-up chunks run.
wait_ready() {
    python3 - "$URL" "$READY_LIMIT_S" "$SERVER" <<'PY' 2>&1 | tee -a "$LOG"
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
PY
    if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
        kill "$SERVER" 2>/dev/null
        tail -50 "$OUT/server.log"
        exit 1
    fi
}

sample_gpu() {
    nvidia-smi --query-gpu=clocks.sm,power.draw,memory.used --format=csv,noheader,nounits -lms 500 \
        >"$OUT/smi_$1.csv" 2>/dev/null &
    SMI=$!
}

stop_sampling() {
    kill "$SMI" 2>/dev/null
}

summarise_gpu() {
    python3 - "$OUT/smi_$1.csv" <<'PY' 2>&1 | tee -a "$LOG"
import statistics, sys
rows = [[float(v) for v in line.split(",")] for line in open(sys.argv[1]) if line.count(",") == 2]
busy = [row for row in rows if row[1] > 150.0]
if busy:
    print(f"while streaming ({len(busy)} samples over 150 W): median SM {statistics.median(r[0] for r in busy):.0f} MHz, "
          f"median power {statistics.median(r[1] for r in busy):.0f} W, "
          f"memory used {max(r[2] for r in rows):.0f} MiB")
PY
}

stop_server() {
    curl -s "$URL/metrics" >"$OUT/metrics.txt" || python3 -c \
        "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('$URL/metrics').read().decode())" \
        >"$OUT/metrics.txt"
    grep -E "^headcast_[a-z_]+(_count|_sum|_total)(\{| )|^headcast_sessions_(active|capacity) |^headcast_generation_slots" \
        "$OUT/metrics.txt" | tee -a "$LOG"
    local started=$SECONDS
    kill -TERM "$SERVER"
    wait "$SERVER"
    echo "server exited $? after SIGTERM in $((SECONDS - started)) s" | tee -a "$LOG"
    grep -E "engine|warm|capacity|slot|RTF|WARNING|ERROR|Traceback" "$OUT/server.log" | head -40 | tee -a "$LOG"
}

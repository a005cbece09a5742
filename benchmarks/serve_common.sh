# Shared set-up of the device scripts that run the whole server: sourced, never run alone.
# benchmarks/setup.sh installs the carried serving stack (.whl/, benchmarks/README.md) and
# records the GPU and versions; this defines
#   start_server PROFILE [FLAGS...]   headcast serve in the background (env HEADCAST_* apply),
#                                     log in $OUT/${RUN}server.log, pid in $SERVER
#   wait_ready                        until /readyz says every engine group is ready
#                                     (READY_LIMIT_S), else exit 1
#   sample_gpu NAME / stop_sampling   nvidia-smi every 0.5 s into /tmp/smi_${RUN}NAME.csv
#   summarise_gpu NAME                per GPU: median SM clock and power while busy, peak memory
#   stop_server                       /metrics to $OUT/${RUN}metrics.txt, SIGTERM, the log's key lines
#   served LABEL SESSIONS DURATION PROFILE [FLAGS...]
#                                     all of the above around one load-driver run
#                                     ($OUT/LABEL-load.json); RUN=LABEL- names its files
# RUN (default empty) prefixes the files of one server run, so a script can run several.
# Every process started here has NVLink multicast off (NCCL_NVLS_ENABLE=0, ...).
set -u
source benchmarks/setup.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

PORT=${PORT:-8000}
URL=http://127.0.0.1:$PORT
READY_LIMIT_S=${READY_LIMIT_S:-360}
RUN=${RUN:-}

start_server() {
    local profile=$1
    shift
    HEADCAST_ICE_LOOPBACK_ONLY=true HEADCAST_LOG_LEVEL=${HEADCAST_LOG_LEVEL:-info} \
        python3 -m headcast.server serve --config "$profile" "$@" \
        --host 127.0.0.1 --port "$PORT" >"$OUT/${RUN}server.log" 2>&1 &
    SERVER=$!
}

# Ready: weights built, blocks compiled, two warm-up chunks run, on every engine group.
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
            body = json.load(response)
        if all(group.get("state") == "ready" for group in body.get("groups", [])):
            print(f"ready after {time.monotonic() - started:.1f} s:", json.dumps(body))
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
        tail -50 "$OUT/${RUN}server.log"
        exit 1
    fi
}

sample_gpu() {
    nvidia-smi --query-gpu=index,clocks.sm,power.draw,memory.used --format=csv,noheader,nounits \
        -lms 500 >"/tmp/smi_${RUN}$1.csv" 2>/dev/null &
    SMI=$!
}

stop_sampling() {
    kill "$SMI" 2>/dev/null
}

summarise_gpu() {
    python3 - "/tmp/smi_${RUN}$1.csv" <<'PY' 2>&1 | tee -a "$LOG"
import statistics, sys
rows = [[float(v) for v in line.split(",")] for line in open(sys.argv[1]) if line.count(",") == 3]
for gpu in sorted({int(r[0]) for r in rows}):
    mine = [r for r in rows if int(r[0]) == gpu]
    busy = [r for r in mine if r[2] > 150.0]
    if busy:
        print(f"GPU {gpu} while streaming ({len(busy)} samples over 150 W): median SM "
              f"{statistics.median(r[1] for r in busy):.0f} MHz, median power "
              f"{statistics.median(r[2] for r in busy):.0f} W, memory used {max(r[3] for r in mine):.0f} MiB")
PY
}

stop_server() {
    python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('$URL/metrics').read().decode())" \
        >"$OUT/${RUN}metrics.txt"
    grep -E "^headcast_[a-z_]+(_count|_sum|_total)(\{| )|^headcast_sessions_(active|capacity) |^headcast_generation_slots|^headcast_engine_group_(ready|capacity)" \
        "$OUT/${RUN}metrics.txt" | tee -a "$LOG"
    local started=$SECONDS
    kill -TERM "$SERVER"
    wait "$SERVER"
    echo "server exited $? after SIGTERM in $((SECONDS - started)) s (143: uvicorn re-raises the SIGTERM after a clean shutdown)" | tee -a "$LOG"
    grep -E "engine|warm|capacity|slot|RTF|WARNING|ERROR|Traceback" "$OUT/${RUN}server.log" | head -40 | tee -a "$LOG"
}

served() {
    local label=$1 sessions=$2 duration=$3
    shift 3
    RUN=$label-
    echo "=== served $label: $sessions sessions x ${duration}s; serve --config $*" | tee -a "$LOG"
    start_server "$@"
    wait_ready
    sample_gpu streaming
    python3 -m loadtests --url "$URL" --sessions "$sessions" --duration "$duration" --ramp 1 \
        --json "$OUT/$label-load.json" 2>&1 | tee -a "$LOG"
    stop_sampling
    summarise_gpu streaming
    stop_server
    RUN=
}

# Shared set-up of the served device scripts: sourced, never run alone.
# Installs the carried serving stack (.whl/, cp312 wheels: benchmarks/README.md), records the
# GPUs and versions, and defines `served LABEL SESSIONS DURATION [serve flags...]`: start
# `headcast serve` with the flags, wait for /readyz, run the load
# driver on the same host (SESSIONS sessions of DURATION s, one a second), sample GPU clock,
# power and memory while it streams, keep /metrics, and stop the server with SIGTERM. Each
# run's files land in $OUT/LABEL-*. Environment variables given before `served` reach the
# server (e.g. HEADCAST_GPUS=0,1).
set -u
: "${OUT:?OUT must be set (the device tool sets it)}"
PYTHON=${PYTHON:-python3}
if [[ -z ${NO_WHEELS:-} ]]; then  # NO_WHEELS=1: a dry run with the local venv (PYTHON=...)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD:$PWD/clients/python PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
LOG=$OUT/log.txt
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee -a "$LOG"

PORT=${PORT:-8000}
URL=http://127.0.0.1:$PORT
READY_LIMIT_S=${READY_LIMIT_S:-300}

# Wait until /readyz says every engine group is ready; exit 1 if the server dies or fails.
wait_ready() {
    "$PYTHON" - "$URL" "$READY_LIMIT_S" "$1" <<'PY'
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
        groups = body.get("groups", [])
        if all(group.get("state") == "ready" for group in groups):
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
}

served() {
    local label=$1 sessions=$2 duration=$3
    shift 3
    echo "=== served $label: $sessions sessions x ${duration}s; serve $*" | tee -a "$LOG"
    HEADCAST_ICE_LOOPBACK_ONLY=true HEADCAST_LOG_LEVEL=info \
        "$PYTHON" -m server serve --host 127.0.0.1 --port "$PORT" "$@" \
        >"$OUT/$label-server.log" 2>&1 &
    local server=$!
    local ready=0
    wait_ready "$server" >"/tmp/$label-ready.txt" 2>&1 || ready=$?
    tee -a "$LOG" <"/tmp/$label-ready.txt"
    if ((ready != 0)); then
        kill "$server" 2>/dev/null
        tail -40 "$OUT/$label-server.log" | tee -a "$LOG"
        return 1
    fi
    nvidia-smi --query-gpu=index,clocks.sm,power.draw,memory.used \
        --format=csv,noheader,nounits -lms 500 >"/tmp/$label-smi.csv" 2>/dev/null &
    local smi=$!
    "$PYTHON" -m loadtests --url "$URL" --sessions "$sessions" --duration "$duration" --ramp 1 \
        --json "$OUT/$label-load.json" 2>&1 | tee -a "$LOG"
    kill "$smi" 2>/dev/null
    python3 - "/tmp/$label-smi.csv" <<'PY' 2>&1 | tee -a "$LOG"
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
    "$PYTHON" -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('$URL/metrics').read().decode())" \
        >"$OUT/$label-metrics.txt"
    grep -E "^headcast_(chunk|rtf|engine_group|sessions_(active|capacity|rejected))" \
        "$OUT/$label-metrics.txt" | grep -v "_bucket" | tee -a "$LOG"
    local started=$SECONDS
    kill -TERM "$server"
    wait "$server"
    echo "server exited $? after SIGTERM in $((SECONDS - started)) s (143: uvicorn re-raises the SIGTERM after a clean shutdown)" | tee -a "$LOG"
    grep -E "engine|warm|capacity|RTF|WARNING|ERROR|Traceback" "$OUT/$label-server.log" \
        | head -30 | tee -a "$LOG"
}

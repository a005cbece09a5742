#!/usr/bin/env bash
# Device call (nvidia-h200-x2, about 9 min): OmniAvatar 14B sequence-parallel on 2 GPUs, random
# full-size weights (the real model's speed, noise pictures). Most important first:
#   0. the fp8-attention GPU checks (tests/gpu/test_attention_fp8.py);
#   1. the bench of the 14B fast preset (fast-14b: 69-frame segments, 60 new, 20 steps,
#      TeaCache 0.14, two guidance passes batched), compiled, projected to a 60 s video, on
#      2 GPUs (--gpus 2: one process per GPU, the DiT's tokens split between them, the VAE and
#      wav2vec2 whole on each; rank 0 times with CUDA events, the ranks in lockstep): fp8
#      linears with fp8 attention, then fp8 linears alone. --self-check compares the group's
#      compiled, batched guided velocity with its own eager one-pass-at-a-time run (bf16
#      attention);
#   2. `headcast generate --engine omniavatar --size 14b --random-weights --preset fast
#      --gpus 2 --quantize fp8 --attention-fp8` on 5 s of generated speech; PyAV checks the
#      MP4: H.264 with ceil(25 x (5 s + 0.3 s silence)) + 1 frames, an AAC stream as long as
#      the delayed speech;
#   3. if time is left: the fp8 + fp8-attention bench on 1 GPU. The 1-GPU figures of
#      2026-11-30 (benchmarks/results/2026-11-30-h200-omniavatar) are 2.784 s/step bf16 and
#      2.247 s/step fp8; the summary compares the 2-GPU steps with those and with this call's.
# Each run has its own time cap; a run is skipped, not cut short, once less than a minute is
# left before DEADLINE (550 s). pipeline.launch starts every rank with NVLink multicast off
# (exported here too); TORCH_LOGS puts graph breaks and recompiles in the runs' logs (the
# parallel blocks should compile once per rank). Results under $OUT: log.txt, one
# LABEL.log/.md per run, reports.jsonl (the bench's JSON lines), generate.json, and the
# markdown summary omniavatar-2gpu.md.
#   carry .whl/ holding the serving stack as cp312 wheels (benchmarks/README.md: generate needs
#   the CLI's settings and PyAV), then
#   run(kind="nvidia-h200-x2", carry=[".whl"], timeout_s=600,
#       command="bash benchmarks/h200x2_omniavatar.sh")
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCH_LOGS=graph_breaks,recompiles
DEADLINE=${DEADLINE:-550}
source benchmarks/common.sh
SUMMARY=$OUT/omniavatar-2gpu.md
SPEECH_S=5
{
    echo "## OmniAvatar 14B on 2 GPUs, $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python3 -c "from headcast.pipeline.omniavatar.bench import TABLE_HEADER; print(TABLE_HEADER, end='')"
} >"$SUMMARY"
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
{
    echo "visible GPUs: $gpus"
    nvidia-smi topo -m
} 2>&1 | tee -a "$LOG"
if ((gpus < 2)); then
    echo "this call needs 2 GPUs (kind nvidia-h200-x2); $gpus visible" | tee -a "$LOG" "$SUMMARY"
    exit 1
fi

step() {  # step LABEL CAP_S COMMAND...: one run under min(CAP_S, time left); 1 if skipped
    local label=$1 cap=$2
    shift 2
    if ! budget "$label"; then
        echo "| $label | skipped: ${LEFT}s left |" >>"$SUMMARY"
        return 1
    fi
    local limit=$((LEFT < cap ? LEFT : cap)) started=$SECONDS
    STATUS=0
    echo "=== $label: $* (limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" >"$OUT/$label.md" 2>"$OUT/$label.log" || STATUS=$?
    echo "=== $label: exit $STATUS after $((SECONDS - started)) s" | tee -a "$LOG"
    # a rank left behind would hold a GPU through the next run: say so
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader 2>&1 \
        | sed "s/^/still on a GPU after $label: /" | tee -a "$LOG"
}

omni() {  # omni LABEL CAP_S FLAGS...: the bench of the 14B fast preset
    local label=$1 cap=$2
    shift 2
    step "$label" "$cap" python3 -m headcast.pipeline.omniavatar.bench --label "$label" \
        --json "$OUT/$label.jsonl" --size 14b --compile --case fast --video-seconds 60 \
        --timed-steps 2 --self-check "$@" || return 0
    if [[ -s $OUT/$label.jsonl ]]; then
        cat "$OUT/$label.jsonl" >>"$OUT/reports.jsonl"
        grep "^| " "$OUT/$label.md" | grep -v "^| run |" >>"$SUMMARY" || true
    else
        echo "| $label | failed (exit $STATUS): see $label.log |" >>"$SUMMARY"
    fi
}

HEADCAST_GPU_TESTS=1 timeout 60 python3 -m pytest tests/gpu/test_attention_fp8.py -q \
    -p no:cacheprovider >"$OUT/gpu_tests.log" 2>&1 || true
tail -1 "$OUT/gpu_tests.log" | sed 's/^/fp8 attention GPU checks: /' | tee -a "$LOG" "$SUMMARY"
omni 2gpu-fp8-attnfp8 160 --gpus 2 --quantize fp8 --attention-fp8
omni 2gpu-fp8 140 --gpus 2 --quantize fp8

python3 - "$OUT" "$SPEECH_S" <<'PY' 2>&1 | tee -a "$LOG"
import sys, wave
import numpy as np
from PIL import Image
from headcast.pipeline.avatar_art import draw_default_avatar
out, seconds = sys.argv[1], float(sys.argv[2])
Image.fromarray(draw_default_avatar(720, 400)).save(f"{out}/face.png")
t = np.arange(round(seconds * 16000)) / 16000
voice = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
with wave.open(f"{out}/speech.wav", "wb") as f:
    f.setnchannels(1); f.setsampwidth(2); f.setframerate(16000)
    f.writeframes((voice * 32767).astype(np.int16).tobytes())
print(f"generate inputs: {out}/face.png (720x400), {out}/speech.wav ({seconds:.0f} s)")
PY
if step generate-2gpu 200 python3 -m headcast.server.cli generate --engine omniavatar \
    --size 14b --random-weights --preset fast --gpus 2 --quantize fp8 --attention-fp8 --quiet \
    --image "$OUT/face.png" --audio "$OUT/speech.wav" --out "$OUT/generate-2gpu.mp4"; then
    grep -E "sequence-parallel ranks|models ready|wrote " "$OUT/generate-2gpu.log" | tee -a "$LOG" || true
    check=0
    python3 - "$OUT/generate-2gpu.mp4" "$OUT/speech.wav" "$OUT/generate.json" "$STATUS" <<'PY' \
        2>&1 | tee -a "$LOG" "$SUMMARY" || check=$?
import json, sys, wave
import av
from headcast.pipeline.media import SAMPLE_RATE_HZ, VIDEO_FPS
from headcast.pipeline.omniavatar.audio import clip_frames
from headcast.pipeline.omniavatar.recipe import RECIPES
mp4, wav, report, status = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with wave.open(wav) as f:
    samples = f.getnframes()
silence_s = RECIPES["fast-14b"].silence_s
expected = clip_frames(samples + round(silence_s * SAMPLE_RATE_HZ)) + 1
facts = {"exit": status, "expected_frames": expected}
try:
    with av.open(mp4) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        facts.update(
            video_codec=video.codec_context.name,
            size=f"{video.codec_context.width}x{video.codec_context.height}",
            frames=sum(1 for _ in container.decode(video=0)),
            audio_codec=audio.codec_context.name if audio else None,
            audio_s=float(audio.duration * audio.time_base) if audio and audio.duration else None,
        )
except (OSError, av.error.FFmpegError, IndexError) as exc:
    facts["error"] = repr(exc)
speech_s = samples / SAMPLE_RATE_HZ + silence_s + 1 / VIDEO_FPS  # muxed after the silence
facts["ok"] = bool(
    status == 0
    and facts.get("video_codec") == "h264"
    and facts.get("frames") == expected
    and facts.get("audio_codec") == "aac"
    and abs((facts.get("audio_s") or 0.0) - speech_s) < 0.05
)
json.dump(facts, open(report, "w"), indent=2)
print(f"\ngenerate-2gpu MP4 check: {'ok' if facts['ok'] else 'FAILED'}: {facts}")
sys.exit(0 if facts["ok"] else 1)
PY
    echo "generate check exit $check" >>"$LOG"
fi

omni 1gpu-fp8-attnfp8 110 --gpus 1 --quantize fp8 --attention-fp8

{
    echo
    python3 - "$OUT/reports.jsonl" <<'PY' || true
import json, sys
EARLIER = {("none", False): 2.784, ("fp8", False): 2.247}
"""1-GPU s per DiT step of fast-14b, 2026-11-30 (benchmarks/results/2026-11-30-h200-omniavatar)."""
try:
    reports = [json.loads(line) for line in open(sys.argv[1])]
except OSError:
    reports = []
def kind(r):
    return r["options"]["quantize"], bool(r["options"].get("attention_fp8"))
here = {kind(r): r["step_s"] for r in reports if r.get("gpus", 1) == 1}
print("| run | GPUs | DiT step s | speed-up vs 1 GPU here | vs 1 GPU 2026-11-30 | s compute per s video | peak GiB |")
print("|---|---|---|---|---|---|---|")
for r in reports:
    key, step = kind(r), r["step_s"]
    ours = f"{here[key] / step:.2f}" if key in here else "-"
    fast_14b = r["size"] == "14b" and r["label"].endswith("-fast-14b")
    earlier = f"{EARLIER[key] / step:.2f}" if fast_14b and key in EARLIER else "-"
    memory = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
    print(f"| {r['label']} | {r.get('gpus', 1)} | {step:.3f} | {ours} | {earlier} | "
          f"{r['compute_per_video_s']:.2f} | {memory} |")
PY
    echo
    echo "graph breaks / recompiles in the runs' logs:"
    grep -c -E "Recompiling|Graph break" "$OUT"/*.log || true
} >>"$SUMMARY"
cat "$SUMMARY"

#!/usr/bin/env bash
# Device call (nvidia-h200, or nvidia-h200-x2 for the 2-GPU form; <= 9 min): OmniAvatar 1.3B
# as a STREAMING engine through the whole server (issue 15, item 4), random full-size weights
# (--random-weights: the real model's speed, noise pictures), the load driver on the same host.
# configs/omniavatar-1.3b-stream.yaml: one 41-frame segment per 1.12 s chunk (13 frames carried
# over, 28 new), 4 steps, one pass (no guidance), 720x400 generated, compiled bf16 blocks.
#   1. one GPU: one session of ${DURATION:-60} s: received fps, stalls, first frame after
#      connect, the server's RTF histogram (chunks in time), and the engine's own per-session
#      line ("omniavatar session closed: N chunks, compute mean ... (RTF ...), longest ...,
#      first ..."), which counts every chunk computed, in time or late (a chunk later than its
#      deadline is sent idle and is not in /metrics);
#   2. with a second GPU: one engine group of GPUs 0 and 1 (gpus_per_session 2: the DiT's
#      tokens split over both, sequence parallel over NCCL; the VAE and audio run whole on
#      each), one session of ${SP_DURATION:-45} s: the same figures. Skipped on one GPU.
#      (Pool mode, two groups of one GPU each serving its own session, has the 1-GPU figures
#      per session: HEADCAST_GPUS=0,1 HEADCAST_GPUS_PER_SESSION=1 served ... 2 sessions.)
# Its figures of 2026-11-30 are in BENCHMARKS.md section 7.
#   carry .whl/ holding the serving stack as cp312 wheels (benchmarks/README.md), then
#   run(kind="nvidia-h200", carry=[".whl"], command="bash benchmarks/h200_omniavatar_served.sh")
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash benchmarks/h200_omniavatar_served.sh")
#   3. if at least GENERATE_MIN_S (150) seconds are left of 9 minutes: offline `headcast generate
#      --engine omniavatar --size 1.3b --random-weights --preset fast` on GPU 0, 10 s of audio
#      into an mp4 (timing and a check that the GPU path writes a valid file).
# Env: DURATION, SP_DURATION (seconds of load), HEADCAST_OMNI_STEPS / HEADCAST_OMNI_GUIDANCE /
# HEADCAST_COMPILE (override the profile), READY_LIMIT_S (build + compile + warm-up limit),
# SP_START_LIMIT_S (the 2-GPU run starts only before this many seconds: 9 minutes in all).
PROFILE=configs/omniavatar-1.3b-stream.yaml
READY_LIMIT_S=${READY_LIMIT_S:-240}
source benchmarks/serve_common.sh

engine_lines() {  # the engine's warm-up RTF and per-session chunk times from a run's server log
    grep -E "omniavatar (warm-up chunk|session closed)|generation slot" "$OUT/${1}server.log" | tee -a "$LOG"
    grep -E '^headcast_rtf_bucket|^headcast_first_frame_seconds_(sum|count)' "$OUT/${1}metrics.txt" | tee -a "$LOG"
}

HEADCAST_GPUS=0 served omniavatar-1gpu 1 "${DURATION:-60}" "$PROFILE" --random-weights
engine_lines omniavatar-1gpu-

gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
if ((gpus >= 2 && SECONDS > ${SP_START_LIMIT_S:-300})); then  # keeps the call under 9 min
    echo "the 2-GPU run is skipped: ${SECONDS}s used by the 1-GPU run (SP_START_LIMIT_S)" | tee -a "$LOG"
elif ((gpus >= 2)); then
    HEADCAST_GPUS=0,1 HEADCAST_GPUS_PER_SESSION=2 \
        served omniavatar-2gpu 1 "${SP_DURATION:-45}" "$PROFILE" --random-weights
    engine_lines omniavatar-2gpu-
else
    echo "one GPU: the 2-GPU run is skipped (use kind nvidia-h200-x2)" | tee -a "$LOG"
fi

if ((540 - SECONDS >= ${GENERATE_MIN_S:-150})); then
    echo "=== generate: omniavatar 1.3b fast preset, random weights, 10 s of audio" | tee -a "$LOG"
    python3 - "$OUT" <<'PY' 2>&1 | tee -a "$LOG"
import sys, wave
import numpy as np
from PIL import Image
out = sys.argv[1]
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 256, (720, 400, 3), dtype=np.uint8)).save(f"{out}/face.png")
t = np.arange(10 * 16000) / 16000
voice = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
with wave.open(f"{out}/speech.wav", "wb") as f:
    f.setnchannels(1); f.setsampwidth(2); f.setframerate(16000)
    f.writeframes((voice * 32767).astype(np.int16).tobytes())
PY
    started=$SECONDS
    CUDA_VISIBLE_DEVICES=0 timeout $((540 - SECONDS)) python3 -m headcast.server.cli generate \
        --engine omniavatar --size 1.3b --random-weights --preset fast \
        --image "$OUT/face.png" --audio "$OUT/speech.wav" --out /tmp/omni-generate.mp4 \
        >>"$LOG" 2>&1
    echo "generate exit $? after $((SECONDS - started)) s" | tee -a "$LOG"
    python3 -c "import av, sys; c = av.open(sys.argv[1]); v = c.streams.video[0]; a = c.streams.audio[0]; print('mp4:', v.frames, 'frames', v.codec_context.width, 'x', v.codec_context.height, '| audio', a.codec_context.name, a.codec_context.sample_rate, 'Hz')" /tmp/omni-generate.mp4 2>&1 | tee -a "$LOG"
else
    echo "generate skipped: $((540 - SECONDS)) s left" | tee -a "$LOG"
fi

"""The ``omniavatar`` engine served end to end: a real server, a real aiortc call.

The server runs ``engine: omniavatar`` at the tiny size (random weights on the CPU: the
segment loop's real code, noise pictures) generating 16x16 frames resized to 256x144; the
client speaks a speech-like signal into its microphone and receives 2 s of the avatar.
Asserted: the frames come at 25 fps (by arrival and by their 90 kHz timestamps) at the
output size, the audio that drove them comes back audible, generated chunks reach the call
(``headcast_chunks_total``) and the log says the pictures are noise.

At 16x16 the tiny size runs at an RTF of about 0.2 on 2 idle cores, several times that on a
busy host (its CPU VAE decodes 41 frames per chunk, and the server's allocator policy maps
every large buffer afresh); a chunk that misses its deadline is sent idle, so the latency
budget here is three chunks.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from headcast_client import ArrayAudioTrack, HeadcastClient
from tests.integration.conftest import LOOPBACK_ONLY, run_server
from tests.integration.test_loopback_webrtc import speech_like_signal

pytestmark = pytest.mark.slow

VIDEO_FPS = 25
VIDEO_CLOCK_HZ = 90_000
MIC_RATE_HZ = 48_000
HEIGHT, WIDTH = 256, 144
FPS_FRAMES = 2 * VIDEO_FPS + 1
"""Frames spanning 2 s of video, for the frame-rate measurement."""

MIN_FPS = 24.0
MIN_AUDIO_DBFS = -40.0
"""The speech that drove the chunks comes back at least this loud (RMS)."""

RECEIVE_TIMEOUT_S = 60.0
GENERATED_WAIT_S = 30.0
"""Longest wait, after the frame-rate window, for a generated chunk to be sent."""
POLL_S = 0.5

OMNI_TINY = {
    "ice_loopback_only": True,
    "omni_size": "tiny",
    "omni_steps": 1,
    "gen_height": 16,
    "gen_width": 16,
    "height": HEIGHT,
    "width": WIDTH,
    "latency_budget_s": 3.36,
    "max_sessions": 1,
}
"""The tiny size, one step, one pass: the real code paths at the least CPU time."""


async def _audio(track: MediaStreamTrack, samples: list[np.ndarray]) -> None:
    """Collect the received audio as float32 mono until the track ends."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        pcm = frame.to_ndarray().astype(np.float32) / 32768.0  # [1, channels * n] interleaved
        samples.append(pcm.reshape(-1))


async def test_the_tiny_omniavatar_engine_streams_25_fps_with_its_audio(tmp_path: Path) -> None:
    with run_server(tmp_path, engine="omniavatar", **OMNI_TINY) as server:
        async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY) as client:
            session = await client.create_session()
            mic = ArrayAudioTrack(speech_like_signal(6.0), MIC_RATE_HZ, loop=True)
            connection = await client.connect_webrtc(session, mic)
            audio: list[np.ndarray] = []
            listening = asyncio.ensure_future(_audio(connection.audio, audio))
            arrivals: list[float] = []
            stamps: list[int] = []
            try:
                while len(arrivals) < FPS_FRAMES:
                    frame = await asyncio.wait_for(connection.video.recv(), RECEIVE_TIMEOUT_S)
                    arrivals.append(time.monotonic())
                    stamps.append(int(frame.pts))
                    assert (frame.height, frame.width) == (HEIGHT, WIDTH)
                deadline = time.monotonic() + GENERATED_WAIT_S
                while (chunks := server.metric("headcast_chunks_total")) < 1:
                    assert time.monotonic() < deadline, "no generated chunk was sent"
                    await asyncio.sleep(POLL_S)
            finally:
                listening.cancel()
                await client.delete_session(session)
                await connection.close()
    fps = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert fps >= MIN_FPS, f"{fps:.1f} fps received"
    steps = set(np.diff(stamps).tolist())
    assert steps == {VIDEO_CLOCK_HZ // VIDEO_FPS}, f"video timestamps step by {steps}"
    heard = np.concatenate(audio)
    level = 20 * np.log10(np.sqrt(np.mean(heard * heard)) + 1e-10)
    assert level > MIN_AUDIO_DBFS, f"received audio at {level:.1f} dBFS"
    assert chunks >= 1
    log = server.log_path.read_text()
    assert "omniavatar warm-up chunk 2/2" in log
    assert "pictures are noise" in log

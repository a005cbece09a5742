"""Engine time only for speech: four sessions at a 25 % duty cycle on one generation slot.

A puppet server with ``idle_mode: loop``, one generation slot and four sessions
(``max_sessions: 4``), driven over WebRTC by the load driver (``--duty-cycle 0.25``: push
sessions that each speak 2.24 s bursts, on average every 8.96 s, at seeded random times,
so bursts meet and wait for the slot). Every
speech chunk is generated (no chunk goes out idle for a problem; every burst starts and
ends, none is dropped), the engine generates only for speech plus each session's one rest chunk
(``headcast_chunks_total`` against the chunks played), every wait for the slot stays within
``speech_wait_max_s``, the luma jump into the first frame where the engine takes over from
the idle loop stays within the stream's own 99th percentile of frame-to-frame change (as
test_interrupt.py measures its hand-back), and a fifth session gets 429. The report goes to
``artifacts/duty_cycle.json``.

Tiny (FlashTalk's code) runs slower than real time on this machine's two cores, so it is
tested at the engine level: tests/unit/pipeline/test_reseed.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest

from headcast.pipeline.media import CHUNK_SECONDS
from headcast.streaming.generation_gate import LOOP_CHUNKS
from headcast_client import HeadcastClient, HeadcastError
from loadtests.driver import LoadPlan, LoadReport, run_load
from tests.integration.conftest import LOOPBACK_ONLY, run_server

pytestmark = pytest.mark.slow

SESSIONS = 4
DUTY_CYCLE = 0.25
BURST_S = 2 * CHUNK_SECONDS
DURATION_S = 20.0
SEED = 6
"""Random burst times with two bursts per session, three of them within 0.4 s (they wait
for the slot one after the other) and two pairs."""
SPEECH_WAIT_MAX_S = 5.0
MIN_FPS = 15.0
"""Clearly streaming on a loaded 2-core machine (25 fps sent; full rate: test_loadtests)."""
HTTP_TOO_MANY_REQUESTS = 429
POLL_S = 0.2
SETTINGS: dict[str, object] = {
    "ice_loopback_only": True,
    "idle_mode": "loop",
    "generation_slots": 1,
    "max_sessions": SESSIONS,
    "speech_wait_max_s": SPEECH_WAIT_MAX_S,
    "peer_timeout_s": 3.0,
    "height": 384,
    "width": 224,
}


async def _fifth_session_refused(url: str, run: asyncio.Task[LoadReport]) -> int:
    """Once the four sessions are up, ask for a fifth; returns its status."""
    async with HeadcastClient(url, host_candidates=LOOPBACK_ONLY) as client:
        deadline = time.monotonic() + 60.0
        while (await client.metrics()).get("headcast_sessions_active", 0.0) < SESSIONS:
            assert not run.done() and time.monotonic() < deadline, "the sessions never came up"
            await asyncio.sleep(POLL_S)
        try:
            session = await client.create_session(audio_source="push")
        except HeadcastError as exc:
            return exc.status
        await client.delete_session(session)
        return 201


async def test_four_sessions_at_a_quarter_duty_cycle_share_one_generation_slot(
    tmp_path: Path, artifacts_dir: Path
) -> None:
    plan_args = {"ramp_s": 0.2, "duty_cycle": DUTY_CYCLE, "burst_s": BURST_S, "seed": SEED}
    with run_server(tmp_path, **SETTINGS) as server:
        before = server.metrics()
        plan = LoadPlan(server.url, SESSIONS, DURATION_S, **plan_args)  # type: ignore[arg-type]
        run = asyncio.create_task(run_load(plan))
        fifth = await _fifth_session_refused(server.url, run)
        report = await run
        after = server.metrics()
        readiness = server.series()

    summary = "\n".join(report.summary_lines())
    duty = report.duty_summary()
    (artifacts_dir / "duty_cycle.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    assert fifth == HTTP_TOO_MANY_REQUESTS, summary
    assert [r.outcome for r in report.sessions] == ["ok"] * SESSIONS, summary
    assert duty is not None

    chunks_per_burst = math.ceil(BURST_S / CHUNK_SECONDS - 1e-9)
    for result in report.sessions:
        speech = result.speech
        assert speech is not None and result.fps is not None and result.fps >= MIN_FPS, summary
        # every speech chunk generated: every burst played whole, none dropped, no chunk
        # went out idle for a problem (late, engine busy, engine error)
        assert speech.bursts >= 2 and speech.started == speech.ended == speech.bursts, summary
        assert speech.dropped == 0 and speech.problems == {}, summary
        # the engine works only for speech (and, once, for the session's idle loop)
        assert speech.chunks_generated <= speech.bursts * chunks_per_burst + LOOP_CHUNKS, summary
        # waits within the bound, and the seam where the engine takes over
        assert speech.wait_max_ms is not None and speech.wait_max_ms <= SPEECH_WAIT_MAX_S * 1000
        assert speech.frame_change_p99 is not None and speech.resume_jumps, summary
        assert max(speech.resume_jumps) <= speech.frame_change_p99, summary
    assert duty["speech_wait_ms"]["max"] > 0, "some bursts met and waited for the slot"

    def delta(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    generated = sum(r.speech.chunks_generated for r in report.sessions if r.speech)
    played = sum(r.speech.chunks_played for r in report.sessions if r.speech)
    assert delta("headcast_chunks_total") == generated, summary
    assert generated <= played / 2, f"the engine worked for silence: {summary}"
    assert delta("headcast_speech_wait_seconds_count") == duty["speech_wait_ms"]["utterances"]
    assert delta("headcast_speech_dropped_total") == 0
    assert readiness['headcast_generation_slots{group="0"}'] == 1.0
    assert readiness['headcast_generation_slots_busy{group="0"}'] == 0.0, "all given back"

"""Engine groups end to end: real servers whose groups are real worker processes on the CPU.

``gpus`` on a host without CUDA lists CPU worker slots, so these run anywhere:

- two groups of one worker each serve two sessions at once over WebRTC, each session on its
  own group (least-loaded placement), and a third session gets 429 (capacity 2);
- a group of two gloo ranks running the engine in lockstep serves a session, the puppet at
  25 fps (``GLOO_GROUP_ENGINES``: the sequence-parallel tiny engine joins once it exists);
- SIGKILL of one group's worker ends that group's session with an ``engine_failed`` event,
  shows in ``/readyz`` and ``/metrics``, the other group's session streams on, and the group
  restarts and takes sessions again.

Every wait is bounded; measured figures go to ``artifacts/engine_groups.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from headcast_client import HeadcastClient, HeadcastError, WebRTCConnection
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer, run_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds workers in /proc"),
]

VIDEO_FPS = 25
MIN_FPS = 24.0
FPS_FRAMES = 3 * VIDEO_FPS + 1
"""Frames spanning 3 s of video, for a frame-rate measurement."""

FRAME_TIMEOUT_S = 30.0
EVENT_TIMEOUT_S = 20.0
GROUP_WAIT_S = 60.0
"""Longest wait for a group to change state (a restart starts a process)."""

POLL_S = 0.2
WORKER_MODULE = b"headcast.pipeline.group_worker"

GROUP_SERVER = {"ice_loopback_only": True, "peer_timeout_s": 3.0}
"""Settings every server here shares (env ``HEADCAST_<NAME>``)."""


def worker_pids(server: RunningServer, group: int) -> list[int]:
    """The server's worker processes of engine group ``group``, found in /proc by parent and
    command line (``python -m headcast.pipeline.group_worker --fd N --group G --rank R``)."""
    found: list[tuple[int, int]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if parent != server.process.pid or WORKER_MODULE not in argv:
            continue
        if argv[argv.index(b"--group") + 1] == str(group).encode():
            found.append((int(argv[argv.index(b"--rank") + 1]), int(entry.name)))
    return [pid for _rank, pid in sorted(found)]


def readyz(server: RunningServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/readyz", timeout=10.0).json()
    return body


def wait_for_group(server: RunningServer, index: int, state: str) -> dict[str, Any]:
    """``/readyz``'s entry of group ``index`` once it is in ``state`` (bounded)."""
    deadline = time.monotonic() + GROUP_WAIT_S
    while True:
        group: dict[str, Any] = readyz(server)["groups"][index]
        if group["state"] == state:
            return group
        if time.monotonic() > deadline:
            raise AssertionError(f"group {index} not {state} within {GROUP_WAIT_S} s: {group}")
        time.sleep(POLL_S)


def wait_for_every_group(server: RunningServer) -> list[dict[str, Any]]:
    """``/readyz``'s groups once every one is ready (the server is ready with the first)."""
    count = len(readyz(server)["groups"])
    return [wait_for_group(server, index, "ready") for index in range(count)]


async def frame_rate(connection: WebRTCConnection, frames: int = FPS_FRAMES) -> float:
    """Receive ``frames`` video frames; their rate in frames per second."""
    times = []
    for _ in range(frames):
        await asyncio.wait_for(connection.video.recv(), FRAME_TIMEOUT_S)
        times.append(time.monotonic())
    return (len(times) - 1) / (times[-1] - times[0])


def record(artifacts_dir: Path, name: str, figures: dict[str, Any]) -> None:
    path = artifacts_dir / "engine_groups.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report[name] = figures
    path.write_text(json.dumps(report, indent=2) + "\n")


async def serve_through_group(server: RunningServer) -> float:
    """One WebRTC session on the server's only group; the frame rate it receives."""
    async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY) as client:
        session = await client.create_session()
        connection = await client.connect_webrtc(session)
        try:
            await frame_rate(connection, VIDEO_FPS)  # the first second: start-up
            return await frame_rate(connection)
        finally:
            await client.delete_session(session)
            await connection.close()


async def test_two_groups_serve_two_sessions_at_once(tmp_path: Path, artifacts_dir: Path) -> None:
    with run_server(tmp_path, gpus="0,1", max_sessions=1, **GROUP_SERVER) as server:
        groups = wait_for_every_group(server)
        assert [(g["devices"], g["state"], g["capacity"]) for g in groups] == [
            (["cpu"], "ready", 1),
            (["cpu"], "ready", 1),
        ]
        assert len(worker_pids(server, 0)) == len(worker_pids(server, 1)) == 1
        async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY) as client:
            sessions = [await client.create_session() for _ in range(2)]
            assert [g["sessions"] for g in readyz(server)["groups"]] == [1, 1]  # least loaded
            with pytest.raises(HeadcastError) as refused:
                await client.create_session()
            assert refused.value.status == 429 and "(2 of 2)" in str(refused.value.problem)
            connections = [await client.connect_webrtc(s) for s in sessions]
            try:
                rates = await asyncio.gather(*(frame_rate(c, 2 * VIDEO_FPS) for c in connections))
            finally:
                for session, connection in zip(sessions, connections, strict=True):
                    await client.delete_session(session)
                    await connection.close()
        series = server.series()
        for group in ("0", "1"):
            assert series[f'headcast_chunks_total{{group="{group}"}}'] >= 1
            assert series[f'headcast_engine_group_ready{{group="{group}"}}'] == 1
        assert series["headcast_sessions_capacity"] == 2
    record(artifacts_dir, "two_groups_fps", {"fps": [round(r, 2) for r in rates]})


GLOO_GROUP_ENGINES = [
    pytest.param("puppet", {}, MIN_FPS, id="puppet"),
    pytest.param("tiny", {"height": 256, "width": 144}, None, id="tiny-sequence-parallel"),
]
"""(engine, its extra settings, the frame rate it must reach or ``None``) served by a group
of two gloo ranks. Every rank of the puppet draws the same frames; a sequence-parallel
engine joins here as e.g. ``("tiny", {"height": 256, "width": 144}, None)``."""


@pytest.mark.parametrize(("engine", "extra", "min_fps"), GLOO_GROUP_ENGINES)
async def test_a_group_of_two_gloo_ranks_serves_a_session(
    engine: str,
    extra: dict[str, object],
    min_fps: float | None,
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    settings = {"gpus": "0,1", "gpus_per_session": 2, **GROUP_SERVER, **extra}
    with run_server(tmp_path, engine=engine, **settings) as server:
        (group,) = readyz(server)["groups"]
        assert (group["devices"], group["state"]) == (["cpu", "cpu"], "ready")
        assert len(worker_pids(server, 0)) == 2
        fps = await serve_through_group(server)
        series = server.series()
        generated = series['headcast_chunks_total{group="0"}']
        late = series['headcast_chunk_errors_total{group="0",reason="late"}']
        assert generated >= 1  # chunks the group made reached the client's stream
        assert series['headcast_chunk_errors_total{group="0",reason="engine_error"}'] == 0
    figures = {
        "fps": round(fps, 2),
        "warmup_rtf": group["warmup_rtf"],
        "chunks_generated": generated,
        "chunks_late": late,
    }
    record(artifacts_dir, f"gloo_group_of_2_{engine}", figures)
    if min_fps is not None:
        assert fps >= min_fps, f"{fps:.2f} fps through a group of two gloo ranks"


async def test_a_killed_worker_ends_its_sessions_and_the_other_group_serves_on(
    tmp_path: Path, artifacts_dir: Path
) -> None:
    settings = {"gpus": "0,1", "max_sessions": 1, "group_restarts": 1, **GROUP_SERVER}
    with run_server(tmp_path, **settings) as server:
        wait_for_every_group(server)
        async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY) as client:
            doomed = await client.create_session()  # group 0: least loaded, lowest index
            spared = await client.create_session()  # group 1
            on_doomed = await client.connect_webrtc(doomed, events=True)
            on_spared = await client.connect_webrtc(spared, events=True)
            try:
                for connection in (on_doomed, on_spared):
                    await connection.events.wait_for("session.ready", EVENT_TIMEOUT_S)
                (victim,) = worker_pids(server, 0)
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)

                error = await on_doomed.events.wait_for("error", EVENT_TIMEOUT_S)
                told_s = time.monotonic() - killed_at
                assert error["code"] == "engine_failed", error
                cause = f"worker rank 0 (pid {victim}, cpu) was killed by SIGKILL"
                assert cause in error["message"], error
                fps = await frame_rate(on_spared)  # the other group streams on
                body = readyz(server)
                assert body["state"] == "ready" and body["groups"][1]["sessions"] == 1
                assert body["groups"][0]["failures"] == 1 and body["groups"][0]["sessions"] == 0
                assert "SIGKILL" in body["groups"][0]["last_failure"]
                failures = server.series()
                assert failures['headcast_engine_group_failures_total{group="0"}'] == 1
                assert failures['headcast_engine_group_failures_total{group="1"}'] == 0

                restarted = wait_for_group(server, 0, "ready")  # group_restarts: 1
                assert restarted["failures"] == 1 and worker_pids(server, 0) != [victim]
                again = await client.create_session()  # placed on the restarted group
                assert [g["sessions"] for g in readyz(server)["groups"]] == [1, 1]
                await client.delete_session(again)
            finally:
                await client.delete_session(spared)
                for connection in (on_doomed, on_spared):
                    await connection.close()
    figures = {"error_after_s": round(told_s, 3), "fps": round(fps, 2)}
    record(artifacts_dir, "killed_worker", figures)
    assert fps >= MIN_FPS, f"the spared group's session fell to {fps:.2f} fps"

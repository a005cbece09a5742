"""The live server against bad input and bad clients, then a check that nothing leaked.

Malformed SDP (400), unknown session (404), missing and wrong tokens (401, 403), a second
offer (409), capacity (429 + Retry-After), a client killed mid-stream without a DELETE (the
server notices and frees the slot; a new session then works), and finally the server's
thread and event-loop task counts back at their idle baseline. Runs against the shared
server of tests/integration/conftest.py; every test leaves it idle.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from headcast.pipeline.media import CHUNK_SECONDS
from headcast_client import HeadcastClient, HeadcastError
from tests.conftest import REPO_ROOT, client_offer
from tests.integration.conftest import LOOPBACK_ONLY, SHARED_SERVER_SETTINGS, RunningServer

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

PROBLEM = "application/problem+json"
IDLE_TIMEOUT_S = 30.0
"""Longest wait for the server to drop back to idle (sessions, threads, tasks)."""

POLL_S = 0.25
VANISH_RELEASE_LIMIT_S = float(SHARED_SERVER_SETTINGS["peer_timeout_s"]) + 10.0  # type: ignore[arg-type]
"""A vanished client's session must be released within the peer timeout plus this slack."""

CHILD_CONNECT_TIMEOUT_S = 90.0

VANISHING_CLIENT = """
import asyncio, sys
import numpy as np
from headcast_client import ArrayAudioTrack, HeadcastClient
from headcast.streaming.ice import HostCandidatePolicy

async def main(url):
    client = HeadcastClient(url, host_candidates=HostCandidatePolicy(loopback_only=True))
    session = await client.create_session()
    t = np.arange(48_000 * 30) / 48_000
    mic = ArrayAudioTrack((0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32))
    connection = await client.connect_webrtc(session, mic)
    for _ in range(30):  # receive ~1.2 s of video, then announce and keep streaming
        await connection.video.recv()
    print("STREAMING", session.id, flush=True)
    while True:
        await connection.video.recv()

asyncio.run(main(sys.argv[1]))
"""


@dataclass(frozen=True)
class Baseline:
    threads: float
    tasks: float


def _wait_until(description: str, check: object, timeout_s: float = IDLE_TIMEOUT_S) -> float:
    """Poll ``check()`` until truthy; return the seconds it took, fail with the last value."""
    started = time.monotonic()
    value = None
    while time.monotonic() - started < timeout_s:
        value = check()  # type: ignore[operator]
        if value:
            return time.monotonic() - started
        time.sleep(POLL_S)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {description} (last: {value!r})"
    )


def _idle(server: RunningServer) -> bool:
    return server.metric("headcast_sessions_active") == 0


@pytest.fixture(scope="module")
def baseline(headcast_server: RunningServer) -> Baseline:
    """The idle server's thread and task counts, before this module's sessions."""
    _wait_until("the server to be idle", lambda: _idle(headcast_server))
    metrics = headcast_server.metrics()
    return Baseline(metrics["headcast_process_threads"], metrics["headcast_event_loop_tasks"])


def _assert_problem(error: HeadcastError | httpx.Response, status: int, slug: str) -> None:
    if isinstance(error, httpx.Response):
        assert error.status_code == status, error.text
        assert error.headers["content-type"] == PROBLEM
        body = error.json()
    else:
        assert error.status == status, error.problem
        body = error.problem
    assert body["status"] == status and body["type"].endswith(slug), body


async def test_malformed_sdp_is_400(headcast_server: RunningServer, baseline: Baseline) -> None:
    async with HeadcastClient(headcast_server.url) as client:
        session = await client.create_session()
        try:
            for sdp in ("garbage", "v=0\r\nm=audio x\r\n", await client_offer(video=False)):
                with pytest.raises(HeadcastError) as info:
                    await client.post_offer(session, sdp)
                _assert_problem(info.value, 400, "bad-offer")
            assert "video" in info.value.problem["detail"]  # the audio-only offer says why
        finally:
            await client.delete_session(session)


async def test_unknown_session_missing_and_wrong_token(
    headcast_server: RunningServer, baseline: Baseline
) -> None:
    url = headcast_server.url
    async with HeadcastClient(url) as client, httpx.AsyncClient(base_url=url) as http:
        session = await client.create_session()
        other = await client.create_session()
        try:
            offer = {"sdp": "v=0", "type": "offer"}
            bearer = {"Authorization": f"Bearer {session.token}"}
            _assert_problem(
                await http.post("/v1/sessions/no-such-id/offer", json=offer, headers=bearer),
                404,
                "unknown-session",
            )
            _assert_problem(
                await http.delete("/v1/sessions/no-such-id", headers=bearer), 404, "unknown-session"
            )
            missing = await http.post(f"/v1/sessions/{session.id}/offer", json=offer)
            _assert_problem(missing, 401, "unauthorized")
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = {"Authorization": f"Bearer {other.token}"}
            _assert_problem(
                await http.post(f"/v1/sessions/{session.id}/offer", json=offer, headers=wrong),
                403,
                "forbidden",
            )
            _assert_problem(
                await http.delete(f"/v1/sessions/{session.id}", headers=wrong), 403, "forbidden"
            )
        finally:
            await client.delete_session(session)
            await client.delete_session(other)


async def test_second_offer_is_409(headcast_server: RunningServer, baseline: Baseline) -> None:
    async with HeadcastClient(headcast_server.url, host_candidates=LOOPBACK_ONLY) as client:
        session = await client.create_session()
        connection = await client.connect_webrtc(session)  # receive-only
        try:
            await asyncio.wait_for(connection.video.recv(), 30.0)
            with pytest.raises(HeadcastError) as info:
                await client.post_offer(session, connection.pc.localDescription.sdp)
            _assert_problem(info.value, 409, "already-connected")
        finally:
            await client.delete_session(session)
            await connection.close()


async def test_capacity_is_429_with_retry_after(
    headcast_server: RunningServer, baseline: Baseline
) -> None:
    slots = int(SHARED_SERVER_SETTINGS["max_sessions"])  # type: ignore[call-overload]
    async with HeadcastClient(headcast_server.url) as client:
        sessions = [await client.create_session() for _ in range(slots)]
        try:
            with pytest.raises(HeadcastError) as info:
                await client.create_session()
            _assert_problem(info.value, 429, "capacity")
            assert int(info.value.headers["retry-after"]) > 0
        finally:
            for session in sessions:
                await client.delete_session(session)
        again = await client.create_session()  # a freed slot can be taken again
        await client.delete_session(again)


async def test_a_vanished_client_is_released_and_a_new_session_works(
    headcast_server: RunningServer, baseline: Baseline, tmp_path: Path
) -> None:
    _wait_until("the server to be idle", lambda: _idle(headcast_server))
    child_log = tmp_path / "vanishing-client.log"
    with child_log.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", VANISHING_CLIENT, headcast_server.url],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(
            asyncio.to_thread(child.stdout.readline), CHILD_CONNECT_TIMEOUT_S
        )
        assert line.startswith("STREAMING"), f"the client failed: {child_log.read_text()[-2000:]}"
        streaming = headcast_server.metrics()
        chunks_before = streaming["headcast_chunks_total"]
        assert streaming["headcast_sessions_active"] == 1
        # a live session shows in the counts the leak check below compares with the baseline
        assert streaming["headcast_event_loop_tasks"] > baseline.tasks
        assert streaming["headcast_process_threads"] > baseline.threads  # its audio decoder
    finally:
        child.kill()  # SIGKILL: no DELETE, no DTLS close, nothing
        child.wait(10)
    released_after = _wait_until(
        "the vanished client's session to be released",
        lambda: _idle(headcast_server),
        VANISH_RELEASE_LIMIT_S,
    )
    # the dead session's chunks stopped: the engine is not working for nobody
    chunks_after_release = headcast_server.metric("headcast_chunks_total")
    assert chunks_after_release > chunks_before, "the session was streaming until the kill"
    await asyncio.sleep(2 * CHUNK_SECONDS)
    assert headcast_server.metric("headcast_chunks_total") == chunks_after_release

    async with HeadcastClient(headcast_server.url, host_candidates=LOOPBACK_ONLY) as client:
        session = await client.create_session()
        connection = await client.connect_webrtc(session)
        try:
            for _ in range(10):
                frame = await asyncio.wait_for(connection.video.recv(), 30.0)
            assert (frame.width, frame.height) == (448, 768)
        finally:
            await client.delete_session(session)
            await connection.close()
    logger.info("the vanished client's session was released %.1f s after the kill", released_after)


def test_no_threads_or_tasks_leak(headcast_server: RunningServer, baseline: Baseline) -> None:
    observed: list[tuple[float, float, float]] = []

    def back_to_baseline() -> bool:
        metrics = headcast_server.metrics()
        observed.append(
            (
                metrics["headcast_sessions_active"],
                metrics["headcast_process_threads"],
                metrics["headcast_event_loop_tasks"],
            )
        )
        return observed[-1] == (0, baseline.threads, baseline.tasks)

    try:
        _wait_until("threads and tasks back at the idle baseline", back_to_baseline)
    except AssertionError:
        pytest.fail(
            f"baseline threads/tasks {baseline}; last (sessions, threads, tasks) seen: "
            f"{observed[-3:]}\n{headcast_server.log_tail(40)}"
        )

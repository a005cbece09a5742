"""Sessions end on their own on a live server: no-show, idle, maximum duration, shutdown.

One server for the module, with limits of seconds (``LIFECYCLE_SETTINGS``). Each timeout
test opens a session, lets one limit run out and asserts that the session is released within
a bounded time of that limit -- ``headcast_sessions_active`` drops and the id answers 404 --
and that the client's peer connection is closed by the server. The last test sends the
server SIGTERM with a live session and checks the shutdown released it (it stops the
module's server, so it must stay last).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from aiortc.mediastreams import MediaStreamError

from headcast_client import HeadcastClient, SessionInfo, WebRTCConnection
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer, run_server

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

NO_SHOW_S = 2.0
IDLE_S = 3.0
MAX_DURATION_S = 11.0
LIFECYCLE_SETTINGS: dict[str, object] = {
    "ice_loopback_only": True,
    "max_sessions": 2,
    "peer_timeout_s": 3.0,
    "session_token_ttl_s": 60.0,
    "no_show_timeout_s": NO_SHOW_S,
    "idle_timeout_s": IDLE_S,
    "max_duration_s": MAX_DURATION_S,
}
"""The module server's settings: every limit a few seconds."""

EARLY_S = 0.3
"""How much earlier than its limit a release may be observed (timer and clock granularity)."""

RELEASE_SLACK_S = 2.5
"""How much later than its limit a session must be released (closing the peer connection,
a busy 2-core machine, the polling interval)."""

POLL_S = 0.1
KEEP_ALIVE_EVERY_S = 1.0
KEEP_ALIVES_PAST_IDLE = 4
"""Keep-alives sent 1 s apart: 4 s of a session that would have gone idle after 3 s (and the
idle release, 3 s later, still comes well before the maximum duration)."""

CONNECT_TIMEOUT_S = 60.0
PEER_CLOSED_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
GRACEFUL_EXIT_CODES = (0, -signal.SIGTERM)
"""uvicorn shuts down gracefully on SIGTERM, then re-raises the signal (exit -15)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(tmp_path_factory.mktemp("lifecycle"), **LIFECYCLE_SETTINGS) as running:
        yield running


def _active(server: RunningServer) -> float:
    return server.metric("headcast_sessions_active")


def _wait_released(server: RunningServer, session: SessionInfo, limit_s: float) -> float:
    """Poll ``/metrics`` (not client activity) until no session holds a slot; return when."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        seen = time.monotonic()
        if _active(server) == 0:
            return seen
        time.sleep(POLL_S)
    raise AssertionError(f"session {session.id} still alive after {limit_s:.1f} s")


def _assert_released(server: RunningServer, session: SessionInfo) -> None:
    """The session is gone everywhere: its id is 404 for every route, no slot is held."""
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        for method, path in (("DELETE", ""), ("POST", "/keepalive")):
            response = http.request(
                method, f"/v1/sessions/{session.id}{path}", headers=session.auth_header
            )
            assert response.status_code == 404, response.text
            assert response.json()["type"].endswith(":unknown-session")
    assert _active(server) == 0


async def _assert_peer_closed(connection: WebRTCConnection) -> None:
    """The server closed the client's peer connection: its video track ends."""

    async def drain() -> None:
        while True:
            await connection.video.recv()

    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(drain(), PEER_CLOSED_TIMEOUT_S)


async def _connect(client: HeadcastClient) -> tuple[SessionInfo, WebRTCConnection, float]:
    created_at = time.monotonic()
    session = await client.create_session()
    connection = await client.connect_webrtc(session)  # receive-only: no audio activity
    await asyncio.wait_for(connection.video.recv(), CONNECT_TIMEOUT_S)
    return session, connection, created_at


def _log(server: RunningServer) -> str:
    return server.log_path.read_text(encoding="utf-8", errors="replace")


def test_open_mode_says_so_in_the_log(server: RunningServer) -> None:
    log = _log(server)
    assert "OPEN MODE: no API keys are configured (HEADCAST_API_KEYS)" in log
    assert "API keys required" not in log


async def test_a_session_without_a_connection_is_released_after_the_no_show_limit(
    server: RunningServer,
) -> None:
    async with HeadcastClient(server.url) as client:
        created_at = time.monotonic()
        session = await client.create_session()
    assert _active(server) == 1
    released_at = await asyncio.to_thread(
        _wait_released, server, session, NO_SHOW_S + RELEASE_SLACK_S
    )
    after = released_at - created_at
    assert NO_SHOW_S - EARLY_S <= after <= NO_SHOW_S + RELEASE_SLACK_S, after
    _assert_released(server, session)
    assert f"session {session.id}: no-show" in _log(server)
    logger.info("no-show session released %.2f s after creation (limit %.1f s)", after, NO_SHOW_S)


async def test_keep_alives_hold_an_idle_session_then_the_idle_limit_releases_it(
    server: RunningServer,
) -> None:
    async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY) as client:
        session, connection, created_at = await _connect(client)
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
                last_keep_alive = time.monotonic()
                for _ in range(KEEP_ALIVES_PAST_IDLE):
                    await asyncio.sleep(KEEP_ALIVE_EVERY_S)
                    response = await http.post(
                        f"/v1/sessions/{session.id}/keepalive", headers=session.auth_header
                    )
                    assert response.status_code == 204, response.text
                    last_keep_alive = time.monotonic()
            assert last_keep_alive - created_at > IDLE_S + 1.0  # it would have idled out by now
            assert _active(server) == 1
            released_at = await asyncio.to_thread(
                _wait_released, server, session, IDLE_S + RELEASE_SLACK_S
            )
            after = released_at - last_keep_alive
            assert IDLE_S - EARLY_S <= after <= IDLE_S + RELEASE_SLACK_S, after
            assert released_at - created_at < MAX_DURATION_S  # idle, not the duration limit
            _assert_released(server, session)
            await _assert_peer_closed(connection)
        finally:
            await connection.close()
    assert f"session {session.id}: idle: no client activity for {IDLE_S:g} s" in _log(server)
    logger.info(
        "idle session released %.2f s after its last keep-alive (limit %.1f s)", after, IDLE_S
    )


async def test_an_active_session_is_released_at_the_maximum_duration(
    server: RunningServer,
) -> None:
    async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY) as client:
        session, connection, created_at = await _connect(client)
        try:
            # keep-alives every second (well inside the idle limit) until the server ends it
            released_at = await asyncio.to_thread(
                _keep_alive_until_released, server, session, MAX_DURATION_S + RELEASE_SLACK_S
            )
            after = released_at - created_at
            assert MAX_DURATION_S - EARLY_S <= after <= MAX_DURATION_S + RELEASE_SLACK_S, after
            _assert_released(server, session)
            await _assert_peer_closed(connection)
        finally:
            await connection.close()
    assert f"session {session.id}: reached the maximum session duration" in _log(server)
    logger.info(
        "session released %.2f s after creation (max duration %.1f s)", after, MAX_DURATION_S
    )


def _keep_alive_until_released(
    server: RunningServer, session: SessionInfo, limit_s: float
) -> float:
    deadline = time.monotonic() + limit_s
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        next_keep_alive = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_keep_alive:
                status = http.post(
                    f"/v1/sessions/{session.id}/keepalive", headers=session.auth_header
                ).status_code
                if status == 404:
                    return now
                assert status == 204, status
                next_keep_alive = now + KEEP_ALIVE_EVERY_S
            if _active(server) == 0:
                return time.monotonic()
            time.sleep(POLL_S)
    raise AssertionError(f"session {session.id} still alive after {limit_s:.1f} s")


async def test_shutdown_releases_a_live_session(server: RunningServer) -> None:
    """Last: stops the module's server (SIGTERM) while a session streams."""
    async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY) as client:
        session, connection, _ = await _connect(client)
        try:
            assert _active(server) == 1
            stopping_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.process.wait, STOP_TIMEOUT_S)
            stopped_after = time.monotonic() - stopping_at
            await _assert_peer_closed(connection)
        finally:
            await connection.close()
    assert code in GRACEFUL_EXIT_CODES, server.log_tail()
    log = _log(server)
    assert f"session {session.id} closed (the server is shutting down)" in log
    assert f"session {session.id} released (the server is shutting down); 0 active" in log
    assert "runtime stopped" in log
    logger.info("shutdown with a live session took %.2f s", stopped_after)

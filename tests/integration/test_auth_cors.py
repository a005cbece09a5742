"""API keys, session tokens and CORS on a live server.

One server for the module with two API keys, one allowed browser origin and a short token
lifetime (``AUTH_SETTINGS``). Creating a session without a key or with a wrong one is 401, a
valid key gets a session whose token streams video over WebRTC; the Python client and the
load driver send a configured key; another session's token is 403; once the token has
expired it still controls the connected session (a second offer is 409, not 401); refusals are
counted by reason. CORS headers go to the allowed origin only. The log says keys are
required and never shows a key or a token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from headcast_client import HeadcastClient, HeadcastError, SessionInfo
from loadtests.driver import LoadPlan, run_load
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer, run_server

pytestmark = pytest.mark.slow

KEY = "integration-key-one-0123456789"
OTHER_KEY = "integration-key-two-9876543210"
ALLOWED_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
TOKEN_TTL_S = 5.0
"""Long enough to create, offer and connect on a busy 2-core machine; short enough to wait out."""

AUTH_SETTINGS: dict[str, object] = {
    "ice_loopback_only": True,
    "max_sessions": 3,
    "peer_timeout_s": 3.0,
    "session_token_ttl_s": TOKEN_TTL_S,
    "api_keys": f"{KEY},{OTHER_KEY}",
    "cors_allow_origins": ALLOWED_ORIGIN,
}
"""The module server's settings (``HEADCAST_API_KEYS`` is comma-separated)."""

PROBLEM = "application/problem+json"
RECV_TIMEOUT_S = 30.0
EXPIRY_MARGIN_S = 0.3
IDLE_TIMEOUT_S = 30.0
POLL_S = 0.2
LOAD_DURATION_S = 2.0
"""How long the keyed load-driver session streams."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(tmp_path_factory.mktemp("auth"), **AUTH_SETTINGS) as running:
        yield running


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def _rejected(server: RunningServer, reason: str) -> float:
    return server.metric(f'headcast_sessions_rejected_total{{reason="{reason}"}}')


def _assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status and str(body["type"]).endswith(":" + slug), body
    return body


def _session(body: dict[str, object]) -> SessionInfo:
    return SessionInfo(
        id=str(body["id"]),
        token=str(body["token"]),
        expires_at=datetime.fromisoformat(str(body["expires_at"])),
        ice_servers=list(body["ice_servers"]),  # type: ignore[call-overload]
    )


def _create(http: httpx.Client, key: str = KEY) -> SessionInfo:
    response = http.post("/v1/sessions", json={}, headers=_bearer(key))
    assert response.status_code == 201, response.text
    return _session(response.json())


def _wait_idle(server: RunningServer) -> None:
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while server.metric("headcast_sessions_active") and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert server.metric("headcast_sessions_active") == 0


def test_creating_a_session_needs_a_valid_api_key(server: RunningServer) -> None:
    before = _rejected(server, "auth")
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        missing = http.post("/v1/sessions", json={})
        _assert_problem(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = http.post("/v1/sessions", json={}, headers=_bearer("not-a-configured-key-123"))
        body = _assert_problem(wrong, 401, "unauthorized")
        assert "HEADCAST_API_KEYS" in str(body["detail"])
        basic = http.post("/v1/sessions", json={}, headers={"Authorization": f"Basic {KEY}"})
        _assert_problem(basic, 401, "unauthorized")
        assert server.metric("headcast_sessions_active") == 0
        assert _rejected(server, "auth") == before + 3

        sessions = [_create(http, KEY), _create(http, OTHER_KEY)]  # either key works
        for session in sessions:
            assert (
                http.delete(f"/v1/sessions/{session.id}", headers=session.auth_header).status_code
                == 204
            )
    assert _rejected(server, "auth") == before + 3
    assert _rejected(server, "capacity") == 0 and _rejected(server, "not_ready") == 0


def test_another_sessions_token_is_403(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        mine, theirs = _create(http), _create(http)
        before = _rejected(server, "auth")
        try:
            offer = {"sdp": "v=0", "type": "offer"}
            for method, path, kwargs in (
                ("POST", "/offer", {"json": offer}),
                ("POST", "/keepalive", {}),
                ("DELETE", "", {}),
            ):
                response = http.request(
                    method, f"/v1/sessions/{mine.id}{path}", headers=theirs.auth_header, **kwargs
                )
                _assert_problem(response, 403, "forbidden")
            # an API key is not a session token
            _assert_problem(
                http.post(f"/v1/sessions/{mine.id}/offer", json=offer, headers=_bearer(KEY)),
                401,
                "unauthorized",
            )
            assert _rejected(server, "auth") == before + 4
            assert server.metric("headcast_sessions_active") == 2  # nothing was deleted
        finally:
            for session in (mine, theirs):
                http.delete(f"/v1/sessions/{session.id}", headers=session.auth_header)


async def test_a_valid_key_and_token_stream_then_the_expired_token_only_controls(
    server: RunningServer,
) -> None:
    await asyncio.to_thread(_wait_idle, server)
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        session = _create(http)
    remaining_s = (session.expires_at - datetime.now(UTC)).total_seconds()
    assert 0 < remaining_s <= TOKEN_TTL_S + 1
    async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY) as client:
        connection = await client.connect_webrtc(session)
        try:
            frame = await asyncio.wait_for(connection.video.recv(), RECV_TIMEOUT_S)
            assert (frame.width, frame.height) == (448, 768)
            wait_s = (session.expires_at - datetime.now(UTC)).total_seconds() + EXPIRY_MARGIN_S
            await asyncio.sleep(max(0.0, wait_s))
            before = _rejected(server, "auth")
            async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
                # a connected session's token still authorises its own offer (a push
                # session's first one, issue 16); this one is a second offer: 409
                again = await http.post(
                    f"/v1/sessions/{session.id}/offer",
                    json={"sdp": connection.pc.localDescription.sdp, "type": "offer"},
                    headers=session.auth_header,
                )
                _assert_problem(again, 409, "already-connected")
                assert _rejected(server, "auth") == before
                # the session outlives its token: it still streams and the token controls it
                await asyncio.wait_for(connection.video.recv(), RECV_TIMEOUT_S)
                keep_alive = await http.post(
                    f"/v1/sessions/{session.id}/keepalive", headers=session.auth_header
                )
                assert keep_alive.status_code == 204, keep_alive.text
                deleted = await http.delete(
                    f"/v1/sessions/{session.id}", headers=session.auth_header
                )
                assert deleted.status_code == 204, deleted.text
        finally:
            await connection.close()
    assert server.metric("headcast_sessions_active") == 0


def test_cors_headers_go_to_the_allowed_origin_only(server: RunningServer) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        allowed = http.options("/v1/sessions", headers={"Origin": ALLOWED_ORIGIN, **preflight})
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()

        refused = http.options("/v1/sessions", headers={"Origin": OTHER_ORIGIN, **preflight})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers

        # a real cross-origin answer, here a 401 problem, is readable by the allowed page only
        answer = http.post("/v1/sessions", json={}, headers={"Origin": ALLOWED_ORIGIN})
        assert answer.status_code == 401
        assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "retry-after" in exposed and "www-authenticate" in exposed
        other = http.post("/v1/sessions", json={}, headers={"Origin": OTHER_ORIGIN})
        assert other.status_code == 401
        assert "access-control-allow-origin" not in other.headers
        same_origin = http.get("/readyz")
        assert "access-control-allow-origin" not in same_origin.headers


def test_the_log_says_keys_are_required_and_shows_no_secret(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        session = _create(http)
        # a URL carrying the token, as a WebSocket connect does, is logged redacted
        http.get(f"/healthz?token={session.token}")
        http.delete(f"/v1/sessions/{session.id}", headers=session.auth_header)
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "API keys required" in log and "2 key(s) configured" in log
    assert "OPEN MODE" not in log
    assert f"CORS: cross-origin calls allowed from {ALLOWED_ORIGIN}" in log
    assert "/healthz?token=[redacted]" in log
    for secret in (KEY, OTHER_KEY, session.token, session.token.rsplit(".", 1)[-1]):
        assert secret not in log


async def test_the_python_client_and_load_driver_send_the_api_key(server: RunningServer) -> None:
    await asyncio.to_thread(_wait_idle, server)
    async with HeadcastClient(server.url) as keyless:
        with pytest.raises(HeadcastError) as refused:
            await keyless.create_session()
    assert refused.value.status == 401
    assert "needs an API key: send 'Authorization: Bearer <API key>'" in str(refused.value)
    async with HeadcastClient(server.url, api_key=OTHER_KEY) as client:
        session = await client.create_session()
        await client.delete_session(session)

    report = await run_load(LoadPlan(server.url, 1, LOAD_DURATION_S, api_key=KEY))

    summary = "\n".join(report.summary_lines())
    (result,) = report.sessions
    assert result.outcome == "ok" and result.frames > 0, summary
    assert KEY not in summary and KEY not in repr(report.plan)
    assert KEY not in json.dumps(report.as_dict())  # the --json report file

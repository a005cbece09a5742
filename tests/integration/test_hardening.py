"""What an attacker or a careless client sends, against a live server (issue 16).

One puppet server for the module with an API key, a short token lifetime and a 1 s
request-head timeout (``HARDENING_SETTINGS``):

- 50 MB bodies, declared or chunked, to every endpoint: 413 (or the 401 / 404 that comes
  first, without reading the body), each answered fast while a WebRTC call on the same
  server keeps 25 fps with no late frame;
- malformed session tokens (non-ASCII, Unicode digits, 300 characters) on the HTTP routes and
  the audio WebSocket: 401 / 4401, counted as auth refusals, never a 500 or a 403;
- offers fuzzed by hypothesis from a real offer (lines dropped, repeated, changed, direction
  attributes removed): always an answer or a 400/422 problem, never a 500 or exception text;
- a connection that sends no request, half a request head, or a trickle of one: closed
  after the head timeout;
- the audio WebSocket: an empty binary frame is refused, a third socket on one session is
  refused (4409, ``too_many_sockets``) until one closes, a client that never reads its
  socket is dropped with one warning; a push session whose token expired after its socket
  connected can still send its own WebRTC offer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest
import websockets
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from headcast_client import ArrayAudioTrack, HeadcastClient, PushSocket
from loadtests.speech import speech_like
from tests.conftest import client_offer
from tests.integration.conftest import LOOPBACK, LOOPBACK_ONLY, RunningServer, run_server

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

KEY = "hardening-key-0123456789abcdef"
TOKEN_TTL_S = 5.0
HEADER_TIMEOUT_S = 1.0
HARDENING_SETTINGS: dict[str, object] = {
    "ice_loopback_only": True,
    "max_sessions": 3,
    "peer_timeout_s": 3.0,
    "session_token_ttl_s": TOKEN_TTL_S,
    "api_keys": KEY,
    "http_header_timeout_s": HEADER_TIMEOUT_S,
}

PROBLEM = "application/problem+json"
BIG_BYTES = 50 * 2**20
"""The size of the bodies the issue sent (50 MB)."""

UPLOAD_PIECE_BYTES = 64 * 1024
MAX_ANSWER_S = 1.0
"""Longest wait for the answer to a 50 MB request: the server answers from the headers (or
the first kilobytes), not after the 50 MB."""

PARALLEL_UPLOADS = 4
UPLOAD_ROUNDS = 3
"""The uploads are sent this many times over, so the call is watched for a few seconds."""
MIN_CALL_FPS = 23.0
"""Received frame rate the concurrent call must keep during the uploads (25 sent)."""

SPEECH_S = 4.0
MIC_RATE_HZ = 48_000
RECV_TIMEOUT_S = 30.0
CLOSE_SLACK_S = 3.0
"""How much later than the head timeout a stalled connection may be closed."""

TRICKLE_PAUSE_S = 0.3
OFFER_FUZZ_EXAMPLES = 20
NON_READING_FRAMES = 20_000
"""Binary frames a client that never reads sends: far more replies than the server queues
(512) plus what the socket buffers hold."""

SMALL_RECEIVE_BUFFER_BYTES = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(tmp_path_factory.mktemp("hardening"), **HARDENING_SETTINGS) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[HeadcastClient]:
    async with HeadcastClient(server.url, host_candidates=LOOPBACK_ONLY, api_key=KEY) as c:
        yield c


def _bearer(credential: str | bytes) -> dict[str, str | bytes]:
    prefix = b"Bearer " if isinstance(credential, bytes) else "Bearer "
    return {"Authorization": prefix + credential}  # type: ignore[operator]


def _rejected_auth(server: RunningServer) -> float:
    return server.metric('headcast_sessions_rejected_total{reason="auth"}')


def _assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"].endswith(":" + slug), response.text[:300]


# -- 50 MB bodies ---------------------------------------------------------------------------


async def _receive_frames(track: MediaStreamTrack, times: list[float]) -> None:
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
        times.append(time.monotonic())


async def _upload(
    port: int, path: str, headers: dict[str, str], *, chunked: bool
) -> tuple[int, float]:
    """POST a 50 MB JSON body to ``path`` the way a client that keeps sending does: the body
    goes out until the answer's status line arrives. Returns (status, seconds to the answer).
    """
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    started = time.monotonic()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BIG_BYTES}"
    head = [f"POST {path} HTTP/1.1", f"Host: {LOOPBACK}", framing]
    head += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n"))
    piece = b'{"avatar": "' + b"a" * UPLOAD_PIECE_BYTES
    if chunked:
        piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    try:
        sent = 0
        while not answer.done() and sent < BIG_BYTES:
            writer.write(piece)
            await writer.drain()
            sent += UPLOAD_PIECE_BYTES
        status_line = await asyncio.wait_for(answer, MAX_ANSWER_S)
        return int(status_line.split()[1]), time.monotonic() - started
    finally:
        answer.cancel()
        writer.close()


async def test_50_mb_bodies_are_refused_fast_while_a_call_keeps_its_rate(
    server: RunningServer, client: HeadcastClient
) -> None:
    mic = ArrayAudioTrack(speech_like(SPEECH_S, MIC_RATE_HZ), MIC_RATE_HZ, loop=True)
    call = await client.create_session()
    connection = await client.connect_webrtc(call, mic)
    times: list[float] = []
    video = asyncio.ensure_future(_receive_frames(connection.video, times))
    audio = asyncio.ensure_future(_receive_frames(connection.audio, []))
    other = await client.create_session(audio_source="push")
    other_socket = await client.push_socket(other)  # connected: outlives its 5 s token
    json_type = {"Content-Type": "application/json"}
    key, own = _bearer(KEY), _bearer(other.token)
    uploads: list[tuple[str, str, dict[str, str], bool, int]] = [
        ("declared, no key", "/v1/sessions", json_type, False, 413),
        ("declared, key", "/v1/sessions", {**json_type, **key}, False, 413),
        ("declared, unknown session", "/v1/sessions/nope/offer", json_type, False, 413),
        ("declared, own offer", f"/v1/sessions/{other.id}/offer", {**json_type, **own}, False, 413),
        ("declared, interrupt", f"/v1/sessions/{other.id}/interrupt", own, False, 413),
        ("chunked, no key", "/v1/sessions", json_type, True, 401),
        ("chunked, key", "/v1/sessions", {**json_type, **key}, True, 413),
        ("chunked, unknown session", "/v1/sessions/nope/offer", json_type, True, 404),
        ("chunked, own offer", f"/v1/sessions/{other.id}/offer", {**json_type, **own}, True, 413),
    ]  # fmt: skip

    async def send(
        name: str, path: str, headers: dict[str, str], chunked: bool, status: int
    ) -> None:
        got, took = await _upload(server.port, path, headers, chunked=chunked)
        assert got == status, name
        assert took < MAX_ANSWER_S, f"{name}: answered after {took:.2f} s"

    try:
        while len(times) < 2 * 25:  # streaming steadily for 2 s first
            await asyncio.sleep(0.1)
            assert not video.done(), "the call ended before the uploads"
        late_before = server.metric("headcast_frames_late_total")
        flood_started = time.monotonic()
        for _ in range(UPLOAD_ROUNDS):
            for start in range(0, len(uploads), PARALLEL_UPLOADS):
                await asyncio.gather(*(send(*u) for u in uploads[start : start + PARALLEL_UPLOADS]))
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
            assert (await http.get("/healthz")).status_code == 200
        flood_ended = time.monotonic()
        await asyncio.sleep(1.0)  # frames due during the uploads have arrived
        window = [t for t in times if flood_started - 1.0 <= t <= flood_ended + 1.0]
        fps = (len(window) - 1) / (window[-1] - window[0])
        assert fps >= MIN_CALL_FPS, f"{fps:.1f} fps during the uploads"
        assert server.metric("headcast_frames_late_total") == late_before, "late frames"
        assert server.metric("headcast_sessions_active") == 2, "no upload created a session"
    finally:
        video.cancel()
        audio.cancel()
        mic.stop()
        await asyncio.gather(video, audio, return_exceptions=True)
        await client.delete_session(call)
        await client.delete_session(other)
        await other_socket.close()
        await connection.close()


# -- malformed tokens -------------------------------------------------------------------------


async def test_malformed_tokens_are_401_and_4401_and_counted(
    server: RunningServer, client: HeadcastClient
) -> None:
    session = await client.create_session(audio_source="push")
    ident, expiry, signature = session.token.split(".")
    try:
        before = _rejected_auth(server)
        bad_headers = [
            "é".encode("latin-1") + session.token.encode(),  # as the issue sent it
            "é".encode() + session.token.encode(),  # UTF-8 bytes: latin-1 "Ã©" on the server
            f"{ident}.²³.{signature}".encode(),
        ]
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
            for credential in bad_headers:
                for method, path in (
                    ("POST", "/keepalive"),
                    ("POST", "/interrupt"),
                    ("DELETE", ""),
                ):
                    response = await http.request(
                        method, f"/v1/sessions/{session.id}{path}", headers=_bearer(credential)
                    )
                    _assert_problem(response, 401, "unauthorized")
                    assert "Error" not in response.text
                response = await http.post(
                    f"/v1/sessions/{session.id}/offer",
                    json={"sdp": "v=0", "type": "offer"},
                    headers=_bearer(credential),
                )
                _assert_problem(response, 401, "unauthorized")
        assert _rejected_auth(server) == before + 4 * len(bad_headers)

        url = client.audio_socket_url(session).split("?")[0]
        for token in (f"{ident}.²³.{signature}", "é" + session.token, session.token + "A" * 300):
            async with await PushSocket.connect(f"{url}?token={quote(token)}", 10.0) as sock:
                error = await sock.events.wait_for("error", 10.0)
                code = await sock.wait_closed(10.0)
            assert (code, error["code"]) == (4401, "unauthorized"), (token[:20], code, error)
        assert _rejected_auth(server) == before + 4 * len(bad_headers) + 3
        assert "Traceback" not in server.log_tail(400)
    finally:
        await client.delete_session(session)


# -- offers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_offer_lines() -> list[str]:
    return asyncio.run(client_offer()).splitlines()


DIRECTIONS = ("a=sendrecv", "a=recvonly", "a=sendonly", "a=inactive")
SDP_NOISE = st.one_of(
    st.sampled_from(["a=sendrecv", "a=inactive", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video x",
                     "c=IN IP4 999.1.1.1", "a=rtpmap:96", "a=fingerprint:sha-256", "a=setup:bogus",
                     "a=extmap:1/x", "a=candidate:1 1 udp", "a=rtcp:x", "m=", "a=", "v=x"]),
    st.text(max_size=40),
)  # fmt: skip


@st.composite
def offer_variants(draw: st.DrawFn, lines: list[str]) -> str:
    """A real offer with some lines dropped, repeated or replaced and some noise added."""
    out = list(lines)
    if draw(st.booleans()):
        out = [line for line in out if line not in DIRECTIONS]
    for _ in range(draw(st.integers(0, 4))):
        if not out:
            break
        index = draw(st.integers(0, len(out) - 1))
        match draw(st.sampled_from(["drop", "repeat", "replace", "insert"])):
            case "drop":
                del out[index]
            case "repeat":
                out.insert(index, out[index])
            case "replace":
                out[index] = draw(SDP_NOISE)
            case "insert":
                out.insert(index, draw(SDP_NOISE))
    return "\r\n".join(out) + "\r\n"


def test_fuzzed_offers_get_an_answer_or_a_problem_never_a_500(
    server: RunningServer, real_offer_lines: list[str]
) -> None:
    statuses: list[int] = []
    with httpx.Client(base_url=server.url, timeout=30.0) as http:

        @settings(
            max_examples=OFFER_FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(sdp=offer_variants(real_offer_lines))
        def answer(sdp: str) -> None:
            created = http.post("/v1/sessions", json={}, headers=_bearer(KEY))
            assert created.status_code == 201, created.text
            session = created.json()
            auth = _bearer(session["token"])
            try:
                response = http.post(
                    f"/v1/sessions/{session['id']}/offer",
                    json={"sdp": sdp, "type": "offer"},
                    headers=auth,
                )
            finally:
                http.delete(f"/v1/sessions/{session['id']}", headers=auth)
            statuses.append(response.status_code)
            assert response.status_code in (200, 400, 422), (response.status_code, response.text)
            if response.status_code != 200:
                detail = response.json()["detail"]
                for leak in ("Error:", "Traceback", "not in list", "object has no"):
                    assert leak not in detail, detail

        answer()
    assert 200 in statuses, f"no fuzzed offer was answered: {statuses}"
    assert "Traceback" not in server.log_tail(400)


# -- slow request heads -----------------------------------------------------------------------


def _seconds_until_closed(sock: socket.socket, limit_s: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes ``sock`` (sending ``trickle`` a byte at a time)."""
    started = time.monotonic()
    sock.settimeout(TRICKLE_PAUSE_S)
    sent = 0
    while time.monotonic() - started < limit_s:
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - started
        except TimeoutError:
            if sent < len(trickle):
                try:
                    sock.sendall(trickle[sent : sent + 1])
                except OSError:
                    return time.monotonic() - started
                sent += 1
        except ConnectionResetError:
            return time.monotonic() - started
    raise AssertionError(f"the server kept the connection open for {limit_s:.0f} s")


@pytest.mark.parametrize(
    ("first", "trickle"),
    [
        (b"", b""),  # connects, sends nothing
        (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\n", b""),  # half a head, then nothing
        (b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 200),  # a byte every 0.3 s
    ],
)
def test_a_request_head_that_does_not_come_is_cut_off(
    server: RunningServer, first: bytes, trickle: bytes
) -> None:
    with socket.create_connection((LOOPBACK, server.port), timeout=5.0) as sock:
        sock.sendall(first)
        took = _seconds_until_closed(sock, HEADER_TIMEOUT_S + CLOSE_SLACK_S, trickle)
    assert took >= HEADER_TIMEOUT_S - TRICKLE_PAUSE_S
    with httpx.Client(base_url=server.url, timeout=5.0) as http:  # a whole request still works
        assert http.get("/healthz").status_code == 200


# -- the audio WebSocket ----------------------------------------------------------------------


async def test_socket_bounds_empty_frames_and_a_third_socket(client: HeadcastClient) -> None:
    session = await client.create_session(audio_source="push")
    try:
        async with await client.push_socket(session) as first:
            await first.send_pcm16(b"")
            error = await first.events.wait_for("error", 10.0)
            assert error["code"] == "bad_audio_frame" and "at least one" in error["message"]
            async with await client.push_socket(session) as reconnect:  # the overlap allowed
                await reconnect.keep_alive()
                async with await client.push_socket(session) as third:
                    refusal = await third.events.wait_for("error", 10.0)
                    assert await third.wait_closed(10.0) == 4409
            assert refusal["code"] == "too_many_sockets", refusal
            assert "already has 2 audio socket" in refusal["message"], refusal
            await first.send_pcm16(b"\x00\x00" * 160)  # the first socket is unharmed
            assert (await first.events.wait_for("audio.queued", 10.0))["queued_ms"] >= 10
        async with await client.push_socket(session) as again:  # the slot is free again
            await again.send_pcm16(b"\x00\x00" * 160)
            await again.events.wait_for("audio.queued", 10.0)
    finally:
        await client.delete_session(session)


async def test_a_client_that_never_reads_is_dropped_with_one_warning(
    server: RunningServer, client: HeadcastClient
) -> None:
    session = await client.create_session(audio_source="push")
    url = client.audio_socket_url(session)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER_BYTES)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (LOOPBACK, server.port))
    log_before = server.log_path.read_text(encoding="utf-8", errors="replace")
    try:
        # max_queue=1: the client stops reading its socket after one message
        async with websockets.connect(url, sock=raw, max_queue=1) as ws:
            try:
                for _ in range(NON_READING_FRAMES):
                    await asyncio.wait_for(ws.send(b"\x00\x00"), 5.0)
            except (ConnectionClosed, TimeoutError) as stopped:
                logger.info("the server stopped taking frames: %r", stopped)
        await asyncio.sleep(1.0)
        log = server.log_path.read_text(encoding="utf-8", errors="replace")[len(log_before) :]
        warnings = [line for line in log.splitlines() if "has not read its last" in line]
        assert len(warnings) == 1, warnings[:5]
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
            keep_alive = await http.post(
                f"/v1/sessions/{session.id}/keepalive", headers=session.auth_header
            )
        assert keep_alive.status_code == 204  # the session outlives the dropped socket
    finally:
        await client.delete_session(session)


async def test_a_connected_push_session_sends_its_offer_after_its_token_expired(
    client: HeadcastClient,
) -> None:
    session = await client.create_session(audio_source="push")
    connection = None
    try:
        async with await client.push_socket(session) as sock:
            await sock.keep_alive()
            wait_s = (session.expires_at - datetime.now(UTC)).total_seconds() + 0.3
            await asyncio.sleep(max(0.0, wait_s))
            connection = await client.connect_webrtc(session)  # expired token, own offer
            frame = await asyncio.wait_for(connection.video.recv(), RECV_TIMEOUT_S)
            assert (frame.width, frame.height) == (448, 768)
    finally:
        await client.delete_session(session)  # first: closing the peer ends the session too
        if connection is not None:
            await connection.close()

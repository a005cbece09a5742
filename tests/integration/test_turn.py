"""Calls through a real TURN server (Debian's coturn on 127.0.0.1) with per-session credentials.

A headcast server with ``turn_urls``/``turn_secret`` and ``ice_relay_only`` hands every
session TURN credentials minted for it (TURN REST API: ``<expiry>:<session id>``,
base64(HMAC-SHA1(secret, name))) and uses them for its own peer. The Python client with
``relay_only`` (aiortc's ``iceTransportPolicy`` "relay": no host or server-reflexive
candidate is gathered) and Chromium with ``iceTransportPolicy: "relay"`` then reach the
avatar at 25 fps with relay candidates only on both sides, so every packet went through
coturn. An expired or wrong credential fails within seconds with a sentence that says
which, on the client and on the server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from aiortc import RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from selenium.webdriver.remote.webdriver import WebDriver

from headcast.server.turn import mint_credential
from headcast.streaming.ice import host_candidates
from headcast.streaming.peer import NoRelayCandidates, PeerConfig, PeerLink
from headcast_client import ArrayAudioTrack, HeadcastClient, RelayUnavailable, SessionInfo
from loadtests.speech import speech_like
from tests.integration.conftest import (
    LOOPBACK_ONLY,
    SHARED_SERVER_SETTINGS,
    RunningServer,
    run_server,
)
from tests.integration.coturn import Coturn, run_coturn
from tests.integration.test_browser import chrome  # noqa: F401  (the fixture)

SECRET = "loopback-turn-secret-for-tests"
WRONG_SECRET = "not-the-secret-coturn-was-given"
SESSION_LIFE_S = 600.0
MIC_RATE_HZ = 48_000
WARM_UP_FRAMES = 10
"""Frames received before the rate is measured (the first chunk's ramp)."""
MEASURE_S = 4.0
MIN_FPS = 24.0
"""25 fps sent; 24 allows for arrival jitter at the window's ends, not for stalls."""
CLOCK_SLACK_S = 5.0
"""Allowed difference between the credential's expiry and now + the session's life."""
FAIL_FAST_S = 12.0
"""A refused credential must be reported within this (one TURN check: 5 s)."""
CONNECT_TIMEOUT_S = 30.0
BROWSER_MEASURE_S = 5.0
MIN_BROWSER_FRAMES = 120
"""At 25 fps the page decodes 125 frames in 5 s."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with run_coturn(tmp_path_factory.mktemp("coturn"), SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def relay_server(
    tmp_path_factory: pytest.TempPathFactory, coturn: Coturn
) -> Iterator[RunningServer]:
    """A puppet server whose own peer uses relay candidates only, through ``coturn``."""
    settings = {
        **SHARED_SERVER_SETTINGS,
        "turn_urls": coturn.url,
        "turn_secret": SECRET,
        "ice_relay_only": True,
        "max_duration_s": SESSION_LIFE_S,
    }
    with run_server(tmp_path_factory.mktemp("relay-server"), **settings) as server:
        yield server


def _candidate_types(sdp: str) -> set[str]:
    return {
        line.split(" typ ")[1].split()[0]
        for line in sdp.splitlines()
        if line.startswith("a=candidate") and " typ " in line
    }


def _expected_password(username: str) -> str:
    digest = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


async def _received_fps(video: MediaStreamTrack) -> float:
    """Frames per second over ``MEASURE_S`` after ``WARM_UP_FRAMES`` frames."""
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        for _ in range(WARM_UP_FRAMES):
            await video.recv()
    loop = asyncio.get_running_loop()
    started, frames = loop.time(), 0
    async with asyncio.timeout(MEASURE_S + CONNECT_TIMEOUT_S):
        while loop.time() - started < MEASURE_S:
            await video.recv()
            frames += 1
    return frames / (loop.time() - started)


async def test_client_and_server_relay_only_through_coturn_at_full_rate(
    relay_server: RunningServer, coturn: Coturn
) -> None:
    async with HeadcastClient(relay_server.url, relay_only=True) as client:
        session = await client.create_session()
        minted_at = time.time()
        (turn,) = session.ice_servers
        assert turn["urls"] == [coturn.url]
        expiry, _, name = turn["username"].partition(":")
        assert name == session.id
        assert abs(int(expiry) - (minted_at + SESSION_LIFE_S)) < CLOCK_SLACK_S, turn["username"]
        assert turn["credential"] == _expected_password(turn["username"])

        mic = ArrayAudioTrack(speech_like(MEASURE_S + 6.0, MIC_RATE_HZ), MIC_RATE_HZ)
        connection = await client.connect_webrtc(session, mic)
        try:
            assert _candidate_types(connection.pc.localDescription.sdp) == {"relay"}
            assert _candidate_types(connection.pc.remoteDescription.sdp) == {"relay"}
            fps = await _received_fps(connection.video)
        finally:
            mic.stop()
            await client.delete_session(session)
            await connection.close()
    logger.info("Python client, relay only: %.1f fps through coturn", fps)
    assert fps >= MIN_FPS, f"{fps:.1f} fps through coturn (25 sent)"


def _with_credential(session: SessionInfo, secret: str, expires_at: float) -> SessionInfo:
    (turn,) = session.ice_servers
    credential = mint_credential(secret, session.id, expires_at)
    forged = {**turn, "username": credential.username, "credential": credential.password}
    return replace(session, ice_servers=[forged])


@pytest.mark.parametrize(
    ("secret", "expires_in_s", "says"),
    [
        (SECRET, -60.0, "expired"),
        (WRONG_SECRET, SESSION_LIFE_S, "static-auth-secret"),
    ],
    ids=["expired", "wrong"],
)
async def test_a_refused_credential_fails_fast_and_says_why(
    relay_server: RunningServer, secret: str, expires_in_s: float, says: str
) -> None:
    async with HeadcastClient(relay_server.url, relay_only=True) as client:
        session = await client.create_session()
        forged = _with_credential(session, secret, time.time() + expires_in_s)
        started = time.monotonic()
        try:
            with pytest.raises(RelayUnavailable) as caught:
                await client.connect_webrtc(forged)
        finally:
            await client.delete_session(session)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "refused the credential (401" in message and says in message, message
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.1f} s to fail"


async def test_a_server_whose_secret_coturn_does_not_share_says_so(coturn: Coturn) -> None:
    """The server's own peer, relay only, with a credential coturn refuses: the offer is
    refused with the reason instead of an answer without candidates."""
    wrong = mint_credential(WRONG_SECRET, "session", time.time() + SESSION_LIFE_S)
    config = PeerConfig(
        ice_servers=(
            RTCIceServer(urls=[coturn.url], username=wrong.username, credential=wrong.password),
        ),
        relay_only=True,
    )
    client = RTCPeerConnection()
    link = PeerLink(config, on_lost=lambda _reason: None)
    try:
        client.addTransceiver("audio", direction="sendrecv")
        client.addTransceiver("video", direction="recvonly")
        with host_candidates(LOOPBACK_ONLY):
            await client.setLocalDescription(await client.createOffer())
        started = time.monotonic()
        with pytest.raises(NoRelayCandidates) as caught:
            await link.answer(
                client.localDescription.sdp,
                video=VideoStreamTrack(),
                audio=AudioStreamTrack(),
                on_inbound_audio=lambda _track: None,
            )
    finally:
        await link.close()
        await client.close()
    message = str(caught.value)
    assert "ice_relay_only" in message and "static-auth-secret" in message, message
    assert time.monotonic() - started < FAIL_FAST_S


@pytest.mark.browser
def test_chromium_relay_only_through_coturn_at_full_rate(
    chrome: WebDriver,  # noqa: F811  (the fixture)
    relay_server: RunningServer,
) -> None:
    """The JS SDK with ``iceTransportPolicy: "relay"``: the page's peer offers only relay
    candidates, the server answers only relay candidates, and the video plays at 25 fps."""
    chrome.set_script_timeout(CONNECT_TIMEOUT_S)
    chrome.get(f"{relay_server.url}/")
    result = chrome.execute_async_script(
        """
        const [measureMs, done] = [arguments[0], arguments[arguments.length - 1]];
        const sdk = await import('/static/headcast.js');
        try {
          const session = await sdk.createSession('', {avatar: 'default'});
          const mic = await navigator.mediaDevices.getUserMedia({audio: true});
          const {pc, videoStream} = await sdk.connect(session, mic, {iceTransportPolicy: 'relay'});
          const video = document.createElement('video');
          video.muted = true;
          video.srcObject = videoStream;
          document.body.appendChild(video);
          await video.play();
          const frames = () => video.getVideoPlaybackQuality().totalVideoFrames;
          const started = Date.now();
          while (frames() < 10 && Date.now() - started < 15000) {
            await new Promise((r) => setTimeout(r, 50));
          }
          const first = frames();
          await new Promise((r) => setTimeout(r, measureMs));
          const decoded = frames() - first;
          const types = (sdp) => [...new Set(sdp.split('\\r\\n')
            .filter((l) => l.startsWith('a=candidate'))
            .map((l) => l.split(' typ ')[1].split(' ')[0]))];
          const local = types(pc.localDescription.sdp), remote = types(pc.remoteDescription.sdp);
          const stats = await pc.getStats();
          let pair = null;
          stats.forEach((s) => {
            if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
              pair = [stats.get(s.localCandidateId).candidateType,
                      stats.get(s.remoteCandidateId).candidateType];
            }
          });
          await session.close();
          done({decoded, local, remote, pair});
        } catch (err) {
          done({error: String(err && err.message || err)});
        }
        """,
        int(BROWSER_MEASURE_S * 1000),
    )
    assert "error" not in result, result
    logger.info("Chromium, relay only: %s", result)
    assert result["local"] == ["relay"] and result["remote"] == ["relay"], result
    assert result["pair"] == ["relay", "relay"], result
    assert result["decoded"] >= MIN_BROWSER_FRAMES, result


def _expired_credential() -> dict[str, str]:
    credential = mint_credential(SECRET, "expired-session", time.time() - 60.0)
    return {"username": credential.username, "credential": credential.password}


@pytest.mark.browser
def test_chromium_with_an_expired_credential_says_so(
    chrome: WebDriver,  # noqa: F811  (the fixture)
    relay_server: RunningServer,
) -> None:
    chrome.set_script_timeout(CONNECT_TIMEOUT_S)
    chrome.get(f"{relay_server.url}/")
    started = time.monotonic()
    result = chrome.execute_async_script(
        """
        const [expired, done] = [arguments[0], arguments[arguments.length - 1]];
        const sdk = await import('/static/headcast.js');
        const body = await (await fetch('/v1/sessions', {method: 'POST',
          headers: {'Content-Type': 'application/json'}, body: '{"avatar": "default"}'})).json();
        body.ice_servers = [{...body.ice_servers[0], ...expired}];
        const session = new sdk.Session('', body);
        const mic = await navigator.mediaDevices.getUserMedia({audio: true});
        try {
          await sdk.connect(session, mic, {iceTransportPolicy: 'relay'});
          done({connected: true});
        } catch (err) {
          done({code: err.code, message: err.message, closed: session.closed});
        }
        """,
        _expired_credential(),
    )
    elapsed = time.monotonic() - started
    assert result.get("code") == "turn-refused", result
    assert "refused the session's credentials" in result["message"] and result["closed"], result
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.1f} s to fail"

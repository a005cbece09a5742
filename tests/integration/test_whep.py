"""WHEP egress end to end on the shared puppet server, with two WHEP players.

- A real WHEP client in real Chromium: ``WHEPClient`` of the npm package ``whip-whep``
  (medooze's whep.js, by the protocol's author; clients/web devDependency). It posts its
  offer before gathering (it trickles candidates by PATCH, which the server answers 405), so
  the server learns its address from its connectivity checks. The avatar plays at 25 fps
  while the application pushes speech over the audio WebSocket, and the player's ``stop()``
  (DELETE on the ``Location``) ends the session.
- An aiortc player that follows WHIP (RFC 9725) / WHEP to the letter: offer with every
  candidate, ``Content-Type: application/sdp``, the session token as a bearer token;
  checks 201, the ``application/sdp`` answer (sendonly), ``Location``; receives the avatar
  with the pushed speech; PATCH is 405 with ``Allow``; DELETE on the resource is 200, the
  media stops and the session is released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urljoin

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from selenium.webdriver.remote.webdriver import WebDriver

from headcast.streaming.ice import host_candidates
from headcast_client import HeadcastClient, PushSocket, SessionInfo
from loadtests.speech import speech_like
from tests.conftest import REPO_ROOT
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer
from tests.integration.test_browser import chrome  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.slow

SDP = "application/sdp"
WHEP_JS = REPO_ROOT / "clients" / "web" / "node_modules" / "whip-whep" / "whep.js"
PUSH_RATE_HZ = 16_000
SPEECH_SECONDS = 4.0
WIDTH, HEIGHT = 448, 768
FPS_WINDOW_S = 3.0
MIN_FPS = 22.0
"""25 fps nominal; a decoder's count may lag a frame or two at either end of the window."""

STEP_TIMEOUT_S = 20.0
POLL_S = 0.1

PLAY_WITH_WHEP_JS = """
const [source, endpoint, token, done] = arguments;
(async () => {
  const url = URL.createObjectURL(new Blob([source], {type: 'text/javascript'}));
  const {WHEPClient} = await import(url);
  document.body.innerHTML = '<video id="player" autoplay playsinline muted></video>';
  const video = document.getElementById('player');
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  const stream = new MediaStream();
  pc.ontrack = (event) => { stream.addTrack(event.track); video.srcObject = stream; };
  const player = window.player = new WHEPClient();
  await player.view(pc, endpoint, token);
  done({location: player.resourceURL.href});
})().catch((err) => done({error: String(err)}));
"""


def _decoded_frames(driver: WebDriver) -> int:
    return int(
        driver.execute_script(
            "const v = document.getElementById('player');"
            "return v ? v.getVideoPlaybackQuality().totalVideoFrames : 0;"
        )
    )


async def _speak(socket: PushSocket) -> None:
    await socket.send_audio(speech_like(SPEECH_SECONDS, PUSH_RATE_HZ), PUSH_RATE_HZ)
    await socket.end()


async def _until_released(server: RunningServer) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while server.metric("headcast_sessions_active") != 0:
        assert time.monotonic() < deadline, "the server still holds the WHEP session"
        await asyncio.sleep(POLL_S)


@pytest.fixture
async def client(headcast_server: RunningServer) -> AsyncIterator[HeadcastClient]:
    async with HeadcastClient(headcast_server.url, host_candidates=LOOPBACK_ONLY) as http:
        yield http


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_a_real_whep_player_in_chromium_plays_the_avatar(
    chrome: WebDriver,  # noqa: F811
    client: HeadcastClient,
    headcast_server: RunningServer,
) -> None:
    if not WHEP_JS.exists():
        pytest.skip(f"{WHEP_JS} missing: run `npm ci --prefix clients/web` (make test does)")
    session = await client.create_session(audio_source="push", sample_rate=PUSH_RATE_HZ)
    chrome.set_script_timeout(30)
    chrome.get(f"{headcast_server.url}/")
    endpoint = f"{headcast_server.url}/v1/sessions/{session.id}/whep"
    played = chrome.execute_async_script(
        PLAY_WITH_WHEP_JS, WHEP_JS.read_text(), endpoint, session.token
    )
    assert "error" not in played, played
    assert played["location"] == f"{endpoint}/peer"
    async with await client.push_socket(session) as socket:
        await socket.events.wait_for("session.ready", STEP_TIMEOUT_S)
        speaking = asyncio.ensure_future(_speak(socket))
        await socket.events.wait_for("speech.started", STEP_TIMEOUT_S)
        first = _decoded_frames(chrome)
        await asyncio.sleep(FPS_WINDOW_S)
        fps = (_decoded_frames(chrome) - first) / FPS_WINDOW_S
        await speaking
        size = chrome.execute_script(
            "const v = document.getElementById('player'); return [v.videoWidth, v.videoHeight];"
        )
        assert fps >= MIN_FPS, f"the WHEP player decoded {fps:.1f} fps"
        assert size == [WIDTH, HEIGHT]
        chrome.execute_async_script("window.player.stop().then(() => arguments[0]());")
        await _until_released(headcast_server)


async def _whep_offer(pc: RTCPeerConnection) -> str:
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    with host_candidates(LOOPBACK_ONLY):
        await pc.setLocalDescription(await pc.createOffer())  # every candidate: no trickle
    return str(pc.localDescription.sdp)


async def _receive_video(track: MediaStreamTrack, frames: list[tuple[float, int, int]]) -> None:
    while True:
        frame = await track.recv()
        frames.append((time.monotonic(), frame.width, frame.height))


async def _receive_audio(track: MediaStreamTrack, packets: list[int]) -> None:
    while True:
        packets.append((await track.recv()).samples)


async def test_an_rfc_strict_aiortc_whep_player(
    client: HeadcastClient, headcast_server: RunningServer
) -> None:
    session: SessionInfo = await client.create_session(
        audio_source="push", sample_rate=PUSH_RATE_HZ
    )
    endpoint = f"{headcast_server.url}/v1/sessions/{session.id}/whep"
    pc = RTCPeerConnection()
    tracks: dict[str, MediaStreamTrack] = {}
    pc.on("track", lambda track: tracks.setdefault(track.kind, track))
    frames: list[tuple[float, int, int]] = []
    packets: list[int] = []
    receivers: list[asyncio.Future[None]] = []
    async with httpx.AsyncClient(timeout=STEP_TIMEOUT_S) as http:
        try:
            created = await http.post(
                endpoint,
                content=await _whep_offer(pc),
                headers={"Content-Type": SDP, "Authorization": f"Bearer {session.token}"},
            )
            assert created.status_code == 201, created.text
            assert created.headers["content-type"] == SDP
            assert "link" not in created.headers, "no ICE servers are configured"
            resource = urljoin(endpoint, created.headers["location"])
            answer = created.text
            assert answer.count("a=sendonly") == 2 and "a=recvonly" not in answer, answer
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

            async with await client.push_socket(session) as socket:
                await socket.events.wait_for("session.ready", STEP_TIMEOUT_S)
                receivers = [
                    asyncio.ensure_future(_receive_video(tracks["video"], frames)),
                    asyncio.ensure_future(_receive_audio(tracks["audio"], packets)),
                ]
                await _speak(socket)
                await socket.events.wait_for("speech.started", STEP_TIMEOUT_S)
                start = len(frames)
                await asyncio.sleep(FPS_WINDOW_S)
                window = frames[start:]
                fps = (len(window) - 1) / (window[-1][0] - window[0][0])
                assert fps >= MIN_FPS, f"{fps:.1f} fps over WHEP"
                assert {(w, h) for _t, w, h in window} == {(WIDTH, HEIGHT)}
                assert sum(packets) > 0, "no audio over WHEP"

                trickle = await http.patch(
                    resource,
                    content="a=ice-ufrag:abcd\r\na=ice-pwd:efghijklmnopqrstuvwxyz\r\n",
                    headers={
                        "Content-Type": "application/trickle-ice-sdpfrag",
                        "Authorization": f"Bearer {session.token}",
                    },
                )
                assert trickle.status_code == 405 and trickle.headers["allow"] == "DELETE"

                deleted = await http.delete(
                    resource, headers={"Authorization": f"Bearer {session.token}"}
                )
                assert deleted.status_code == 200 and deleted.content == b""
                await _until_released(headcast_server)
                ended = await asyncio.wait_for(
                    asyncio.gather(*receivers, return_exceptions=True), STEP_TIMEOUT_S
                )
                assert all(isinstance(result, MediaStreamError) for result in ended), ended
        finally:
            for receiver in receivers:
                receiver.cancel()
            await pc.close()

"""The async headcast client: sessions over HTTP, media over WebRTC (aiortc).

Owns ``HeadcastClient`` (``create_session``, ``connect_webrtc``, ``delete_session``,
``readiness``, ``wait_ready``, ``metrics``), ``SessionInfo``, ``WebRTCConnection`` and
``HeadcastError`` (an HTTP error with the server's problem details). Used by the
integration tests and the load drivers. Knows nothing about the server's internals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from streaming.ice import HostCandidatePolicy, host_candidates

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
"""Default limit for one HTTP request and for the WebRTC connection to come up, in seconds."""

READY_POLL_S = 0.25
"""How often ``wait_ready`` polls ``/readyz``, in seconds."""


class HeadcastError(RuntimeError):
    """The server answered with an error; ``problem`` holds its problem details."""

    def __init__(self, status: int, problem: dict[str, Any], headers: httpx.Headers) -> None:
        self.status = status
        self.problem = problem
        self.headers = headers
        detail = problem.get("detail") or problem.get("title") or "no detail"
        super().__init__(f"HTTP {status}: {detail}")


@dataclass(frozen=True)
class SessionInfo:
    """What ``POST /v1/sessions`` returned."""

    id: str
    token: str = field(repr=False)
    expires_at: datetime
    ice_servers: list[dict[str, Any]]

    @property
    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class WebRTCConnection:
    """A connected session: the peer connection and the avatar's two incoming tracks."""

    pc: RTCPeerConnection
    video: MediaStreamTrack
    audio: MediaStreamTrack

    async def close(self) -> None:
        await self.pc.close()


class HeadcastClient:
    """Talks to one headcast server. Use as ``async with HeadcastClient(url) as client``.

    ``host_candidates`` chooses the client's own ICE addresses (e.g. loopback only, for a
    client and server on one loopback-only host).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        host_candidates: HostCandidatePolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._host_candidates = host_candidates or HostCandidatePolicy()
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def __aenter__(self) -> HeadcastClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- HTTP -------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise HeadcastError(response.status_code, problem, response.headers)
        return response

    async def readiness(self) -> dict[str, Any]:
        """``GET /readyz`` body; raises ``HeadcastError`` (503) while not ready."""
        return (await self._request("GET", "/readyz")).json()

    async def wait_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Poll ``/readyz`` until the engine is ready; ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return await self.readiness()
            except (HeadcastError, httpx.TransportError) as exc:
                last = exc
            await asyncio.sleep(READY_POLL_S)
        raise TimeoutError(f"{self.base_url} not ready within {timeout_s:.0f} s: {last}")

    async def metrics(self) -> dict[str, float]:
        """``GET /metrics`` parsed into {series (name and labels, as written): value}."""
        text = (await self._request("GET", "/metrics")).text
        series: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
        return series

    async def create_session(self, avatar: str = "default") -> SessionInfo:
        """``POST /v1/sessions``."""
        body = (await self._request("POST", "/v1/sessions", json={"avatar": avatar})).json()
        return SessionInfo(
            id=body["id"],
            token=body["token"],
            expires_at=datetime.fromisoformat(body["expires_at"]),
            ice_servers=body["ice_servers"],
        )

    async def post_offer(self, session: SessionInfo, sdp: str) -> str:
        """``POST /v1/sessions/{id}/offer``; returns the answer SDP."""
        response = await self._request(
            "POST",
            f"/v1/sessions/{session.id}/offer",
            json={"sdp": sdp, "type": "offer"},
            headers=session.auth_header,
        )
        answer = response.json()
        if answer.get("type") != "answer":
            raise ValueError(f"expected an answer, got {answer.get('type')!r}")
        return str(answer["sdp"])

    async def delete_session(self, session: SessionInfo) -> None:
        """``DELETE /v1/sessions/{id}``."""
        await self._request("DELETE", f"/v1/sessions/{session.id}", headers=session.auth_header)

    # -- WebRTC -----------------------------------------------------------------------------

    async def connect_webrtc(
        self, session: SessionInfo, audio_source_track: MediaStreamTrack | None = None
    ) -> WebRTCConnection:
        """Offer, answer, connect: returns once connected with the avatar's two tracks.

        ``audio_source_track`` is the microphone (``None``: receive only).
        """
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[RTCIceServer(**server) for server in session.ice_servers])
        )
        try:
            return await asyncio.wait_for(
                self._connect(pc, session, audio_source_track), self.timeout_s
            )
        except BaseException:
            await pc.close()
            raise

    async def _connect(
        self, pc: RTCPeerConnection, session: SessionInfo, mic: MediaStreamTrack | None
    ) -> WebRTCConnection:
        loop = asyncio.get_running_loop()
        received: dict[str, asyncio.Future[MediaStreamTrack]] = {
            "video": loop.create_future(),
            "audio": loop.create_future(),
        }
        connected: asyncio.Future[None] = loop.create_future()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            future = received.get(track.kind)
            if future is not None and not future.done():
                future.set_result(track)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if connected.done():
                return
            if pc.connectionState == "connected":
                connected.set_result(None)
            elif pc.connectionState in ("failed", "closed"):
                connected.set_exception(ConnectionError(f"WebRTC connection {pc.connectionState}"))

        if mic is not None:
            pc.addTransceiver(mic, direction="sendrecv")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        offer = await pc.createOffer()
        with host_candidates(self._host_candidates):
            await pc.setLocalDescription(offer)  # gathers every candidate (no trickle)
        answer = await self.post_offer(session, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await connected
        return WebRTCConnection(pc=pc, video=await received["video"], audio=await received["audio"])

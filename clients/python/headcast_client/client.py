"""The async headcast client: sessions over HTTP, media over WebRTC (aiortc).

Owns ``HeadcastClient`` (``create_session`` for a mic or push session on any avatar,
``connect_webrtc`` with the ``events`` data channel, ``push_socket`` for chatbot mode,
``interrupt``, ``delete_session``, ``readiness``, ``wait_ready``, ``metrics``; avatars:
``create_avatar`` from a photo, ``get_avatar``, ``wait_avatar``, ``list_avatars``,
``avatar_picture``, ``delete_avatar``), ``SessionInfo``, ``AvatarInfo``,
``WebRTCConnection`` and ``HeadcastError`` (an HTTP error with the server's problem
details). Used by the integration tests and the load drivers. Knows nothing about the
server's internals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import httpx
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from headcast.streaming.ice import HostCandidatePolicy, host_candidates
from headcast.streaming.turn_check import explain_turn_failure, relay_candidates
from headcast_client.push import EventQueue, PushSocket

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
"""Default limit for one HTTP request and for the WebRTC connection to come up, in seconds."""

READY_POLL_S = 0.25
"""How often ``wait_ready`` polls ``/readyz`` (and ``wait_avatar`` the avatar), in seconds."""

AVATAR_SETTLED = ("ready", "failed")
"""Avatar statuses that do not change any more."""

EVENTS_CHANNEL_LABEL = "events"
"""Label of the data channel that carries the session's events and commands."""


class HeadcastError(RuntimeError):
    """The server answered with an error; ``problem`` holds its problem details."""

    def __init__(self, status: int, problem: dict[str, Any], headers: httpx.Headers) -> None:
        self.status = status
        self.problem = problem
        self.headers = headers
        detail = problem.get("detail") or problem.get("title") or "no detail"
        super().__init__(f"HTTP {status}: {detail}")


class RelayUnavailable(ConnectionError):
    """Relay candidates only were asked for and the TURN server gave none; the message says
    why (a refused or expired credential, no answer from the server)."""


@dataclass(frozen=True)
class SessionInfo:
    """What ``POST /v1/sessions`` returned."""

    id: str
    token: str = field(repr=False)
    expires_at: datetime
    ice_servers: list[dict[str, Any]]
    audio_source: str = "mic"
    sample_rate: int = 16_000
    audio_path: str | None = None
    """Path of the audio WebSocket (push sessions)."""

    @property
    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class AvatarInfo:
    """An avatar as ``/v1/avatars`` describes it."""

    id: str
    """Pass it to ``create_session``."""

    status: str
    """``pending``, ``preparing``, ``ready`` or ``failed``."""

    progress: float
    error: str | None
    """Why it failed, as a code (``no_face``, ``too_small``, ...)."""

    message: str | None
    """Why it failed, in words (or a note, such as several faces found)."""

    preview_url: str | None
    body: dict[str, Any] = field(repr=False)
    """The whole answer (name, prompt, faces, face box, source size, times)."""

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> AvatarInfo:
        return cls(
            id=body["id"],
            status=body["status"],
            progress=body["progress"],
            error=body.get("error"),
            message=body.get("message"),
            preview_url=body.get("preview_url"),
            body=body,
        )


@dataclass
class WebRTCConnection:
    """A connected session: the peer connection and the avatar's two incoming tracks."""

    pc: RTCPeerConnection
    video: MediaStreamTrack
    audio: MediaStreamTrack
    channel: RTCDataChannel | None = None
    """The ``events`` data channel (``None`` if not asked for)."""

    events: EventQueue = field(default_factory=EventQueue)
    """Events received on the data channel."""

    def command(self, command_type: str) -> None:
        """Send ``{"type": command_type}`` on the events channel."""
        if self.channel is None or self.channel.readyState != "open":
            raise ConnectionError("the events data channel is not open")
        self.channel.send(json.dumps({"type": command_type}))

    async def close(self) -> None:
        await self.pc.close()


class HeadcastClient:
    """Talks to one headcast server. Use as ``async with HeadcastClient(url) as client``.

    ``host_candidates`` chooses the client's own ICE addresses (e.g. loopback only, for a
    client and server on one loopback-only host). ``api_key`` is sent as a bearer token
    when creating sessions (a server with ``api_keys`` configured asks for one); the
    session's own token authorises everything after that. ``relay_only`` uses TURN relay
    candidates only (a browser's ``iceTransportPolicy: "relay"``): the call works through the
    session's TURN server or fails with ``RelayUnavailable`` saying why.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        host_candidates: HostCandidatePolicy | None = None,
        api_key: str | None = None,
        relay_only: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.relay_only = relay_only
        self.timeout_s = timeout_s
        self._api_key = api_key
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
        return parse_metrics((await self._request("GET", "/metrics")).text)

    @property
    def _key_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    async def create_session(
        self, avatar: str = "default", *, audio_source: str = "mic", sample_rate: int = 16_000
    ) -> SessionInfo:
        """``POST /v1/sessions`` on avatar ``avatar`` (an id from ``create_avatar``):
        ``audio_source`` ``mic`` or ``push`` (chatbot mode)."""
        request: dict[str, Any] = {"avatar": avatar}
        if audio_source != "mic":
            request |= {"audio_source": audio_source, "sample_rate": sample_rate}
        response = await self._request(
            "POST", "/v1/sessions", json=request, headers=self._key_header
        )
        body = response.json()
        return SessionInfo(
            id=body["id"],
            token=body["token"],
            expires_at=datetime.fromisoformat(body["expires_at"]),
            ice_servers=body["ice_servers"],
            audio_source=body.get("audio_source", "mic"),
            sample_rate=body.get("sample_rate", sample_rate),
            audio_path=body.get("audio_path"),
        )

    # -- avatars ----------------------------------------------------------------------------

    async def create_avatar(
        self,
        photo: bytes,
        *,
        filename: str = "photo.jpg",
        content_type: str = "image/jpeg",
        name: str | None = None,
        prompt: str | None = None,
    ) -> AvatarInfo:
        """``POST /v1/avatars`` with a JPEG, PNG or WebP photo: the ``pending`` avatar (the
        server prepares it in the background; ``wait_avatar`` waits for it)."""
        fields = {key: value for key, value in (("name", name), ("prompt", prompt)) if value}
        response = await self._request(
            "POST",
            "/v1/avatars",
            files={"image": (filename, photo, content_type)},
            data=fields,
            headers=self._key_header,
        )
        return AvatarInfo.from_body(response.json())

    async def get_avatar(self, avatar_id: str) -> AvatarInfo:
        """``GET /v1/avatars/{id}``: its status, progress, error and preview."""
        response = await self._request("GET", f"/v1/avatars/{avatar_id}", headers=self._key_header)
        return AvatarInfo.from_body(response.json())

    async def wait_avatar(self, avatar_id: str, timeout_s: float = 120.0) -> AvatarInfo:
        """Poll the avatar until it is ``ready`` or ``failed`` (returned either way);
        ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            avatar = await self.get_avatar(avatar_id)
            if avatar.status in AVATAR_SETTLED:
                return avatar
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"avatar {avatar_id} still {avatar.status} after {timeout_s:.0f} s"
                )
            await asyncio.sleep(READY_POLL_S)

    async def list_avatars(self) -> list[AvatarInfo]:
        """``GET /v1/avatars``: ``default`` first, then the added ones."""
        response = await self._request("GET", "/v1/avatars", headers=self._key_header)
        return [AvatarInfo.from_body(body) for body in response.json()["avatars"]]

    async def avatar_picture(self, avatar_id: str) -> bytes:
        """The avatar's framed picture (PNG at the output size)."""
        response = await self._request(
            "GET", f"/v1/avatars/{avatar_id}/picture", headers=self._key_header
        )
        return response.content

    async def delete_avatar(self, avatar_id: str) -> None:
        """``DELETE /v1/avatars/{id}`` (409 while a session uses it)."""
        await self._request("DELETE", f"/v1/avatars/{avatar_id}", headers=self._key_header)

    # -- sessions ---------------------------------------------------------------------------

    async def interrupt(self, session: SessionInfo) -> dict[str, Any]:
        """``POST /v1/sessions/{id}/interrupt``; returns the ``interrupted`` body."""
        response = await self._request(
            "POST", f"/v1/sessions/{session.id}/interrupt", headers=session.auth_header
        )
        result: dict[str, Any] = response.json()
        return result

    def audio_socket_url(self, session: SessionInfo) -> str:
        """``ws://.../v1/sessions/{id}/audio?token=...`` of a push session."""
        path = session.audio_path or f"/v1/sessions/{session.id}/audio"
        base = "ws" + self.base_url.removeprefix("http")  # http -> ws, https -> wss
        return f"{base}{path}?{urlencode({'token': session.token})}"

    async def push_socket(self, session: SessionInfo) -> PushSocket:
        """Open the session's audio WebSocket (close it, or use ``async with``)."""
        return await PushSocket.connect(self.audio_socket_url(session), self.timeout_s)

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
        self,
        session: SessionInfo,
        audio_source_track: MediaStreamTrack | None = None,
        *,
        events: bool = False,
    ) -> WebRTCConnection:
        """Offer, answer, connect: returns once connected with the avatar's two tracks.

        ``audio_source_track`` is the microphone (``None``: receive only). ``events`` opens
        the ``events`` data channel (events in ``connection.events``, commands with
        ``connection.command``); it is open when this returns.
        """
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[RTCIceServer(**server) for server in session.ice_servers],
                iceTransportPolicy=policy,
            )
        )
        try:
            return await asyncio.wait_for(
                self._connect(pc, session, audio_source_track, events), self.timeout_s
            )
        except BaseException:
            await pc.close()
            raise

    async def _connect(
        self,
        pc: RTCPeerConnection,
        session: SessionInfo,
        mic: MediaStreamTrack | None,
        with_events: bool,
    ) -> WebRTCConnection:
        loop = asyncio.get_running_loop()
        received: dict[str, asyncio.Future[MediaStreamTrack]] = {
            "video": loop.create_future(),
            "audio": loop.create_future(),
        }
        connected: asyncio.Future[None] = loop.create_future()
        # A connection that fails after the offer did (nobody awaits it then) is not an error
        # to report when the future is collected.
        connected.add_done_callback(lambda done: done.cancelled() or done.exception())

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
        queue = EventQueue()
        channel: RTCDataChannel | None = None
        channel_open: asyncio.Future[None] = loop.create_future()
        if with_events:
            channel = pc.createDataChannel(EVENTS_CHANNEL_LABEL)
            channel.on("message", lambda message: queue.put_text(str(message)))

            @channel.on("open")
            def on_open() -> None:
                if not channel_open.done():
                    channel_open.set_result(None)

        offer = await pc.createOffer()
        with host_candidates(self._host_candidates):
            await pc.setLocalDescription(offer)  # gathers every candidate (no trickle)
        if self.relay_only and relay_candidates(pc.localDescription.sdp) == 0:
            servers = [RTCIceServer(**server) for server in session.ice_servers]
            raise RelayUnavailable(
                "no relay candidate to offer (relay_only): " + await explain_turn_failure(servers)
            )
        answer = await self.post_offer(session, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await connected
        if channel is not None:
            await channel_open
        return WebRTCConnection(
            pc=pc,
            video=await received["video"],
            audio=await received["audio"],
            channel=channel,
            events=queue,
        )


GROUP_LABEL = re.compile(r'group="[^"]*",?')
"""The engine-group label of a series as the server writes it."""


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text into {series (name and labels, as written): value}."""
    series: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        series[name] = float(value)
    return series


def over_groups(series: dict[str, float]) -> dict[str, float]:
    """``series`` summed over the engine groups: ``headcast_chunks_total{group="1"}`` counts
    toward ``headcast_chunks_total``, ``headcast_rtf_bucket{group="0",le="1.0"}`` toward
    ``headcast_rtf_bucket{le="1.0"}``."""
    total: dict[str, float] = {}
    for name, value in series.items():
        key = GROUP_LABEL.sub("", name).replace(",}", "}").replace("{}", "")
        total[key] = total.get(key, 0.0) + value
    return total

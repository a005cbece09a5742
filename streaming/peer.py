"""One session's WebRTC peer connection: answer an offer, then watch that the peer is still there.

Owns ``PeerLink`` (an aiortc ``RTCPeerConnection`` set up as the answerer: the avatar's video
and audio tracks go out, the caller's microphone track comes in, and a data channel the
client opened with the label ``events`` is handed over; ICE is gathered completely before
answering, no trickle), ``EventsChannel`` (text in and out on that data channel),
``PeerConfig`` (ICE servers, relay-only, codec, timeouts), ``OfferError``,
``NoRelayCandidates`` (relay only, and the TURN server gave no relay: the message says why,
from ``streaming.turn_check``) and ``with_directions`` (an offer's media sections made
explicit about their direction, as aiortc needs). A peer counts as lost when
its connection fails or closes, when it does not connect within ``connect_timeout_s``, or
when it stops sending RTCP receiver reports for ``peer_timeout_s`` (a client that vanished
without closing: aiortc's own ICE consent check would take about 30 s).

Knows nothing about engines, chunks or the server; the session decides what a loss means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import OperationError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from headcast.streaming.codecs import VideoCodec, prefer_video_codec
from headcast.streaming.ice import HostCandidatePolicy, host_addresses, host_candidates
from headcast.streaming.turn_check import explain_turn_failure, relay_candidates, turn_urls

logger = logging.getLogger(__name__)

LIVENESS_POLL_S = 0.5
"""How often the peer's connection state and receiver reports are checked, in seconds."""

DEFAULT_CONNECT_TIMEOUT_S = 20.0
"""Default time allowed from the answer to a connected peer, in seconds."""

DEFAULT_PEER_TIMEOUT_S = 8.0
"""Default silence (no RTCP receiver report) after which a connected peer counts as gone."""

EVENTS_CHANNEL_LABEL = "events"
"""Label of the data channel that carries session events and commands (the client opens it
before its offer)."""

SDP_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
"""The SDP direction attributes (RFC 4566 section 6)."""

DEFAULT_DIRECTION = "sendrecv"
"""The direction of a media section that states none (RFC 4566 section 6)."""

_REMOTE_INBOUND = "remote-inbound-rtp"
_ENDED_STATES = ("failed", "closed")


class OfferError(ValueError):
    """The offer cannot be answered; the message says what the client should change."""


class NoIceCandidates(RuntimeError):
    """The server found no local address to offer; a deployment problem, not the client's."""


class NoRelayCandidates(NoIceCandidates):
    """Relay candidates only were asked for and the TURN server gave none; the message says
    why (a refused or expired credential, no answer)."""


@dataclass(frozen=True)
class PeerConfig:
    """How a session's peer connection is set up and when its peer counts as gone."""

    ice_servers: tuple[RTCIceServer, ...] = ()
    """STUN/TURN servers; empty means host candidates only (no external STUN lookup)."""

    relay_only: bool = False
    """Gather and use relay (TURN) candidates only (``iceTransportPolicy: "relay"``)."""

    host_candidates: HostCandidatePolicy = field(default_factory=HostCandidatePolicy)
    """Which local addresses are offered as ICE host candidates (loopback opt-in)."""

    video_codec: VideoCodec = VideoCodec.VP8
    """The video codec to prefer in the answer."""

    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    """Seconds from the answer until the peer must be connected."""

    peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S
    """Seconds without an RTCP receiver report after which a connected peer is gone."""


def with_directions(sdp: str) -> str:
    """``sdp`` with a direction attribute in every media section.

    A media section without one takes the session-level direction, else ``sendrecv`` (the
    default, RFC 4566 section 6). aiortc reads media-level directions only and cannot
    answer a section that has none, so the offer is made explicit before it sees it.
    """
    lines = sdp.splitlines()
    first_media = next((i for i, line in enumerate(lines) if line.startswith("m=")), len(lines))
    session_direction = next(
        (line[2:] for line in lines[:first_media] if line[2:] in SDP_DIRECTIONS), None
    )
    default = session_direction or DEFAULT_DIRECTION
    out: list[str] = lines[:first_media]
    section: list[str] = []
    for line in [*lines[first_media:], "m="]:  # a sentinel closes the last section
        if line.startswith("m=") and section:
            has_direction = any(item[2:] in SDP_DIRECTIONS for item in section[1:])
            out.extend(section if has_direction else [section[0], f"a={default}", *section[1:]])
            section = []
        section.append(line)
    return "\r\n".join(out) + "\r\n"


def _parse_offer(sdp: str) -> SessionDescription:
    """Parse and sanity-check an offer, turning aiortc's parser errors into ``OfferError``.

    The parser's own message stays in the log: an answer never carries exception text.
    """
    if not sdp.strip():
        raise OfferError("the offer SDP is empty; send the localDescription.sdp of your offer")
    try:
        # aiortc's parser has no error type of its own: malformed input fails with whatever
        # its line splitting hits (ValueError, AssertionError, IndexError, KeyError,
        # StopIteration, ...).
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        logger.info("unparseable offer: %s: %s", type(exc).__name__, exc)
        raise OfferError(
            "the offer SDP is malformed; send the unchanged localDescription.sdp of an "
            "RTCPeerConnection offer"
        ) from exc
    kinds = [m.kind for m in parsed.media]
    if "video" not in kinds or "audio" not in kinds:
        raise OfferError(
            "the offer must have an audio and a video media section (found "
            f"{kinds or 'none'}); add a sendrecv audio transceiver for the microphone and a "
            "recvonly video transceiver for the avatar"
        )
    # An offer without candidates is valid: a WHEP player posts its offer before gathering
    # and the server learns its addresses from the player's connectivity checks
    # (peer-reflexive candidates). The answer always carries the server's candidates.
    for media in parsed.media:
        if not media.ice or not media.ice.usernameFragment or not media.ice.password:
            raise OfferError("the offer has a media section without ICE credentials")
        if not media.dtls or not media.dtls.fingerprints:
            raise OfferError("the offer has a media section without a DTLS fingerprint")
    return parsed


class EventsChannel:
    """JSON text both ways on the ``events`` data channel.

    ``on_text(text)`` is called for every text message; a binary message is answered with
    ``binary_reply`` (if given), since the channel carries commands, not audio.
    """

    def __init__(
        self,
        channel: RTCDataChannel,
        on_text: Callable[[str], None],
        binary_reply: str | None = None,
    ) -> None:
        self._channel = channel
        self._on_text = on_text
        self._binary_reply = binary_reply
        self.sent = 0
        channel.on("message", self._on_message)

    @property
    def open(self) -> bool:
        """True while messages can be sent."""
        return self._channel.readyState == "open"

    def send(self, text: str) -> bool:
        """Send ``text`` if the channel is open; False (and nothing sent) otherwise."""
        if not self.open:
            logger.debug("events channel %s: dropped a message", self._channel.readyState)
            return False
        self._channel.send(text)
        self.sent += 1
        return True

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the channel closes."""
        self._channel.on("close", callback)

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._on_text(message)
        elif self._binary_reply is not None:
            self.send(self._binary_reply)


class PeerLink:
    """The answering side of one session's peer connection.

    ``on_lost(reason)`` is called once, from the event loop, when the peer is gone;
    ``on_connected()`` once, when the connection first reaches "connected" (media can flow).
    """

    def __init__(
        self,
        config: PeerConfig,
        on_lost: Callable[[str], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._on_lost = on_lost
        self._on_connected = on_connected
        self._lost = False
        self._closed = False
        policy = RTCIceTransportPolicy.RELAY if config.relay_only else RTCIceTransportPolicy.ALL
        self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=list(config.ice_servers), iceTransportPolicy=policy)
        )
        self._watch_task: asyncio.Task[None] | None = None
        self._pc.on("connectionstatechange", self._on_connection_state)

    @property
    def connection_state(self) -> str:
        """The peer connection's state (new, connecting, connected, failed, closed)."""
        return self._pc.connectionState

    async def answer(
        self,
        offer_sdp: str,
        *,
        video: MediaStreamTrack,
        audio: MediaStreamTrack,
        on_inbound_audio: Callable[[MediaStreamTrack], None],
        on_events_channel: Callable[[RTCDataChannel], None] | None = None,
    ) -> str:
        """Answer ``offer_sdp``: send ``video`` and ``audio``, hand the caller's mic track over,
        and the ``events`` data channel once the client opens it.

        Raises ``OfferError`` when the offer is malformed or unusable. Returns the answer SDP
        with every ICE candidate in it.
        """
        offer_sdp = with_directions(offer_sdp)
        _parse_offer(offer_sdp)
        pc = self._pc

        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                on_inbound_audio(track)

        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == EVENTS_CHANNEL_LABEL and on_events_channel is not None:
                on_events_channel(channel)
            else:
                logger.info("ignoring the client's data channel %r", channel.label)

        pc.on("track", on_track)
        pc.on("datachannel", on_datachannel)
        # Transceivers made before the offer is applied are matched to its m-lines, so the
        # codec preference is in place when aiortc negotiates codecs.
        video_transceiver: RTCRtpTransceiver = pc.addTransceiver(video, direction="sendonly")
        prefer_video_codec(video_transceiver, self.config.video_codec)
        audio_transceiver: RTCRtpTransceiver = pc.addTransceiver(audio, direction="sendrecv")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if video_transceiver.mid is None or audio_transceiver.mid is None:
                raise OfferError("the offer's audio or video section could not be matched")
            if audio_transceiver.receiver.track is None:
                logger.info("the offer sends no microphone audio; the avatar will idle")
            answer = await pc.createAnswer()
            with host_candidates(self.config.host_candidates):
                await pc.setLocalDescription(answer)  # gathers every candidate before returning
        except OfferError:
            raise
        except OperationError as exc:
            logger.info("offer without a common codec: %s", exc)
            raise OfferError(
                "the offer shares no codec with the server; the server sends "
                f"{self.config.video_codec.value.upper()} or H264 video and Opus audio"
            ) from exc
        except Exception as exc:
            # aiortc has no error type for an offer it cannot answer: a parsed but
            # inconsistent offer fails deep inside it (ValueError, AttributeError,
            # StopIteration, ...). The offer is the client's input, so this is the client's
            # 400; the log keeps one line of details (the traceback only at DEBUG: a client
            # must not be able to fill the log with tracebacks), the answer none.
            logger.info("the WebRTC stack could not answer an offer: %r", exc)
            logger.debug("the unanswerable offer's traceback", exc_info=exc)
            raise OfferError(
                "the offer was rejected: send the unchanged localDescription.sdp of an "
                "RTCPeerConnection offer with a sendrecv audio and a recvonly video transceiver"
            ) from exc
        local = pc.localDescription
        active = [m for m in SessionDescription.parse(local.sdp).media if m.port != 0]
        if not active:
            raise OfferError("the offer leaves no media section to answer (every one rejected)")
        await self._check_relay(local.sdp)
        if not any(m.ice_candidates for m in active):
            if self.config.ice_servers or host_addresses(self.config.host_candidates):
                # This host has addresses: the offer's ICE description left aiortc nothing
                # to gather for (e.g. candidates missing from the bundle's first section).
                raise OfferError(
                    "the offer's ICE description cannot be answered: send the complete "
                    "localDescription.sdp, with its candidates, once gathering is complete"
                )
            raise NoIceCandidates(
                "the server found no ICE candidates to offer; on a loopback-only host enable "
                "loopback candidates (HEADCAST_ICE_LOOPBACK=true) or configure ice_servers"
            )
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(), name="headcast-peer-watch"
        )
        return local.sdp

    async def _check_relay(self, sdp: str) -> None:
        """Raise ``NoRelayCandidates`` (relay only) or warn when TURN gave no relay candidate."""
        servers = list(self.config.ice_servers)
        if not turn_urls(servers) or relay_candidates(sdp) > 0:
            return
        if self.config.relay_only:
            raise NoRelayCandidates(
                "the server uses relay candidates only (ice_relay_only) and got none: "
                + await explain_turn_failure(servers)
            )
        logger.warning(
            "no relay candidate from the TURN server(s) %s: clients behind symmetric NAT cannot "
            "connect; set ice_relay_only to see why",
            ", ".join(url for url, _ in turn_urls(servers)),
        )

    async def close(self) -> None:
        """Close the peer connection and stop watching it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        try:
            await self._pc.close()
        except Exception as exc:  # aiortc cannot close a half-negotiated connection cleanly
            logger.info("closing a peer connection failed part-way: %r", exc)
            logger.debug("the failed close's traceback", exc_info=exc)

    # -- liveness -------------------------------------------------------------------------

    def _lose(self, reason: str) -> None:
        if self._lost or self._closed:
            return
        self._lost = True
        logger.info("peer lost: %s", reason)
        self._on_lost(reason)

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        logger.debug("peer connection state: %s", state)
        if state == "connected" and self._on_connected is not None:
            on_connected, self._on_connected = self._on_connected, None
            on_connected()
        if state in _ENDED_STATES:
            self._lose(f"the peer connection {state}")

    async def _receiver_report_marks(self) -> tuple[object, ...]:
        """The timestamps of the latest receiver reports on our senders (change = alive)."""
        marks: list[object] = []
        for sender in self._pc.getSenders():
            report = await sender.getStats()
            marks.extend(s.timestamp for s in report.values() if s.type == _REMOTE_INBOUND)
        return tuple(marks)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while self._pc.connectionState != "connected":
            if self._pc.connectionState in _ENDED_STATES:
                self._lose(f"the peer connection {self._pc.connectionState}")
                return
            if loop.time() - started > self.config.connect_timeout_s:
                self._lose(f"the peer did not connect within {self.config.connect_timeout_s:.0f} s")
                return
            await asyncio.sleep(LIVENESS_POLL_S)
        last_heard = loop.time()
        marks = await self._receiver_report_marks()
        while True:
            await asyncio.sleep(LIVENESS_POLL_S)
            if self._pc.connectionState in _ENDED_STATES:
                self._lose(f"the peer connection {self._pc.connectionState}")
                return
            current = await self._receiver_report_marks()
            if current != marks:
                marks = current
                last_heard = loop.time()
            elif loop.time() - last_heard > self.config.peer_timeout_s:
                self._lose(
                    f"no RTCP receiver report for {self.config.peer_timeout_s:.0f} s "
                    "(the client vanished)"
                )
                return

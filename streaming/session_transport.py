"""One session's WebRTC side: answering the offer, the caller's audio, the events channel.

Owns ``SessionTransport``: it answers the session's one WebRTC offer with its two outgoing
tracks (``accept_offer``; a second offer is refused, an unusable one can be corrected),
starts the media when the peer connects (``on_connected``), reads the inbound audio track
into the speech input (a mic session's speech; read and dropped in a push session), wires
the ``events`` data channel -- the session's events out as JSON, the client's text commands
in, refusals answered with ``error`` events -- and closes the peer connection.

Knows nothing about chunks, engines or playout: the session hands it its tracks, its
speech input, its command handler and its event subscription.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc import RTCDataChannel
from aiortc.mediastreams import MediaStreamTrack

from headcast.streaming.events import ErrorCode, Event, Listener, ProtocolError
from headcast.streaming.peer import EventsChannel, PeerConfig, PeerLink
from headcast.streaming.session_config import AlreadyConnected, AudioSource, SessionEnded
from headcast.streaming.session_tasks import SessionTasks
from headcast.streaming.speech_input import SpeechInput
from headcast.streaming.tracks import AvatarAudioTrack, AvatarVideoTrack

logger = logging.getLogger(__name__)

EVENTS_BINARY_REPLY = (
    "the events channel takes JSON text commands; push audio over the audio WebSocket"
)
"""What a binary message on the events channel is told."""


class SessionTransport:
    """The peer connection of one session (see the module docstring)."""

    def __init__(
        self,
        *,
        video: AvatarVideoTrack,
        audio: AvatarAudioTrack,
        speech: SpeechInput,
        tasks: SessionTasks,
        handle_text: Callable[[str], None],
        subscribe_events: Callable[[Listener], Callable[[], None]],
        is_closing: Callable[[], bool],
        on_lost: Callable[[str], None],
        on_connected: Callable[[], None],
        label: str = "session",
    ) -> None:
        self._video = video
        self._audio = audio
        self._speech = speech
        self._tasks = tasks
        self._handle_text = handle_text
        self._subscribe_events = subscribe_events
        self._is_closing = is_closing
        self._on_lost = on_lost
        self._on_connected = on_connected
        self._label = label
        self._peer: PeerLink | None = None

    @property
    def has_peer(self) -> bool:
        """True while a peer connection is answered or being negotiated."""
        return self._peer is not None

    async def accept_offer(self, offer_sdp: str, peer_config: PeerConfig) -> str:
        """Answer a WebRTC offer; returns the answer SDP (``AvatarSession.accept_offer``)."""
        if self._peer is not None:
            raise AlreadyConnected(f"{self._label} already has a peer connection")
        peer = PeerLink(peer_config, on_lost=self._on_lost, on_connected=self._on_connected)
        self._peer = peer
        try:
            answer = await peer.answer(
                offer_sdp,
                video=self._video,
                audio=self._audio,
                on_inbound_audio=self._attach_inbound_audio,
                on_events_channel=self._attach_events_channel,
            )
        except BaseException as exc:
            self._peer = None
            await peer.close()
            if self._is_closing() and isinstance(exc, Exception):  # deleted while negotiating
                raise SessionEnded(f"{self._label} closed while answering the offer") from exc
            raise
        if self._is_closing():  # closed while negotiating
            raise SessionEnded(f"{self._label} closed while answering the offer")
        return answer

    async def close(self) -> None:
        """Close the peer connection, if there is one."""
        if self._peer is not None:
            await self._peer.close()

    def _attach_inbound_audio(self, track: MediaStreamTrack) -> None:
        """Read a WebRTC audio track until it ends: the speech of a mic session; read and
        dropped in a push session."""
        mic = self._speech.audio_source is AudioSource.MIC
        what = "inbound-audio" if mic else "inbound-audio-ignored"
        self._tasks.spawn(self._speech.read_track(track), what)

    def _attach_events_channel(self, channel: RTCDataChannel) -> None:
        """Send the session's events on ``channel`` and take its commands."""

        def on_text(text: str) -> None:
            try:
                self._handle_text(text)
            except ProtocolError as exc:
                events.send(exc.event().to_json())
            except SessionEnded as exc:
                events.send(ProtocolError(ErrorCode.SESSION_ENDED, str(exc)).event().to_json())

        binary_reply = ProtocolError(ErrorCode.BAD_COMMAND, EVENTS_BINARY_REPLY).event()
        events = EventsChannel(channel, on_text, binary_reply=binary_reply.to_json())

        def forward(event: Event) -> None:
            events.send(event.to_json())

        events.on_close(self._subscribe_events(forward))

"""``HeadcastVideoService``: a headcast avatar in a pipecat pipeline, like its avatar services.

Shaped like pipecat's Simli, Tavus and HeyGen video services (an ``AIService`` placed after
the TTS): on ``StartFrame`` it opens a push session on a headcast server and connects to it
(WebRTC, aiortc, receive only) and to the session's audio WebSocket; it consumes the TTS
audio frames (they are not forwarded) and sends them as PCM16, paced on the server's
``queued_ms`` so the server's queue never overflows; a ``TTSStoppedFrame`` (the end of an
utterance) becomes ``audio.end``, an ``InterruptionFrame`` becomes ``interrupt`` (then goes
on). The avatar's video and audio come back over WebRTC and go downstream as
``OutputImageRawFrame`` (RGB, ``sync_with_audio``) and ``SpeechOutputAudioRawFrame`` (mono,
at the pipeline's output rate) in media-time order (``MediaTimeline``), 25 fps, each with
its media time as ``pts``. ``EndFrame``
and ``CancelFrame`` delete the session. headcast's ``error`` events, a refused session (429
at capacity, 503 while the engine loads) and a dropped connection become pipecat
``ErrorFrame``s, never a hang.

Knows the protocol only through ``headcast_client``; knows nothing about the server's inside.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import av
import httpx
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    SpeechOutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from websockets.exceptions import WebSocketException

from headcast.streaming.ice import HostCandidatePolicy
from headcast_client import HeadcastClient, HeadcastError, PushSocket, SessionInfo
from headcast_client.client import WebRTCConnection
from headcast_pipecat.timeline import Kind, MediaTimeline

logger = logging.getLogger(__name__)

PUSH_SAMPLE_RATES_HZ = (16_000, 24_000, 48_000)
"""Rates a push session takes; other TTS rates are resampled to the first."""

VIDEO_CLOCK_HZ = 90_000
AUDIO_CLOCK_HZ = 48_000
"""RTP clock rates of the avatar's video and audio tracks."""

DEFAULT_AHEAD_MS = 2000
"""How far ahead of playback TTS audio may be queued on the server, in milliseconds (more
than one 1.12 s chunk, which the server plays whole)."""

FEEDBACK_WAIT_S = 0.1
"""Longest wait for queue feedback before looking again, in seconds."""

RELEASE_POLL_S = 0.01
"""How often received media is released in media-time order, in seconds."""

MS_PER_S = 1000
NS_PER_S = 1_000_000_000
PCM16_BYTES = 2
REFUSED_AUDIO = ("audio_buffer_full", "frame_too_large", "bad_audio_frame")


class HeadcastVideoService(AIService):
    """A headcast avatar that speaks the pipeline's TTS audio (place it after the TTS).

    ``base_url`` is the headcast server; ``api_key`` its API key (servers with ``api_keys``);
    ``avatar`` the avatar's name; ``sample_rate`` the rate of the push session (default: the
    pipeline's output rate when the server takes it, else 16 kHz). ``host_candidates`` picks
    the client's own ICE addresses (loopback only for a server on a loopback-only host).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        avatar: str = "default",
        sample_rate: int | None = None,
        ahead_ms: int = DEFAULT_AHEAD_MS,
        host_candidates: HostCandidatePolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._base_url = base_url
        self._api_key = api_key
        self._avatar = avatar
        self._requested_rate = sample_rate
        self._ahead_ms = ahead_ms
        self._host_candidates = host_candidates
        self._client: HeadcastClient | None = None
        self._session: SessionInfo | None = None
        self._connection: WebRTCConnection | None = None
        self._socket: PushSocket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._out_rate = 0
        self._push_rate = 0
        self._in_resampler = create_stream_resampler()
        self._out_resampler = create_stream_resampler()
        self._server_queued_ms = 0.0
        self._unacked_ms: list[float] = []
        self._feedback = asyncio.Event()
        self._closing = False

    @property
    def session(self) -> SessionInfo | None:
        """The headcast session while the service runs (its id and token)."""
        return self._session

    def can_generate_metrics(self) -> bool:
        return True

    # -- lifecycle ------------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        self._out_rate = setup.audio_out_sample_rate

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        rate = self._requested_rate or self._out_rate
        self._push_rate = rate if rate in PUSH_SAMPLE_RATES_HZ else PUSH_SAMPLE_RATES_HZ[0]
        try:
            await self._open()
        except (HeadcastError, httpx.HTTPError, WebSocketException, OSError, TimeoutError) as exc:
            await self._close()
            await self.push_error(_why_not_started(exc), exception=exc)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._close()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._close()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()

    async def _open(self) -> None:
        self._closing = False
        self._client = HeadcastClient(
            self._base_url, api_key=self._api_key, host_candidates=self._host_candidates
        )
        self._session = await self._client.create_session(
            self._avatar, audio_source="push", sample_rate=self._push_rate
        )
        self._connection = await self._client.connect_webrtc(self._session)
        self._socket = await self._client.push_socket(self._session)
        timeline: MediaTimeline[Frame] = MediaTimeline(
            {"video": VIDEO_CLOCK_HZ, "audio": AUDIO_CLOCK_HZ}
        )
        self._tasks = [
            self.create_task(self._read_events(self._socket), "headcast-events"),
            self.create_task(self._receive("video", self._connection.video, timeline)),
            self.create_task(self._receive("audio", self._connection.audio, timeline)),
            self.create_task(self._release(timeline), "headcast-release"),
        ]
        logger.info("headcast session %s connected", self._session.id)

    async def _close(self) -> None:
        """Idempotent: stop the tasks, delete the session, close the socket and the peer."""
        self._closing = True
        self._feedback.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await self.cancel_task(task)
        client, session = self._client, self._session
        socket, connection = self._socket, self._connection
        self._client = self._session = self._socket = self._connection = None
        if client is not None and session is not None:
            try:
                await client.delete_session(session)
            except HeadcastError as exc:
                if exc.status != 404:  # already gone is what we wanted
                    logger.warning("could not delete headcast session %s: %s", session.id, exc)
            except OSError as exc:
                logger.warning("could not delete headcast session %s: %s", session.id, exc)
        if socket is not None:
            await socket.close()
        if connection is not None:
            await connection.close()
        if client is not None:
            await client.aclose()

    # -- frames in --------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            await self._speak(frame)
        elif isinstance(frame, TTSStoppedFrame):
            await self._command("audio.end")
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            self._server_queued_ms = 0.0
            self._feedback.set()
            await self._command("interrupt")
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _speak(self, frame: TTSAudioRawFrame) -> None:
        if not self._sending():
            return  # not connected, or the connection dropped: an ErrorFrame said so
        pcm = frame.audio
        if frame.num_channels > 1:
            samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, frame.num_channels)
            pcm = samples.mean(axis=1).astype("<i2").tobytes()
        if frame.sample_rate != self._push_rate:
            pcm = await self._in_resampler.resample(pcm, frame.sample_rate, self._push_rate)
        if not pcm:
            return
        frame_ms = len(pcm) / PCM16_BYTES / self._push_rate * MS_PER_S
        while self._queued_ms() + frame_ms > self._ahead_ms and self._sending():
            self._feedback.clear()
            try:
                await asyncio.wait_for(self._feedback.wait(), FEEDBACK_WAIT_S)
            except TimeoutError:
                continue
        if self._socket is None or not self._sending():
            return
        self._unacked_ms.append(frame_ms)
        await self._socket.send_pcm16(pcm)

    def _sending(self) -> bool:
        """True while audio can go out: connected, not closing, the socket open."""
        return not self._closing and self._socket is not None and self._socket.close_code is None

    def _queued_ms(self) -> float:
        return self._server_queued_ms + sum(self._unacked_ms)

    async def _command(self, command: str) -> None:
        if self._socket is not None and self._socket.close_code is None:
            await self._socket.command(command)

    # -- events and media out ---------------------------------------------------------------

    async def _read_events(self, socket: PushSocket) -> None:
        while True:
            try:
                event = await socket.events.next_event(timeout_s=FEEDBACK_WAIT_S)
            except TimeoutError:
                if socket.close_code is not None and not self._closing:
                    await self.push_error(
                        f"the headcast session's connection dropped (close code "
                        f"{socket.close_code}); start a new session"
                    )
                    return
                continue
            kind = event.get("type")
            if kind == "audio.queued":
                if self._unacked_ms:
                    self._unacked_ms.pop(0)
                self._server_queued_ms = float(event["queued_ms"])
            elif kind == "chunk.stats":
                self._server_queued_ms = float(event["queued_ms"])
            elif kind == "error":
                if event.get("code") in REFUSED_AUDIO and self._unacked_ms:
                    self._unacked_ms.pop(0)
                await self.push_error(f"headcast error {event.get('code')}: {event.get('message')}")
            self._feedback.set()

    async def _receive(
        self, kind: Kind, track: MediaStreamTrack, timeline: MediaTimeline[Frame]
    ) -> None:
        while True:
            try:
                received = await track.recv()
            except MediaStreamError:
                if not self._closing:
                    await self.push_error(
                        f"the headcast session's {kind} track ended; start a new session"
                    )
                return
            frame = (
                self._image(received)
                if isinstance(received, av.VideoFrame)
                else await self._audio(received)
            )
            if frame is not None:
                timeline.add(kind, int(received.pts or 0), frame, time.monotonic())

    def _image(self, received: av.VideoFrame) -> Frame:
        rgb = received.to_ndarray(format="rgb24")  # [H, W, 3] uint8
        image = OutputImageRawFrame(
            image=rgb.tobytes(), size=(received.width, received.height), format="RGB"
        )
        image.sync_with_audio = True
        return image

    async def _audio(self, received: av.AudioFrame) -> Frame | None:
        """Mono PCM16 at the pipeline's output rate (None while the resampler fills up)."""
        channels = len(received.layout.channels)
        samples = received.to_ndarray().reshape(-1, channels)  # [n, channels] s16
        mono = samples.mean(axis=1).astype("<i2").tobytes()
        if received.sample_rate != self._out_rate:
            mono = await self._out_resampler.resample(mono, received.sample_rate, self._out_rate)
        if not mono:
            return None
        return SpeechOutputAudioRawFrame(audio=mono, sample_rate=self._out_rate, num_channels=1)

    async def _release(self, timeline: MediaTimeline[Frame]) -> None:
        """Push the received media downstream in media-time order, stamped with it (``pts``)."""
        while True:
            for _kind, at, frame in timeline.take(time.monotonic()):
                frame.pts = round(at * NS_PER_S)
                await self.push_frame(frame)
            await asyncio.sleep(RELEASE_POLL_S)


def _why_not_started(error: BaseException) -> str:
    """A sentence for a session that could not start."""
    if isinstance(error, HeadcastError):
        retry = error.headers.get("Retry-After")
        wait = f"; retry in {retry} s" if retry else ""
        if error.status == 429:
            return f"the headcast server is at capacity (every avatar slot is in use){wait}"
        if error.status == 503:
            return f"the headcast engine is not ready yet{wait}"
        return f"headcast refused the session: {error}"
    return f"could not connect to the headcast server: {type(error).__name__}: {error}"

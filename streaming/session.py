"""One live avatar session: the facade that wires its parts, its transport and its close.

Owns ``AvatarSession``, shaped after LiveKit's avatar ``VideoGenerator``: speech goes in,
paired frames and audio come out on two WebRTC tracks, on one media clock. The work is done
by parts, each in its own module, sharing one ``InterruptState``
(``streaming.interrupt_state``):

- ``SpeechInput`` (``streaming.speech_input``): the audio source, fixed at creation -- the
  caller's WebRTC microphone (``mic``) or pushed audio (``push``, chatbot TTS) -- the
  intake, and where utterances land on the media timeline;
- ``ChunkScheduler`` (``streaming.scheduler``): takes a chunk of audio every 1.12 s, asks the
  ``GenerationGate`` whether it goes through the engine (``idle_mode``, the generation slot
  given at creation), submits it and sends every chunk out in order, as generated or
  replaced by an idle chunk (``streaming.chunk_policy``);
- ``ChunkPlayout`` (``streaming.playout``): converts chunks and feeds the tracks, cuts them
  on an interrupt, plays the idle-loop filler and fades the engine back in;
- ``SessionTransport`` (``streaming.session_transport``): the WebRTC offer, the inbound
  audio and the ``events`` data channel.

The session itself takes commands from any transport (``handle_text``), publishes its
events (``session.ready``, ``speech.started`` / ``speech.ended``, ``interrupted``,
``chunk.stats``, ``error``) to its ``events`` bus, starts the media (when the peer connects,
or with ``start``), orders an ``interrupt`` across the parts, and ``close()`` releases
everything. Settings and errors live in ``streaming.session_config``. Knows nothing about
HTTP, tokens or metrics backends (it reports to a ``SessionObserver``), nor how chunks are
scheduled, converted, paced or carried (its parts do that).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from headcast.pipeline.engine import EngineWorker
from headcast.pipeline.media import SAMPLES_PER_FRAME, Avatar
from headcast.streaming.clock import LoopClock, WallClock
from headcast.streaming.events import (
    CommandType,
    ErrorCode,
    EventBus,
    Interrupted,
    Listener,
    ProtocolError,
    SessionReady,
    parse_command,
)
from headcast.streaming.generation_slot import GenerationSlot
from headcast.streaming.interrupt_state import InterruptState
from headcast.streaming.observer import NullObserver, SessionObserver
from headcast.streaming.peer import PeerConfig
from headcast.streaming.playout import ChunkPlayout
from headcast.streaming.push import PushFormat
from headcast.streaming.scheduler import ChunkScheduler
from headcast.streaming.session_config import (
    DEFAULT_PREPARE_TIMEOUT_S,
    AudioSource,
    SessionConfig,
    SessionEnded,
    SessionError,
)
from headcast.streaming.session_tasks import SessionTasks
from headcast.streaming.session_transport import SessionTransport
from headcast.streaming.speech_input import SpeechInput

logger = logging.getLogger(__name__)


class AvatarSession:
    """One caller's live avatar. Create it on the event loop; ``close()`` it when done.

    The engine starts preparing the avatar at once (``wait_prepared`` awaits it). The audio
    source is ``audio_source`` (``push_format`` bounds a push session's audio; defaults
    apply if it is ``None``). ``slot`` is the session's place in its engine group's
    generation slots (``None``: a slot of its own). ``on_closed(session, reason)`` is called
    once, after everything is released.
    """

    def __init__(
        self,
        worker: EngineWorker,
        avatar: Avatar,
        config: SessionConfig,
        *,
        audio_source: AudioSource = AudioSource.MIC,
        push_format: PushFormat | None = None,
        observer: SessionObserver | None = None,
        slot: GenerationSlot | None = None,
        clock: WallClock | None = None,
        executor: Executor | None = None,
        seed: int = 0,
        on_closed: Callable[[AvatarSession, str], None] | None = None,
        label: str = "session",
    ) -> None:
        self.config = config
        self.avatar = avatar
        self.label = label
        self.events = EventBus()
        """The session's events; subscribe with ``subscribe_events`` (replays readiness)."""
        self._observer: SessionObserver = observer or NullObserver()
        self._clock: WallClock = clock or LoopClock()
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._state = InterruptState()
        self.speech = SpeechInput(
            config,
            self.events,
            self._observer,
            audio_source=audio_source,
            push_format=push_format,
            label=label,
        )
        self.playout = ChunkPlayout(
            avatar.image,
            config,
            self._state,
            clock=self._clock,
            observer=self._observer,
            on_frame_sent=self._frame_sent,
            executor=executor,
            label=label,
        )
        self.scheduler = ChunkScheduler(
            worker,
            avatar,
            config,
            state=self._state,
            speech=self.speech,
            playout=self.playout,
            events=self.events,
            observer=self._observer,
            clock=self._clock,
            on_engine_stopped=self._spawn_close,
            slot=slot,
            seed=seed,
            label=label,
        )
        self.audio_source = audio_source
        self.video_track = self.playout.video_track
        self.audio_track = self.playout.audio_track
        self._tasks = SessionTasks(label, on_failure=self._spawn_close)
        self.transport = SessionTransport(
            video=self.video_track,
            audio=self.audio_track,
            speech=self.speech,
            tasks=self._tasks,
            handle_text=self.handle_text,
            subscribe_events=self.subscribe_events,
            is_closing=lambda: self._closing,
            on_lost=self._spawn_close,
            on_connected=self._peer_connected,
            label=label,
        )
        self._close_task: asyncio.Task[None] | None = None
        self._offer_at: float | None = None
        self._ready = False
        self._closing = False
        self._closed = asyncio.Event()
        self.close_reason: str | None = None

    # -- state --------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once media is flowing (the scheduler runs)."""
        return self.scheduler.started

    @property
    def closed(self) -> bool:
        """True once ``close`` has begun."""
        return self._closing

    @property
    def ready(self) -> bool:
        """True once the first video frame was sent (``session.ready``)."""
        return self._ready

    @property
    def queued_ms(self) -> int:
        """Received audio waiting to be taken into a chunk, in milliseconds."""
        return self.speech.queued_ms

    @property
    def chunks_generated(self) -> int:
        """Chunks the engine generated that went out (or were cut by an interrupt)."""
        return self.scheduler.chunks_generated

    async def wait_prepared(self, timeout: float = DEFAULT_PREPARE_TIMEOUT_S) -> None:
        """Wait for the engine to prepare the avatar; raise ``PrepareFailed`` if it could not."""
        await self.scheduler.engine.wait_prepared(timeout)

    async def wait_closed(self) -> None:
        """Return once the session is fully closed."""
        await self._closed.wait()

    def subscribe_events(self, listener: Listener) -> Callable[[], None]:
        """Hear this session's events; a listener joining after the first frame hears
        ``session.ready`` at once. Returns the unsubscribe function."""
        unsubscribe = self.events.subscribe(listener)
        if self._ready:
            listener(SessionReady())
        return unsubscribe

    # -- speech and commands --------------------------------------------------------------------

    def push_pcm16(self, data: bytes) -> int:
        """Queue a binary PCM16 frame of a push session; returns the ms now queued
        (``SpeechInput.push_pcm16``). Raises ``ProtocolError`` or ``SessionEnded``."""
        self._check_open()
        return self.speech.push_pcm16(data)

    def push_audio(self, pcm: np.ndarray) -> None:
        """Feed speech directly: ``[n]`` float32 in [-1, 1] at 16 kHz (e.g. chatbot TTS).

        In a push session this counts toward the queue bound and the utterance events; in a
        mic session it is mixed into the intake as is.
        """
        self._check_open()
        self.speech.push_audio(pcm)

    def end_of_speech(self) -> None:
        """End the pushed utterance: the partial chunk is padded with silence and played,
        and ``speech.ended`` follows when its last sample is played."""
        self._check_open()
        self.speech.end_of_speech()

    def handle_text(self, text: str) -> None:
        """Apply one JSON text command from any transport; raises ``ProtocolError``."""
        if self._closing:
            raise ProtocolError(ErrorCode.SESSION_ENDED, f"{self.label} is closed")
        self._observer.on_activity()  # even a malformed command shows the client is there
        match parse_command(text):
            case CommandType.AUDIO_END:
                self.end_of_speech()
            case CommandType.INTERRUPT:
                self.interrupt()
            case CommandType.KEEP_ALIVE:
                pass

    def interrupt(self) -> Interrupted:
        """Drop queued audio, engine jobs not started and every unplayed frame and packet.

        From the cut on, filler from the idle loop plays (mouth at rest, silent audio) until
        the chunks taken after this call come out of the engine. Publishes and returns the
        ``interrupted`` event; ``played_ms`` is how much of the utterance playing was heard.
        """
        self._check_open()
        self._observer.on_activity()
        commanded_at = self._clock.now()
        self._state.interrupt()
        self.speech.clear()
        cut_sample = self.scheduler.interrupt(commanded_at)
        played_ms = 0 if cut_sample is None else self.speech.cut(cut_sample)
        event = Interrupted(played_ms=played_ms)
        logger.info("%s interrupted (%d ms of the utterance played)", self.label, played_ms)
        self.events.publish(event)
        return event

    def _check_open(self) -> None:
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")

    # -- transport and media ----------------------------------------------------------------

    async def accept_offer(self, offer_sdp: str, peer_config: PeerConfig) -> str:
        """Answer a WebRTC offer; returns the answer SDP. The media starts when the peer
        connects, so no frame falls due before anyone can receive it (no catch-up burst).

        Raises ``AlreadyConnected`` on a second offer, ``streaming.peer.OfferError`` when
        the offer is unusable (the session then accepts a corrected offer).
        """
        self._check_open()
        if not self.transport.has_peer:
            self._offer_at = self._clock.now()
        return await self.transport.accept_offer(offer_sdp, peer_config)

    def _peer_connected(self) -> None:
        """Start the media clock once the peer can receive (ICE and DTLS are up)."""
        if not self._closing and not self.started:
            self.start()

    def start(self) -> None:
        """Start the media: media time 0 is played out one latency budget from now."""
        if self.started:
            raise SessionError(f"{self.label} is already started")
        self._check_open()
        now = self._clock.now()
        if self._offer_at is None:
            self._offer_at = now
        self.scheduler.start(now)
        self._tasks.spawn(self.scheduler.take_loop(), "take")
        self._tasks.spawn(self.scheduler.emit_loop(), "emit")
        logger.info(
            "%s started: avatar %r, %dx%d, latency budget %.2f s",
            self.label,
            self.avatar.name,
            self.config.width,
            self.config.height,
            self.config.latency_budget_s,
        )

    def _frame_sent(self, frame_index: int, sent_at: float) -> None:
        """The playout sent video frame ``frame_index``: the first one makes the avatar
        live; the speech boundaries it reaches are announced."""
        if not self._ready:
            self._ready = True
            if self._offer_at is not None:
                self._observer.on_first_frame(sent_at - self._offer_at)
            self.events.publish(SessionReady())
        self.speech.played_until((frame_index + 1) * SAMPLES_PER_FRAME)

    # -- closing --------------------------------------------------------------------------------

    async def close(self, reason: str = "closed") -> None:
        """Release the peer connection, tasks, tracks and engine state. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._state.end()
        self.close_reason = reason
        await self._tasks.cancel_all()
        self.playout.stop()
        await self.transport.close()
        self.scheduler.close()
        self.speech.intake.clear()
        problems = self.scheduler.chunk_problems
        logger.info(
            "%s closed (%s) after %d chunks (%d generated, problems: %s)",
            self.label,
            reason,
            self._state.next_out,
            self.chunks_generated,
            {p.value: n for p, n in problems.items() if n} or "none",
        )
        self._closed.set()
        if self._on_closed is not None:
            self._on_closed(self, reason)

    def _spawn_close(self, reason: str) -> None:
        if self._closing:
            return
        # Not one of self._tasks: close() cancels those, and must not cancel itself.
        task = self._loop.create_task(self.close(reason), name=f"{self.label}-close")
        task.add_done_callback(_log_close_failure)
        self._close_task = task


def _log_close_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("closing a session failed", exc_info=task.exception())

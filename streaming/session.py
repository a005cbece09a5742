"""One live avatar session: audio in, chunk jobs to the engine, paired frames and audio out.

Owns ``AvatarSession``: the audio intake, the scheduler that paces chunk jobs by the media
clock, the drain of the engine's results, the two outgoing tracks, the peer link, and
``close()`` which releases all of them. The timeline, for chunk ``k`` (C = 1.12 s, session
started at ``t0``, ``B`` = the latency budget):

- at ``t0 + k·C + jitter`` the scheduler takes 17,920 samples from the intake (padding with
  silence, so an idle caller still gets a live, breathing avatar) and submits ``ChunkJob(k)``;
- chunk ``k`` is played out from ``t0 + B + k·C``: its 28 frames and the very 17,920 samples
  that drove them (as 56 packets at 48 kHz) go to the two tracks with due times from one
  ``Playout``, so sound and mouth cannot drift;
- if the engine's result is not in by ``t0 + B + k·C - margin`` (or it failed, or the mailbox
  was full), an idle chunk goes out instead -- the last frame held, with chunk ``k``'s audio --
  and the problem is logged and reported to the observer. A session never stalls or crashes
  on an engine error, and never takes other sessions down.

Shaped after LiveKit's avatar ``VideoGenerator``. The audio source is chosen before media
starts: the caller's WebRTC microphone (``mic``, the default) or pushed audio (``push``,
chatbot TTS: ``push_pcm16`` / ``push_audio``, ``end_of_speech``). Either way the session
publishes events (``streaming.events``) to its ``events`` bus -- ``session.ready``, the
utterances' ``speech.started`` / ``speech.ended`` when their media times are played (pushed
utterances as the application marks them, a microphone's as ``VoiceActivity`` detects
them), ``chunk.stats`` -- and takes commands (``handle_text``) from any transport.

``interrupt()`` drops queued audio, the engine jobs not started, and every frame and packet
not yet handed to the encoder; from the cut on, filler from the ``IdleLoop`` (the latest
chunk generated from silence, mouth at rest) plays until chunks taken after the interrupt
come out of the engine, so the output is idle within a frame or two of the command.

Its settings and errors live in ``streaming.session_config``; what the tracks report sending
is timed by ``streaming.send_timing``. Knows nothing about HTTP, tokens or metrics backends
(it reports to a ``SessionObserver``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
from aiortc import RTCDataChannel
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipeline.engine import (
    ChunkFailure,
    EngineWorker,
    MailboxFull,
    MailboxItem,
    SessionClosed,
)
from pipeline.media import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    CHUNK_SECONDS,
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    Avatar,
    Chunk,
    ChunkJob,
)
from streaming.audio_in import AudioIntake, receive_track
from streaming.clock import (
    AUDIO_PACKET_SAMPLES,
    CHUNK_AUDIO_PACKETS,
    VIDEO_TICKS_PER_FRAME,
    LoopClock,
    Playout,
    WallClock,
    audio_pts,
    video_pts,
)
from streaming.events import (
    ChunkStats,
    CommandType,
    ErrorCode,
    Event,
    EventBus,
    Interrupted,
    Listener,
    ProtocolError,
    SessionReady,
    SpeechEnded,
    SpeechStarted,
    parse_command,
)
from streaming.idle import IdleLoop, is_rest_audio
from streaming.observer import ChunkProblem, NullObserver, SessionObserver
from streaming.peer import EventsChannel, PeerConfig, PeerLink
from streaming.push import PushDecoder, PushFormat, SpeechMark, UtteranceLedger
from streaming.resample import Upsampler
from streaming.send_timing import SendTiming
from streaming.session_config import (
    DEFAULT_PREPARE_TIMEOUT_S,
    AlreadyConnected,
    AudioSource,
    PrepareFailed,
    SessionConfig,
    SessionEnded,
    SessionError,
)
from streaming.tracks import (
    AvatarAudioTrack,
    AvatarVideoTrack,
    ChunkMedia,
    TimedFrame,
    chunk_to_media,
    frame_pts,
)
from streaming.voice_activity import VoiceActivity

logger = logging.getLogger(__name__)

LATE_FRAME_S = 0.040
"""A video frame handed to the encoder more than this after its due time counts as late
(one frame period)."""

MS_PER_S = 1000

INTERRUPT_HEAD_FRAMES = 3
INTERRUPT_HEAD_PACKETS = 6
"""Idle video frames / audio packets (120 ms each) an interrupt queues at once, on the event
loop, so the output is idle before the emit loop builds the rest of the filler."""


INTERRUPTED_PROBLEM = "interrupted"
"""``chunk.stats`` problem of a chunk replaced by idle-loop filler after an interrupt."""


def _check_frames(frames: np.ndarray) -> str | None:
    """Why ``frames`` cannot be sent, or ``None`` if they are ``[28, H, W, 3]`` uint8."""
    if frames.ndim != 4 or frames.shape[0] != CHUNK_FRAMES or frames.shape[3] != 3:
        return f"expected [{CHUNK_FRAMES}, H, W, 3] frames, got {frames.shape}"
    if frames.dtype != np.uint8:
        return f"expected uint8 frames, got {frames.dtype}"
    return None


class AvatarSession:
    """One caller's live avatar. Create it on the event loop; ``close()`` it when done.

    The engine starts preparing the avatar at once (``wait_prepared`` awaits it). Media
    starts with ``accept_offer`` (WebRTC) or ``start`` (tests, non-WebRTC outputs).
    ``on_closed(session, reason)`` is called once, after everything is released.
    """

    def __init__(
        self,
        worker: EngineWorker,
        avatar: Avatar,
        config: SessionConfig,
        *,
        observer: SessionObserver | None = None,
        clock: WallClock | None = None,
        executor: Executor | None = None,
        seed: int = 0,
        on_closed: Callable[[AvatarSession, str], None] | None = None,
        label: str = "session",
    ) -> None:
        self.config = config
        self.avatar = avatar
        self.label = label
        self._observer: SessionObserver = observer or NullObserver()
        self._clock: WallClock = clock or LoopClock()
        self._executor = executor
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()

        self.intake = AudioIntake(round(config.max_buffered_audio_s * SAMPLE_RATE_HZ))
        self.video_track = AvatarVideoTrack(self._clock, on_sent=self._video_sent)
        self.audio_track = AvatarAudioTrack(self._clock, on_sent=self._audio_sent)
        self._upsampler = Upsampler()
        self._upsampler_epoch = 0
        """The interrupt epoch the upsampler's filter history belongs to."""
        self.idle_loop = IdleLoop(avatar.image, config.height, config.width)
        self.events = EventBus()
        """The session's events; subscribe with ``subscribe_events`` (replays readiness)."""
        self.audio_source = AudioSource.MIC
        self.push_format: PushFormat | None = None
        self._decoder: PushDecoder | None = None
        self._ledger: UtteranceLedger | None = None

        self._wake = asyncio.Event()
        self._prepared: asyncio.Future[None] = self._loop.create_future()
        # A failed preparation is also logged by the engine thread; mark it retrieved so an
        # unawaited failure does not warn again at garbage collection.
        self._prepared.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._handle = worker.open_session(
            avatar,
            notify=self._notify_threadsafe,
            seed=seed,
            mailbox_size=config.mailbox_size,
            done=self._prepared_threadsafe,
        )

        self._peer: PeerLink | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_task: asyncio.Task[None] | None = None
        self._started_at: float | None = None
        self._offer_at: float | None = None
        self._playout: Playout | None = None
        self._next_take = 0
        self._taken_audio: dict[int, np.ndarray] = {}
        self._skipped: set[int] = set()
        self._results: dict[int, MailboxItem] = {}
        self._emitted = 0
        self._last_frame: np.ndarray | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self.close_reason: str | None = None
        self.chunks_generated = 0
        self.chunk_problems: dict[ChunkProblem, int] = dict.fromkeys(ChunkProblem, 0)

        # Feeding cursors: the next video frame and audio packet index the tracks take.
        self._video_next = 0
        self._audio_next = 0
        self._epoch = 0
        """Bumped by every interrupt: media converted before it is stale."""
        self._filler_until = 0
        """Chunks below this index were taken before the last interrupt: they go out as filler."""
        self._settle_index: int | None = None
        """The first chunk taken after an interrupt: if silent it goes out as filler too, since
        the engine generated it from a state that still carries the cut speech."""
        self._previous_silent = False
        self._ease_next = False
        """Filler was played last: the next chunk fades in from the loop frame on screen."""
        self._ready = False
        self._marks: deque[SpeechMark] = deque()
        self._voice = VoiceActivity()
        """Finds utterances in a mic session's audio (push sessions have their ledger)."""
        """Utterance boundaries placed on the media timeline, not yet played."""
        self._speaking_from: int | None = None
        """Media sample where the utterance now playing started (None: none is playing)."""
        self.send_timing = SendTiming(self._observer, label)
        """Per-chunk A/V skew and interrupt latency, from what the tracks report sending."""
        self.frames_dropped = 0
        self.frames_late = 0

    # -- state ------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once media is flowing (the scheduler runs)."""
        return self._started_at is not None

    @property
    def closed(self) -> bool:
        """True once ``close`` has begun."""
        return self._closing

    @property
    def chunks_emitted(self) -> int:
        """Chunks handed to the tracks so far (generated or idle)."""
        return self._emitted

    async def wait_closed(self) -> None:
        """Return once the session is fully closed."""
        await self._closed.wait()

    async def wait_prepared(self, timeout: float = DEFAULT_PREPARE_TIMEOUT_S) -> None:
        """Wait for the engine to prepare the avatar; raise ``PrepareFailed`` if it could not."""
        try:
            await asyncio.wait_for(asyncio.shield(self._prepared), timeout)
        except TimeoutError:
            raise PrepareFailed(
                f"the engine did not prepare avatar {self.avatar.name!r} within {timeout:.0f} s"
            ) from None

    @property
    def ready(self) -> bool:
        """True once the first video frame was sent (``session.ready``)."""
        return self._ready

    @property
    def queued_ms(self) -> int:
        """Received audio waiting to be taken into a chunk, in milliseconds."""
        return round(self.intake.buffered * MS_PER_S / SAMPLE_RATE_HZ)

    # -- events -----------------------------------------------------------------------------

    def subscribe_events(self, listener: Listener) -> Callable[[], None]:
        """Hear this session's events; a listener joining after the first frame hears
        ``session.ready`` at once. Returns the unsubscribe function."""
        unsubscribe = self.events.subscribe(listener)
        if self._ready:
            listener(SessionReady())
        return unsubscribe

    # -- inputs -----------------------------------------------------------------------------

    def use_push_audio(self, push_format: PushFormat) -> None:
        """Make this a push session (chatbot mode): speech comes from ``push_pcm16`` /
        ``push_audio``, a WebRTC microphone track is read and ignored. Before media starts."""
        if self._started_at is not None:
            raise SessionError(f"{self.label}: the audio source is chosen before media starts")
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")
        self.audio_source = AudioSource.PUSH
        self.push_format = push_format
        self._decoder = PushDecoder(push_format)
        self._ledger = UtteranceLedger()
        # Never drop pushed audio silently: the push bound refuses frames before this fills.
        self.intake = AudioIntake(push_format.max_queued_samples + CHUNK_SAMPLES)

    def push_pcm16(self, data: bytes) -> int:
        """Queue one binary frame of PCM16 mono little-endian at the push sample rate.

        Returns the milliseconds of audio now queued. Raises ``ProtocolError`` (the frame is
        dropped whole) for odd-length or oversized frames and when the queue bound would be
        passed (``audio_buffer_full``: wait until ``queued_ms`` falls, then resend).
        """
        decoder, ledger = self._push_parts()
        self._observer.on_activity()
        decoder.check(data)
        self._check_room(decoder.format.samples_at_16k(len(data)))
        self._queue_pushed(decoder.decode(data), ledger)
        return self.queued_ms

    def push_audio(self, pcm: np.ndarray) -> None:
        """Feed speech directly: ``[n]`` float32 in [-1, 1] at 16 kHz (e.g. chatbot TTS).

        In a push session this counts toward the queue bound and the utterance events; in a
        mic session it is mixed into the intake as is.
        """
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")
        if self.audio_source is AudioSource.MIC:
            self.intake.push(pcm)
            return
        _decoder, ledger = self._push_parts()
        self._check_room(pcm.size)
        self._queue_pushed(pcm, ledger)

    def end_of_speech(self) -> None:
        """End the pushed utterance: the partial chunk is padded with silence and played,
        and ``speech.ended`` follows when its last sample is played."""
        decoder, ledger = self._push_parts()
        self._observer.on_activity()
        self._queue_pushed(decoder.flush(), ledger)
        ledger.end()

    def handle_text(self, text: str) -> None:
        """Apply one JSON text command from any transport; raises ``ProtocolError``."""
        if self._closing:
            raise ProtocolError(ErrorCode.SESSION_ENDED, f"{self.label} is closed")
        self._observer.on_activity()  # even a malformed command shows the client is there
        command = parse_command(text)
        match command:
            case CommandType.AUDIO_END:
                self.end_of_speech()
            case CommandType.INTERRUPT:
                self.interrupt()
            case CommandType.KEEP_ALIVE:
                pass

    def _push_parts(self) -> tuple[PushDecoder, UtteranceLedger]:
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")
        if self._decoder is None or self._ledger is None:
            raise ProtocolError(
                ErrorCode.NOT_PUSH_SESSION,
                f"{self.label} takes its audio from the WebRTC microphone; create the session "
                'with "audio_source": "push" to push audio',
            )
        return self._decoder, self._ledger

    def _check_room(self, incoming: int) -> None:
        assert self.push_format is not None
        bound = self.push_format.max_queued_samples
        if self.intake.buffered + incoming > bound:
            raise ProtocolError(
                ErrorCode.AUDIO_BUFFER_FULL,
                f"{self.queued_ms} ms of audio already queued and the bound is "
                f"{round(bound * MS_PER_S / SAMPLE_RATE_HZ)} ms; this frame was dropped whole: "
                "resend it once queued_ms has fallen (audio plays in real time)",
            )

    def _queue_pushed(self, samples: np.ndarray, ledger: UtteranceLedger) -> None:
        self.intake.push(samples)
        ledger.pushed_samples(samples.size)
        self._observer.on_audio_queued(self.intake.buffered / SAMPLE_RATE_HZ)

    def attach_inbound_audio(self, track: MediaStreamTrack) -> None:
        """Read a WebRTC audio track into the intake until it ends (ignored in push mode)."""
        if self.audio_source is AudioSource.PUSH:
            self._spawn(_discard_track(track), "inbound-audio-ignored")
            return
        self._spawn(
            receive_track(track, self.intake, on_activity=self._observer.on_activity),
            "inbound-audio",
        )

    def attach_events_channel(self, channel: RTCDataChannel) -> None:
        """Send this session's events on ``channel`` and take its commands."""

        def on_text(text: str) -> None:
            try:
                self.handle_text(text)
            except ProtocolError as exc:
                events.send(exc.event().to_json())
            except SessionEnded as exc:
                events.send(ProtocolError(ErrorCode.SESSION_ENDED, str(exc)).event().to_json())

        binary_reply = ProtocolError(
            ErrorCode.BAD_COMMAND,
            "the events channel takes JSON text commands; push audio over the audio WebSocket",
        ).event()
        events = EventsChannel(channel, on_text, binary_reply=binary_reply.to_json())

        def forward(event: Event) -> None:
            events.send(event.to_json())

        events.on_close(self.subscribe_events(forward))

    async def accept_offer(self, offer_sdp: str, peer_config: PeerConfig) -> str:
        """Answer a WebRTC offer; returns the answer SDP. The media starts when the peer
        connects, so no frame falls due before anyone can receive it (no catch-up burst).

        Raises ``AlreadyConnected`` on a second offer, ``streaming.peer.OfferError`` when
        the offer is unusable (the session then accepts a corrected offer).
        """
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")
        if self._peer is not None:
            raise AlreadyConnected(f"{self.label} already has a peer connection")
        self._offer_at = self._clock.now()
        peer = PeerLink(peer_config, on_lost=self._peer_lost, on_connected=self._peer_connected)
        self._peer = peer
        try:
            answer = await peer.answer(
                offer_sdp,
                video=self.video_track,
                audio=self.audio_track,
                on_inbound_audio=self.attach_inbound_audio,
                on_events_channel=self.attach_events_channel,
            )
        except BaseException as exc:
            self._peer = None
            await peer.close()
            if self._closing and isinstance(exc, Exception):  # deleted while negotiating
                raise SessionEnded(f"{self.label} closed while answering the offer") from exc
            raise
        if self._closing:  # closed while negotiating
            raise SessionEnded(f"{self.label} closed while answering the offer")
        return answer

    def _peer_connected(self) -> None:
        """Start the media clock once the peer can receive (ICE and DTLS are up)."""
        if not self._closing and self._started_at is None:
            self.start()

    def start(self) -> None:
        """Start the scheduler: media time 0 is played out one latency budget from now."""
        if self._started_at is not None:
            raise SessionError(f"{self.label} is already started")
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")
        now = self._clock.now()
        self._started_at = now
        if self._offer_at is None:
            self._offer_at = now
        self._playout = Playout(origin=now + self.config.latency_budget_s)
        self._spawn(self._take_loop(), "take")
        self._spawn(self._emit_loop(), "emit")
        logger.info(
            "%s started: avatar %r, %dx%d, latency budget %.2f s",
            self.label,
            self.avatar.name,
            self.config.width,
            self.config.height,
            self.config.latency_budget_s,
        )

    # -- interrupt --------------------------------------------------------------------------

    def interrupt(self) -> Interrupted:
        """Drop queued audio, engine jobs not started and every unplayed frame and packet.

        From the cut on, filler from the idle loop plays (mouth at rest, silent audio) until
        the chunks taken after this call come out of the engine. Publishes and returns the
        ``interrupted`` event; ``played_ms`` is how much of the utterance playing was heard.
        """
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")
        self._observer.on_activity()
        commanded_at = self._clock.now()
        self._epoch += 1
        self.intake.clear()
        self._voice.reset()
        if self._ledger is not None and self._decoder is not None:
            self._ledger.clear()
            self._decoder.reset()
        self._handle.drop_pending()
        played_ms = 0
        if self._started_at is not None:
            played_ms = self._cut_media(commanded_at)
        event = Interrupted(played_ms=played_ms)
        logger.info("%s interrupted (%d ms of the utterance played)", self.label, played_ms)
        self.events.publish(event)
        return event

    def _cut_media(self, commanded_at: float) -> int:
        """Take unplayed media off the tracks and schedule filler from the cut; returns the
        milliseconds of the interrupted utterance that were played."""
        dropped_video = self.video_track.drop_queued()
        dropped_audio = self.audio_track.drop_queued()
        if dropped_video:
            self._video_next = frame_pts(dropped_video[0].frame) // VIDEO_TICKS_PER_FRAME
        if dropped_audio:
            self._audio_next = frame_pts(dropped_audio[0].frame) // AUDIO_PACKET_SAMPLES
        unfed_chunks = max(self._next_take - self._emitted, 0)
        dropped = len(dropped_video) + unfed_chunks * CHUNK_FRAMES
        self.frames_dropped += dropped
        if dropped:
            self._observer.on_frames_dropped(dropped)
        cut_sample = self._video_next * SAMPLES_PER_FRAME
        first_chunk = min(self._video_next // CHUNK_FRAMES, self._audio_next // CHUNK_AUDIO_PACKETS)
        for index in range(first_chunk, self._next_take):
            self._results.pop(index, None)
            self._taken_audio.pop(index, None)
            self._skipped.discard(index)
        self._emitted = first_chunk
        self._filler_until = self._next_take
        self._settle_index = self._next_take
        self.idle_loop.restart()
        self.send_timing.interrupted(commanded_at, self._video_next, self._audio_next)
        if first_chunk < self._filler_until:
            # The first idle frames go out now, not after the emit loop's current conversion:
            # a few plane copies on the loop (about 1 ms a frame); the rest is built off it.
            self._feed(
                ChunkMedia(
                    index=first_chunk,
                    video=self.idle_loop.video(
                        list(range(self._video_next, self._video_next + INTERRUPT_HEAD_FRAMES))
                    ),
                    audio=self.idle_loop.silence(
                        list(range(self._audio_next, self._audio_next + INTERRUPT_HEAD_PACKETS))
                    ),
                )
            )

        while self._marks and self._marks[0].media_sample < cut_sample:
            self._play_mark(self._marks.popleft())  # boundaries before the cut were played
        self._marks.clear()
        played_ms = 0
        if self._speaking_from is not None:
            played_ms = round((cut_sample - self._speaking_from) * MS_PER_S / SAMPLE_RATE_HZ)
            self._speaking_from = None
        self._wake.set()
        return max(played_ms, 0)

    # -- closing ----------------------------------------------------------------------------

    async def close(self, reason: str = "closed") -> None:
        """Release the peer connection, tasks, tracks and engine state. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.video_track.stop()
        self.audio_track.stop()
        if self._peer is not None:
            await self._peer.close()
        self._handle.close()
        self.intake.clear()
        self._results.clear()
        self._taken_audio.clear()
        # A closed session's objects wait for the cycle collector (callbacks refer back to
        # it); its frames must not: release them now (a view of a whole chunk, the idle loop).
        self._last_frame = None
        self.idle_loop.release()
        logger.info(
            "%s closed (%s) after %d chunks (%d generated, problems: %s)",
            self.label,
            reason,
            self._emitted,
            self.chunks_generated,
            {p.value: n for p, n in self.chunk_problems.items() if n} or "none",
        )
        self._closed.set()
        if self._on_closed is not None:
            self._on_closed(self, reason)

    def _peer_lost(self, reason: str) -> None:
        self._spawn_close(reason)

    def _spawn_close(self, reason: str) -> None:
        if self._closing:
            return
        # Not in self._tasks: close() cancels those, and must not cancel itself.
        task = self._loop.create_task(self.close(reason), name=f"{self.label}-close")
        task.add_done_callback(self._log_close_failure)
        self._close_task = task

    @staticmethod
    def _log_close_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("closing a session failed", exc_info=task.exception())

    # -- tasks ------------------------------------------------------------------------------

    def _spawn(self, coro: object, what: str) -> None:
        task = self._loop.create_task(coro, name=f"{self.label}-{what}")  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.error("%s: task %s failed; closing", self.label, task.get_name(), exc_info=error)
            self._spawn_close(f"internal error in {task.get_name()}: {error}")

    # -- engine thread callbacks (called on the device thread) -------------------------------

    def _notify_threadsafe(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: nobody is left to read the result
            logger.debug("%s: result delivered after the event loop closed", self.label)

    def _prepared_threadsafe(self, error: BaseException | None) -> None:
        def settle() -> None:
            if self._prepared.done():
                return
            if error is None:
                self._prepared.set_result(None)
            else:
                self._prepared.set_exception(
                    PrepareFailed(
                        f"the engine could not prepare avatar {self.avatar.name!r}: {error}"
                    )
                )

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:
            logger.debug("%s: avatar prepared after the event loop closed", self.label)

    # -- the scheduler ------------------------------------------------------------------------

    def _take_time(self, index: int) -> float:
        assert self._started_at is not None
        return self._started_at + index * CHUNK_SECONDS + self.config.intake_jitter_s

    def _deadline(self, index: int) -> float:
        assert self._playout is not None
        return self._playout.chunk_due(index) - self.config.emit_margin_s

    async def _take_loop(self) -> None:
        """Every chunk period, take 17,920 samples and submit them as chunk job ``k``."""
        index = 0
        while True:
            await self._clock.sleep_until(self._take_time(index))
            audio, received = self._take_chunk_audio(index)
            self._taken_audio[index] = audio
            try:
                self._handle.submit(ChunkJob(index=index, audio=audio))
            except MailboxFull as exc:
                logger.warning(
                    "%s: chunk %d not submitted, engine busy (%s)", self.label, index, exc
                )
                self._skipped.add(index)
            except SessionClosed as exc:
                logger.info("%s: the engine stopped taking jobs (%s)", self.label, exc)
                self._spawn_close("the engine stopped")
                return
            logger.debug("%s: took chunk %d (%d received samples)", self.label, index, received)
            self._next_take = index + 1
            self._wake.set()
            index += 1

    def _take_chunk_audio(self, index: int) -> tuple[np.ndarray, int]:
        """Chunk ``index``'s 17,920 samples and how many of them are received audio."""
        ledger = self._ledger
        if ledger is None:  # the microphone: whatever arrived, padded with silence
            audio, received = self.intake.take(CHUNK_SAMPLES)
            self._marks.extend(self._voice.on_take(index * CHUNK_SAMPLES, audio))
            return audio, received
        limit = ledger.take_limit(self.intake.buffered)
        part, received = self.intake.take(limit)
        audio = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
        audio[:limit] = part
        self._marks.extend(ledger.on_take(index, received))
        return audio, received

    def _drain_mailbox(self) -> None:
        while (item := self._handle.mailbox.get_nowait()) is not None:
            if item.index < self._emitted:
                logger.debug("%s: chunk %d arrived after it went out idle", self.label, item.index)
                continue
            self._results[item.index] = item

    async def _wait_for_wake(self, deadline: float | None) -> None:
        if deadline is None:
            await self._wake.wait()
            return
        wake = asyncio.ensure_future(self._wake.wait())
        timer = asyncio.ensure_future(self._clock.sleep_until(deadline))
        try:
            await asyncio.wait({wake, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (wake, timer):
                waiter.cancel()
            await asyncio.gather(wake, timer, return_exceptions=True)

    async def _emit_loop(self) -> None:
        """Send chunks out in order: the engine's result, or an idle chunk when there is none."""
        while True:
            index = self._emitted
            self._wake.clear()
            self._drain_mailbox()
            if index >= self._next_take:
                await self._wait_for_wake(None)
                continue
            if index < self._filler_until:  # taken before an interrupt
                self._results.pop(index, None)
                self._skipped.discard(index)
                self._taken_audio.pop(index, None)
                await self._emit_filler(index)
            elif index in self._skipped:
                self._skipped.discard(index)
                await self._emit_idle(index, ChunkProblem.ENGINE_BUSY)
            elif index in self._results:
                item = self._results.pop(index)
                if index == self._settle_index and isinstance(item, Chunk):
                    self._settle_index = None
                    if is_rest_audio(item.audio):  # the engine's state still carries the cut
                        await self._emit_filler(index)
                        continue
                await self._emit_result(item)
            elif self._clock.now() >= self._deadline(index):
                logger.warning(
                    "%s: chunk %d not ready %.0f ms before playout; sending it idle",
                    self.label,
                    index,
                    self.config.emit_margin_s * 1000,
                )
                await self._emit_idle(index, ChunkProblem.LATE)
            else:
                await self._wait_for_wake(self._deadline(index))

    async def _emit_result(self, item: MailboxItem) -> None:
        if isinstance(item, ChunkFailure):
            logger.error(
                "%s: chunk %d failed in the engine: %s", self.label, item.index, item.message
            )
            await self._emit_idle(item.index, ChunkProblem.ENGINE_ERROR)
            return
        assert isinstance(item, Chunk)
        problem = _check_frames(item.frames)
        if problem is not None:
            logger.error("%s: chunk %d has unusable frames: %s", self.label, item.index, problem)
            await self._emit_idle(item.index, ChunkProblem.BAD_OUTPUT)
            return
        if item.audio.shape != (CHUNK_SAMPLES,):
            logger.error(
                "%s: chunk %d carries %s audio samples, not %d",
                self.label,
                item.index,
                item.audio.shape,
                CHUNK_SAMPLES,
            )
            await self._emit_idle(item.index, ChunkProblem.BAD_OUTPUT)
            return
        self.chunks_generated += 1
        self._observer.on_chunk(item.compute_seconds, item.rtf)
        # The chunk's own audio is, by the engine contract, the samples that drove its frames.
        await self._emit(item.index, item.frames, item.audio, compute_seconds=item.compute_seconds)

    async def _emit_idle(self, index: int, problem: ChunkProblem) -> None:
        self.chunk_problems[problem] += 1
        self._observer.on_chunk_problem(problem)
        if problem is ChunkProblem.LATE:  # the engine's frames will arrive and never play
            self.frames_dropped += CHUNK_FRAMES
            self._observer.on_frames_dropped(CHUNK_FRAMES)
        held = self._last_frame if self._last_frame is not None else self.avatar.image
        frames = np.broadcast_to(held, (CHUNK_FRAMES, *held.shape))
        await self._emit(index, frames, self._taken_audio[index], problem=problem.value)

    async def _emit_filler(self, index: int) -> None:
        """Chunk ``index`` (taken before an interrupt) as idle-loop frames and silence."""
        epoch = self._epoch
        media = await self._loop.run_in_executor(
            self._executor, self.idle_loop.filler, index, self._video_next, self._audio_next
        )
        if epoch != self._epoch or self._closing:
            return  # interrupted again while building: the emit loop starts over
        self._feed(media)
        self._ease_next = True
        self._emitted = index + 1
        self._publish_stats(index, None, INTERRUPTED_PROBLEM)

    async def _emit(
        self,
        index: int,
        frames: np.ndarray,
        audio: np.ndarray,
        *,
        compute_seconds: float | None = None,
        problem: str | None = None,
    ) -> None:
        """Convert chunk ``index`` off the loop and queue it on both tracks.

        ``compute_seconds`` is set for the engine's chunks, ``problem`` for idle ones.
        """
        self._taken_audio.pop(index, None)
        epoch, ease = self._epoch, self._ease_next
        media = await self._loop.run_in_executor(
            self._executor,
            self._convert,
            index,
            frames,
            audio,
            compute_seconds is not None,
            epoch,
            ease,
        )
        if epoch != self._epoch or self._closing:
            logger.debug("%s: chunk %d converted after an interrupt; not sent", self.label, index)
            return
        self._feed(media)
        self._ease_next = False
        self._last_frame = frames[-1]
        self._emitted = index + 1
        self._publish_stats(index, compute_seconds, problem)

    def _publish_stats(self, index: int, seconds: float | None, problem: str | None) -> None:
        self.events.publish(
            ChunkStats(
                index=index,
                compute_ms=None if seconds is None else round(seconds * MS_PER_S, 1),
                rtf=None if seconds is None else round(seconds / CHUNK_SECONDS, 3),
                queued_ms=self.queued_ms,
                problem=problem,
            )
        )

    def _feed(self, media: ChunkMedia) -> None:
        """Queue the frames and packets at or after the feeding cursors; advance the cursors."""
        playout = self._playout
        assert playout is not None
        first_video, first_audio = video_pts(self._video_next), audio_pts(self._audio_next)
        video = [f for f in media.video if frame_pts(f) >= first_video]
        audio = [f for f in media.audio if frame_pts(f) >= first_audio]
        self.video_track.feed([TimedFrame(f, playout.video_due(frame_pts(f))) for f in video])
        self.audio_track.feed([TimedFrame(f, playout.audio_due(frame_pts(f))) for f in audio])
        if video:
            self._video_next = frame_pts(video[-1]) // VIDEO_TICKS_PER_FRAME + 1
        if audio:
            self._audio_next = frame_pts(audio[-1]) // AUDIO_PACKET_SAMPLES + 1

    def _convert(
        self,
        index: int,
        frames: np.ndarray,
        audio: np.ndarray,
        rest_candidate: bool,
        epoch: int,
        ease: bool,
    ) -> ChunkMedia:
        # Runs in the executor, one chunk at a time per session (the upsampler keeps state).
        if epoch > self._upsampler_epoch:  # after an interrupt: no tail of the cut speech
            self._upsampler, self._upsampler_epoch = Upsampler(), epoch
        # A chunk converted for an earlier epoch is stale: keep its audio out of the history.
        upsampler = self._upsampler if epoch == self._upsampler_epoch else Upsampler()
        media = chunk_to_media(
            index, frames, upsampler.process(audio), self.config.height, self.config.width
        )
        self.idle_loop.prepare()
        silent = is_rest_audio(audio)
        if rest_candidate and silent and self._previous_silent:
            self.idle_loop.capture(media)  # silence after silence: the mouth is at rest
        self._previous_silent = silent
        if ease:  # the first chunk after filler: no pose jump from the loop to the engine
            media = self.idle_loop.ease_in(media)
        return media

    # -- what the tracks report (on the event loop) -------------------------------------------

    def _video_sent(self, pts: int, due: float, sent_at: float) -> None:
        frame_index = pts // VIDEO_TICKS_PER_FRAME
        if not self._ready:  # the first frame: the avatar is live
            self._ready = True
            if self._offer_at is not None:
                self._observer.on_first_frame(sent_at - self._offer_at)
            self.events.publish(SessionReady())
        if sent_at - due > LATE_FRAME_S:
            self.frames_late += 1
            self._observer.on_frames_late(1)
        end_sample = (frame_index + 1) * SAMPLES_PER_FRAME
        while self._marks and self._marks[0].media_sample < end_sample:
            self._play_mark(self._marks.popleft())
        self.send_timing.video_sent(frame_index, sent_at)

    def _audio_sent(self, pts: int, due: float, sent_at: float) -> None:
        self.send_timing.audio_sent(pts // AUDIO_PACKET_SAMPLES, sent_at)

    def _play_mark(self, mark: SpeechMark) -> None:
        if mark.started:
            self._speaking_from = mark.media_sample
            self.events.publish(SpeechStarted())
        else:
            self._speaking_from = None
            self.events.publish(SpeechEnded(duration_ms=mark.duration_ms))


async def _discard_track(track: MediaStreamTrack) -> None:
    """Read ``track`` until it ends and drop its frames (a push session's unused microphone),
    so aiortc's receive queue does not grow."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return

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

Shaped after LiveKit's avatar ``VideoGenerator``: ``push_audio(pcm)`` feeds the intake
directly (chatbot TTS); ``end_of_speech()`` and ``interrupt()`` belong here next to it.
Knows nothing about HTTP, tokens or metrics backends (it reports to a ``SessionObserver``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from pipeline.engine import (
    DEFAULT_MAILBOX_SIZE,
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
    Avatar,
    Chunk,
    ChunkJob,
)
from streaming.audio_in import AudioIntake, receive_track
from streaming.clock import LoopClock, Playout, WallClock
from streaming.observer import ChunkProblem, NullObserver, SessionObserver
from streaming.peer import PeerConfig, PeerLink
from streaming.resample import Upsampler
from streaming.tracks import (
    AvatarAudioTrack,
    AvatarVideoTrack,
    ChunkMedia,
    TimedFrame,
    chunk_to_media,
)

logger = logging.getLogger(__name__)

DEFAULT_INTAKE_JITTER_S = 0.060
"""How long after a chunk boundary its audio is taken, in seconds: room for network jitter,
so a packet arriving a little late is not replaced by silence."""

DEFAULT_EMIT_MARGIN_S = 0.150
"""How long before its playout time a chunk must be ready, in seconds: the time needed to
convert 28 frames and queue them."""

DEFAULT_MAX_BUFFERED_AUDIO_S = 2 * CHUNK_SECONDS
"""Most received audio the intake holds before dropping the oldest, in seconds."""

DEFAULT_PREPARE_TIMEOUT_S = 60.0
"""How long the engine may take to prepare a session's avatar, in seconds."""


class SessionError(RuntimeError):
    """Base class of session errors."""


class AlreadyConnected(SessionError):
    """The session already has (or is negotiating) a peer connection."""


class SessionEnded(SessionError):
    """The session is closed."""


class PrepareFailed(SessionError):
    """The engine could not prepare the session's avatar."""


@dataclass(frozen=True)
class SessionConfig:
    """Timing and sizes of one session."""

    height: int
    """Height of the outgoing video, in pixels."""

    width: int
    """Width of the outgoing video, in pixels."""

    latency_budget_s: float = CHUNK_SECONDS
    """Time from taking a chunk's audio to playing it out, in seconds: the engine's compute
    time plus jitter and margin must fit in it (about one chunk at RTF < 0.85)."""

    intake_jitter_s: float = DEFAULT_INTAKE_JITTER_S
    """Delay after each chunk boundary before its audio is taken, in seconds."""

    emit_margin_s: float = DEFAULT_EMIT_MARGIN_S
    """A chunk not ready this long before its playout goes out idle, in seconds."""

    max_buffered_audio_s: float = DEFAULT_MAX_BUFFERED_AUDIO_S
    """Most received audio held before the oldest is dropped, in seconds."""

    mailbox_size: int = DEFAULT_MAILBOX_SIZE
    """Chunks the session may have in flight in the engine at once."""

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"video size must be positive, got {self.width}x{self.height}")
        if self.latency_budget_s <= self.intake_jitter_s + self.emit_margin_s:
            raise ValueError(
                f"latency_budget_s ({self.latency_budget_s}) must exceed intake jitter "
                f"({self.intake_jitter_s}) plus emit margin ({self.emit_margin_s}) to leave "
                "the engine any compute time"
            )
        if self.max_buffered_audio_s < CHUNK_SECONDS:
            raise ValueError(
                f"max_buffered_audio_s must hold at least one chunk ({CHUNK_SECONDS} s)"
            )

    @property
    def compute_allowance_s(self) -> float:
        """Engine time per chunk before the chunk goes out idle, in seconds."""
        return self.latency_budget_s - self.intake_jitter_s - self.emit_margin_s


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
        self.video_track = AvatarVideoTrack(self._clock, on_first_frame=self._first_frame_sent)
        self.audio_track = AvatarAudioTrack(self._clock)
        self._upsampler = Upsampler()

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

    # -- inputs -----------------------------------------------------------------------------

    def push_audio(self, pcm: np.ndarray) -> None:
        """Feed speech directly: ``[n]`` float32 in [-1, 1] at 16 kHz (e.g. chatbot TTS)."""
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")
        self.intake.push(pcm)

    def attach_inbound_audio(self, track: MediaStreamTrack) -> None:
        """Read a WebRTC audio track into the intake until it ends."""
        self._spawn(receive_track(track, self.intake), "inbound-audio")

    async def accept_offer(self, offer_sdp: str, peer_config: PeerConfig) -> str:
        """Answer a WebRTC offer and start the media; returns the answer SDP.

        Raises ``AlreadyConnected`` on a second offer, ``streaming.peer.OfferError`` when
        the offer is unusable (the session then accepts a corrected offer).
        """
        if self._closing:
            raise SessionEnded(f"{self.label} is closed")
        if self._peer is not None:
            raise AlreadyConnected(f"{self.label} already has a peer connection")
        self._offer_at = self._clock.now()
        peer = PeerLink(peer_config, on_lost=self._peer_lost)
        self._peer = peer
        try:
            answer = await peer.answer(
                offer_sdp,
                video=self.video_track,
                audio=self.audio_track,
                on_inbound_audio=self.attach_inbound_audio,
            )
        except BaseException as exc:
            self._peer = None
            await peer.close()
            if self._closing and isinstance(exc, Exception):  # deleted while negotiating
                raise SessionEnded(f"{self.label} closed while answering the offer") from exc
            raise
        if self._closing:  # closed while negotiating
            raise SessionEnded(f"{self.label} closed while answering the offer")
        self.start()
        return answer

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
            audio, received = self.intake.take(CHUNK_SAMPLES)
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
            if index in self._skipped:
                self._skipped.discard(index)
                await self._emit_idle(index, ChunkProblem.ENGINE_BUSY)
            elif index in self._results:
                await self._emit_result(self._results.pop(index))
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
        await self._emit(item.index, item.frames, item.audio)

    async def _emit_idle(self, index: int, problem: ChunkProblem) -> None:
        self.chunk_problems[problem] += 1
        self._observer.on_chunk_problem(problem)
        held = self._last_frame if self._last_frame is not None else self.avatar.image
        frames = np.broadcast_to(held, (CHUNK_FRAMES, *held.shape))
        await self._emit(index, frames, self._taken_audio[index])

    async def _emit(self, index: int, frames: np.ndarray, audio: np.ndarray) -> None:
        """Convert chunk ``index`` off the loop and queue it on both tracks."""
        self._taken_audio.pop(index, None)
        media = await self._loop.run_in_executor(
            self._executor, self._convert, index, frames, audio
        )
        playout = self._playout
        assert playout is not None
        self.video_track.feed([TimedFrame(f, playout.video_due(f.pts)) for f in media.video])
        self.audio_track.feed([TimedFrame(f, playout.audio_due(f.pts)) for f in media.audio])
        self._last_frame = frames[-1]
        self._emitted = index + 1

    def _convert(self, index: int, frames: np.ndarray, audio: np.ndarray) -> ChunkMedia:
        # Runs in the executor, one chunk at a time per session (the upsampler keeps state).
        return chunk_to_media(
            index, frames, self._upsampler.process(audio), self.config.height, self.config.width
        )

    def _first_frame_sent(self) -> None:
        if self._offer_at is not None:
            self._observer.on_first_frame(self._clock.now() - self._offer_at)

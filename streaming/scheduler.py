"""When a session's chunks are taken, and which way each goes out: the chunk scheduler.

Owns ``ChunkScheduler``, the session's two loops on the media clock. For chunk ``k``
(C = 1.12 s, media started at ``t0``, ``B`` = the latency budget):

- the take loop, at ``t0 + k·C + jitter``, asks the ``GenerationGate`` whether chunk ``k``
  goes through the engine. In ``idle_mode: generate`` it always does: the loop takes the
  chunk's 17,920 samples from the speech input (padded with silence, so an idle caller
  still gets a live, breathing avatar) and submits ``ChunkJob(k)`` through the
  ``EngineLink``; when the session's mailbox is full the chunk is marked busy instead of
  blocking. In ``loop`` mode a silent chunk, or speech waiting for a generation slot, plays
  from the idle loop instead, and the first chunk generated after the loop carries a
  ``Reseed`` with the frames the playout fed last; speech that waited past the bound is
  dropped with an ``error`` event (``speech_wait_timeout``); the slot goes back once the
  engine delivered the session's last chunk;
- the emit loop sends the chunks out strictly in order, each the way ``ChunkBook.next_step``
  says (the late / busy / error policy, ``streaming.chunk_policy``), through the
  ``ChunkPlayout``, by ``t0 + B + k·C - margin``; an engine failure, a late result or a full
  mailbox costs that one chunk (the last frame held, with its own audio), never the session.

It counts the chunks the engine generated and those replaced and why (reported to the
observer, with every speech wait for a slot), publishes ``chunk.stats`` for every chunk
that went out, and carries out the
scheduling half of an interrupt (``interrupt``): drop the engine's jobs not started, cut the
playout, forget what was taken after the cut, and rewind the shared ``InterruptState`` so the
chunks already taken go out as idle-loop filler.

Knows nothing about where speech comes from (it calls ``SpeechInput.take``), how media is
converted or paced (``ChunkPlayout``), or transports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from headcast.pipeline.engine import EngineWorker, MailboxFull, SessionClosed
from headcast.pipeline.media import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    CHUNK_SECONDS,
    MS_PER_S,
    Avatar,
    Chunk,
    ChunkJob,
    Reseed,
)
from headcast.streaming.chunk_policy import ChunkBook, Filler, Generated, Held, Wait
from headcast.streaming.clock import WallClock, wait_for_event
from headcast.streaming.engine_link import EngineLink
from headcast.streaming.events import ChunkStats, ErrorCode, ErrorEvent, EventBus
from headcast.streaming.generation_gate import GenerationGate, TakeDecision, TakeStep
from headcast.streaming.generation_slot import GenerationSlot, OwnSlot
from headcast.streaming.idle import is_rest_audio
from headcast.streaming.interrupt_state import InterruptState
from headcast.streaming.observer import ChunkProblem, SessionObserver
from headcast.streaming.playout import ChunkPlayout
from headcast.streaming.session_config import SessionConfig
from headcast.streaming.speech_input import SpeechInput

logger = logging.getLogger(__name__)

RESEED_WAIT_S = 0.25
"""Longest the take loop waits for the chunk before a re-seeded one to go out (so the
frames it re-seeds from are the ones right before it), in seconds; then it re-seeds from
what went out so far."""

HELD_LOG_LEVEL = {
    ChunkProblem.ENGINE_ERROR: logging.ERROR,
    ChunkProblem.BAD_OUTPUT: logging.ERROR,
    ChunkProblem.LATE: logging.WARNING,
    ChunkProblem.ENGINE_BUSY: logging.DEBUG,  # warned when the job could not be submitted
}
"""How loudly a chunk sent idle is logged, by why."""


class ChunkScheduler:
    """Takes, submits and sends out one session's chunks. Create it on the event loop."""

    def __init__(
        self,
        worker: EngineWorker,
        avatar: Avatar,
        config: SessionConfig,
        *,
        state: InterruptState,
        speech: SpeechInput,
        playout: ChunkPlayout,
        events: EventBus,
        observer: SessionObserver,
        clock: WallClock,
        on_engine_stopped: Callable[[str], None],
        slot: GenerationSlot | None = None,
        seed: int = 0,
        label: str = "session",
    ) -> None:
        self._config = config
        self._state = state
        self._speech = speech
        self._playout = playout
        self._events = events
        self._observer = observer
        self._clock = clock
        self._on_engine_stopped = on_engine_stopped
        self._label = label
        self._wake = asyncio.Event()
        self._went_out = asyncio.Event()
        self._book = ChunkBook()
        self.gate = GenerationGate(
            config.idle_mode, slot or OwnSlot(), speech_wait_max_s=config.speech_wait_max_s
        )
        self._started_at: float | None = None
        self.engine = EngineLink(
            worker,
            avatar,
            seed=seed,
            mailbox_size=config.mailbox_size,
            on_result=self._wake.set,
            label=label,
        )
        self.chunks_generated = 0
        self.chunk_problems: dict[ChunkProblem, int] = dict.fromkeys(ChunkProblem, 0)
        self.frames_dropped = 0

    @property
    def started(self) -> bool:
        """True once the media clock runs."""
        return self._started_at is not None

    def start(self, now: float) -> None:
        """Start the media clock at ``now``: media time 0 plays one latency budget later.
        Then run ``take_loop`` and ``emit_loop``."""
        self._started_at = now
        self._playout.start(now + self._config.latency_budget_s)

    def close(self) -> None:
        """Release the engine state, the generation slot, and forget every chunk (the loops
        are stopped)."""
        self.engine.close()
        self.gate.close()
        self._book.clear()

    # -- taking -------------------------------------------------------------------------------

    async def take_loop(self) -> None:
        """Every chunk period, ask the gate, then take chunk ``k`` and submit it as chunk job
        ``k`` -- or let the idle loop play it."""
        index = 0
        while True:
            await self._clock.sleep_until(self._take_time(index))
            now = self._clock.now()
            speech = self._speech
            pending = speech.pending_speech()  # one look at the queued audio per chunk
            decision = self.gate.decide(
                index, now, speech=pending, open_utterance=pending or speech.utterance_open()
            )
            match decision.step:
                case TakeStep.GENERATE:
                    if not await self._generate(index, decision):
                        return
                case TakeStep.IDLE:
                    self._speech.take(index)  # silence: heard as the loop's silence
                    self._book.looped(index)
                case TakeStep.WAIT:
                    self._book.looped(index)  # the speech stays queued for its slot
                case TakeStep.DROP:
                    self._drop_speech(decision)
                    self._book.looped(index)
            self._release_if_drained()
            self._wake.set()
            index += 1

    async def _generate(self, index: int, decision: TakeDecision) -> bool:
        """Take chunk ``index`` and submit it; False if the engine stopped taking jobs."""
        reseed = None
        if decision.reseed_after is not None:
            reseed = await self._reseed(index, decision.reseed_after)
        wait_ms = 0
        if decision.waited_s is not None:
            wait_ms = round(decision.waited_s * MS_PER_S)
            self._observer.on_speech_wait(decision.waited_s)
        audio, received = self._speech.take(index, wait_ms=wait_ms)
        self.gate.generated(silent=is_rest_audio(audio), more_speech=self._speech.more_speech())
        submitted = True
        try:
            self.engine.submit(ChunkJob(index=index, audio=audio, reseed=reseed))
        except MailboxFull as exc:
            logger.warning("%s: chunk %d not submitted, engine busy (%s)", self._label, index, exc)
            submitted = False
        except SessionClosed as exc:
            logger.info("%s: the engine stopped taking jobs (%s)", self._label, exc)
            self._on_engine_stopped("the engine stopped")
            return False
        self._book.taken(index, audio, submitted=submitted)
        logger.debug("%s: took chunk %d (%d received samples)", self._label, index, received)
        return True

    async def _reseed(self, index: int, chunks_without_engine: int) -> Reseed:
        """The frames on screen before chunk ``index``: once the chunk before it went out
        (at most ``RESEED_WAIT_S``), the last frames the playout fed."""
        deadline = self._clock.now() + RESEED_WAIT_S
        while self._state.next_out < index and self._clock.now() < deadline:
            self._went_out.clear()
            try:
                await asyncio.wait_for(self._went_out.wait(), RESEED_WAIT_S)
            except TimeoutError:
                break
        frames = await self._playout.shown_frames()
        logger.debug(
            "%s: chunk %d re-seeds the engine after %d chunk(s) of idle loop",
            self._label, index, chunks_without_engine,
        )  # fmt: skip
        return Reseed(frames=frames, silent_samples=chunks_without_engine * CHUNK_SAMPLES)

    def _drop_speech(self, decision: TakeDecision) -> None:
        """The speech waited past the bound: drop what is queued, say so."""
        waited = decision.waited_s or 0.0
        self._speech.clear()
        self._observer.on_speech_dropped()
        logger.warning(
            "%s: speech waited %.1f s for a generation slot; dropped", self._label, waited
        )
        self._events.publish(
            ErrorEvent(
                code=ErrorCode.SPEECH_WAIT_TIMEOUT,
                message=f"every generation slot stayed busy for {waited:.1f} s "
                f"(speech_wait_max_s is {self._config.speech_wait_max_s:g} s), so the speech "
                "queued then was dropped; the session goes on: send the next utterance, or "
                "ask the operator for more generation slots",
            )
        )

    def _release_if_drained(self) -> None:
        """Give the slot back once the engine holds no chunk of this session."""
        if self.gate.releasing and self.engine.in_flight == 0:
            self.gate.drained()

    def _take_time(self, index: int) -> float:
        assert self._started_at is not None, "the scheduler is not started"
        return self._started_at + index * CHUNK_SECONDS + self._config.intake_jitter_s

    def _deadline(self, index: int) -> float:
        return self._playout.chunk_due(index) - self._config.emit_margin_s

    # -- sending out ----------------------------------------------------------------------------

    async def emit_loop(self) -> None:
        """Send the chunks out in order, each as ``ChunkBook.next_step`` says."""
        while True:
            self._wake.clear()
            for item in self.engine.results():
                if not self._book.arrived(item, self._state.next_out):
                    logger.debug("%s: chunk %d arrived after it went out", self._label, item.index)
            self._release_if_drained()
            step = self._book.next_step(self._state, self._clock.now(), self._deadline)
            match step:
                case Wait(until=until):
                    await self._wait_for_wake(until)
                    continue
                case Filler(index=index, problem=problem):
                    if await self._playout.play_filler(index):
                        self._publish_stats(index, None, problem)
                case Held():
                    await self._send_held(step)
                case Generated(chunk=chunk):
                    await self._send_generated(chunk)
            self._went_out.set()

    async def _send_generated(self, chunk: Chunk) -> None:
        self.chunks_generated += 1
        self._observer.on_chunk(chunk.compute_seconds, chunk.rtf)
        # The chunk's own audio is, by the engine contract, the samples that drove its frames.
        if await self._playout.play(chunk.index, chunk.frames, chunk.audio):
            self._publish_stats(chunk.index, chunk.compute_seconds, None)

    async def _send_held(self, held: Held) -> None:
        problem = held.problem
        logger.log(
            HELD_LOG_LEVEL[problem],
            "%s: chunk %d %s; sending it idle",
            self._label,
            held.index,
            held.detail,
        )
        self.chunk_problems[problem] += 1
        self._observer.on_chunk_problem(problem)
        if problem is ChunkProblem.LATE:  # the engine's frames will arrive and never play
            self._drop_frames(CHUNK_FRAMES)
        if await self._playout.play_held(held.index, held.audio):
            self._publish_stats(held.index, None, problem.value)

    def _publish_stats(self, index: int, seconds: float | None, problem: str | None) -> None:
        self._events.publish(
            ChunkStats(
                index=index,
                compute_ms=None if seconds is None else round(seconds * MS_PER_S, 1),
                rtf=None if seconds is None else round(seconds / CHUNK_SECONDS, 3),
                queued_ms=self._speech.queued_ms,
                problem=problem,
            )
        )

    async def _wait_for_wake(self, deadline: float | None) -> None:
        await wait_for_event(self._wake, self._clock, deadline)

    def _drop_frames(self, count: int) -> None:
        if count:
            self.frames_dropped += count
            self._observer.on_frames_dropped(count)

    # -- interrupt ------------------------------------------------------------------------------

    def interrupt(self, commanded_at: float) -> int | None:
        """The scheduling half of an interrupt (``InterruptState.interrupt`` already bumped
        the epoch): drop the engine's jobs not started, cut the playout, and send the chunks
        taken so far as filler from the cut on. Returns the media sample of the cut, or
        ``None`` before media started."""
        self.engine.drop_pending()
        self.gate.interrupted()
        if self._started_at is None:
            return None
        cut = self._playout.cut(commanded_at)
        next_take = self._book.next_take
        unfed_chunks = max(next_take - self._state.next_out, 0)
        self._drop_frames(cut.frames_dropped + unfed_chunks * CHUNK_FRAMES)
        self._book.forget_from(cut.first_chunk)
        self._state.cut(cut.first_chunk, next_take)
        if cut.first_chunk < next_take:
            self._playout.queue_idle_head(cut.first_chunk)
        self._wake.set()
        return cut.cut_sample

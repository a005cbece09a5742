"""When a session takes engine time: the idle mode and the decision taken at every chunk.

Owns ``IdleMode`` -- ``generate`` (every chunk goes through the engine, silence included:
the session holds a generation slot all its life) or ``loop`` (a silent session plays its
idle loop and takes no engine time) -- and ``GenerationGate``, the rule the take loop asks
at every chunk boundary. In ``loop`` mode:

- holding a slot: ``GENERATE`` while there is speech to take or an utterance is under way
  (a gap in pushed speech is generated, not looped); once the audio is silent and no
  utterance open, ``IDLE``, and the slot goes back as soon as the engine delivered the last chunk
  submitted (``drained``) -- already after the take of an utterance's last chunk when the speech
  input expects no more;
- not holding one: speech asks for a slot (``GenerationSlot.request``: first come, first
  served); granted, ``GENERATE``, re-seeded from the frames on screen (the engine continues
  from the idle loop, not from its own last chunk); not granted, ``WAIT`` (the speech stays
  queued while the idle loop plays) until granted, or until the next chunk boundary would
  be more than ``speech_wait_max_s`` after the first that found it: ``DROP`` (the session
  drops that speech and says so). So a wait is at most the bound;
- the idle loop: a session without a rest chunk makes one -- a chunk of silence generated
  right after rest (the session's start, or its idle loop: the avatar picture held until
  it has one), ``LOOP_CHUNKS`` of engine time once -- only with a slot free that nobody
  waits for (``GenerationSlot.try_request``), so it never delays anyone's speech.

A wait is counted in whole chunks: a session starts generating only at a chunk boundary.
Pure rules over a ``GenerationSlot``: knows nothing about audio, engines, tracks or asyncio.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from headcast.pipeline.media import CHUNK_SECONDS
from headcast.streaming.generation_slot import GenerationSlot

LOOP_CHUNKS = 1
"""Chunks a session generates for its idle loop, once: silence right after rest."""

BOUNDARY_JITTER_S = 0.05
"""Slack on the spacing of chunk boundaries (the take loop wakes a few ms late at times), in
seconds: a wait of exactly the bound is still within it."""


class IdleMode(enum.StrEnum):
    """What a session does with its engine time while nobody speaks."""

    GENERATE = "generate"
    """Every chunk goes through the engine, silence included (natural idle motion, and the
    next speech continues from the engine's own last chunk); a session costs a slot always."""

    LOOP = "loop"
    """A silent session plays its latest rest chunk as a loop and takes no engine time; its
    speech waits for a free generation slot, and the engine re-seeds from the loop's frames."""


class TakeStep(enum.Enum):
    """What the take loop does with one chunk."""

    GENERATE = "generate"
    """Take the chunk's audio and submit it to the engine."""

    IDLE = "idle"
    """Take the chunk's (silent) audio; the idle loop plays."""

    WAIT = "wait"
    """Take nothing: the speech waits for a slot while the idle loop plays."""

    DROP = "drop"
    """The speech waited past the bound: drop what is queued; the idle loop plays."""


@dataclass(frozen=True)
class TakeDecision:
    """The gate's answer for one chunk."""

    step: TakeStep
    reseed_after: int | None = None
    """``GENERATE`` only: re-seed the engine from the frames on screen first; the number of
    chunks that played without the engine since its last chunk of this session."""

    waited_s: float | None = None
    """Set when speech got a slot (``GENERATE``, 0.0 if at once) or was dropped (``DROP``):
    how long it waited, from the first chunk boundary that found it."""


class GenerationGate:
    """Decides, chunk by chunk, whether a session's audio goes through the engine."""

    def __init__(self, mode: IdleMode, slot: GenerationSlot, *, speech_wait_max_s: float) -> None:
        if speech_wait_max_s <= 0:
            raise ValueError(f"speech_wait_max_s must be positive, got {speech_wait_max_s}")
        self.mode = mode
        self._slot = slot
        self._wait_max_s = speech_wait_max_s
        self._speech_since: float | None = None
        """When the speech now waiting was first found (None: no speech waits)."""
        self._releasing = False
        self._after_rest = True
        """What played before the next chunk was rest: the session's start, its idle loop,
        or a silent chunk generated after rest."""
        self.has_rest = False
        """True once the session generated a rest chunk (silence right after rest)."""
        self._last_submitted: int | None = None
        self._reseed_next = False

    @property
    def releasing(self) -> bool:
        """True while the slot waits for the engine's last chunk before it goes back."""
        return self._releasing

    def decide(
        self, index: int, now: float, *, speech: bool, open_utterance: bool = False
    ) -> TakeDecision:
        """The step for chunk ``index``, taken at wall time ``now``; ``speech``: the audio
        the chunk would take is speech (not silence); ``open_utterance``: an utterance is
        under way (more of it is coming even if this chunk's audio is not there yet): a
        session that holds its slot keeps it and generates the gap."""
        if self.mode is IdleMode.GENERATE:
            self._slot.request()  # held all along: a generating session is a busy slot
            return TakeDecision(TakeStep.GENERATE)
        if self._slot.held:
            return self._with_slot(index, now, speech or open_utterance)
        if speech:
            if self._speech_since is None:
                self._speech_since = now
            if self._slot.request():
                return self._with_slot(index, now, speech)
            waited = now - self._speech_since
            if waited + CHUNK_SECONDS > self._wait_max_s + BOUNDARY_JITTER_S:
                self._leave_queue()  # the next boundary would be past the bound
                return self._loop(TakeStep.DROP, waited)
            return self._loop(TakeStep.WAIT)
        if self._speech_since is not None:  # the waiting speech was cleared (an interrupt)
            self._leave_queue()
        if self._rest_next() and self._slot.try_request():  # a free slot nobody waits for
            return self._with_slot(index, now, speech)
        return self._loop()

    def _with_slot(self, index: int, now: float, speech: bool) -> TakeDecision:
        waited = None if self._speech_since is None else now - self._speech_since
        self._speech_since = None
        if speech or self._rest_next():
            self._releasing = False
            return self._generate(index, waited)
        self._releasing = True
        return self._loop()

    def _rest_next(self) -> bool:
        """True if a silent chunk generated now would be the session's rest chunk."""
        return not self.has_rest and self._after_rest

    def _loop(self, step: TakeStep = TakeStep.IDLE, waited: float | None = None) -> TakeDecision:
        """The idle loop plays this chunk (rest on screen)."""
        self._after_rest = True
        return TakeDecision(step, waited_s=waited)

    def _generate(self, index: int, waited: float | None) -> TakeDecision:
        reseed_after = None
        if index > 0 and (self._reseed_next or self._last_submitted != index - 1):
            since = 0 if self._last_submitted is None else self._last_submitted + 1
            reseed_after = index - since
        self._reseed_next = False
        self._last_submitted = index
        return TakeDecision(TakeStep.GENERATE, reseed_after=reseed_after, waited_s=waited)

    def _leave_queue(self) -> None:
        self._speech_since = None
        self._slot.release()

    def generated(self, *, silent: bool, more_speech: bool) -> None:
        """The chunk just decided ``GENERATE`` was taken: ``silent`` audio or not; whether
        the speech input ``more_speech`` (audio queued, an utterance open)."""
        if self.mode is IdleMode.GENERATE:
            return
        if silent and self._after_rest:
            self.has_rest = True
        self._after_rest = silent
        if not more_speech and not self._rest_next():
            self._releasing = True  # back once the engine delivered this chunk

    def drained(self) -> None:
        """The engine holds no chunk of this session: a slot being given back goes now."""
        if self._releasing:
            self._releasing = False
            self._slot.release()

    def interrupted(self) -> None:
        """An interrupt cut the output: the next chunk generated re-seeds from the screen."""
        if self.mode is IdleMode.LOOP:
            self._reseed_next = True

    def close(self) -> None:
        """The session ends: give the slot back, or leave the queue."""
        self._speech_since = None
        self._releasing = False
        self._slot.release()

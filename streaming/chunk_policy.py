"""Which way each chunk goes out: the scheduler's ordering and its late / busy / error policy.

Owns ``ChunkBook`` -- per chunk index, the audio taken for it, whether the engine was too busy
to take its job, and the engine's result once it arrived -- and ``ChunkBook.next_step``, the
rule the emit loop follows for the chunk at the output cursor (``InterruptState.next_out``):

- not taken yet -> ``Wait`` for the next take;
- taken before the last interrupt -> ``Filler`` (idle-loop frames and silence);
- taken for the idle loop (``idle_mode: loop``: silence, or speech waiting for a slot, was
  not submitted) -> ``Filler`` too;
- never submitted, the session's mailbox was full -> ``Held`` (``ENGINE_BUSY``);
- the engine failed -> ``Held`` (``ENGINE_ERROR``); unusable frames or audio -> ``Held``
  (``BAD_OUTPUT``);
- generated -> ``Generated``, or ``Filler`` if it is the silent first chunk after an
  interrupt (``InterruptState.settles``);
- no result by its deadline -> ``Held`` (``LATE``); else ``Wait`` until the deadline or a result.

A ``Held`` chunk shows the last frame on screen with the chunk's own audio, so the caller
still hears what was taken. Chunks go out strictly in index order; a result that arrives
after its chunk went out is dropped. Pure data and rules (no asyncio, no tracks, no engine):
the scheduler does what a step says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from headcast.pipeline.engine import ChunkFailure, MailboxItem
from headcast.pipeline.media import CHUNK_FRAMES, CHUNK_SAMPLES, RGB_CHANNELS, Chunk
from headcast.streaming.idle import is_rest_audio
from headcast.streaming.interrupt_state import InterruptState
from headcast.streaming.observer import ChunkProblem

INTERRUPTED_PROBLEM = "interrupted"
"""``chunk.stats`` problem of a chunk replaced by idle-loop filler after an interrupt."""

LOOP_PROBLEM = "loop"
"""``chunk.stats`` problem of a chunk a silent session (``idle_mode: loop``) played from its
idle loop without the engine."""


@dataclass(frozen=True)
class Wait:
    """Nothing can go out yet: wait for a wake-up, or at the latest until ``until``."""

    until: float | None
    """Wall time of the chunk's deadline (``None``: the chunk is not taken yet)."""


@dataclass(frozen=True)
class Filler:
    """Send chunk ``index`` as idle-loop frames and silence."""

    index: int
    problem: str = INTERRUPTED_PROBLEM
    """Why (``chunk.stats``): ``INTERRUPTED_PROBLEM`` or ``LOOP_PROBLEM``."""


@dataclass(frozen=True)
class Held:
    """Send chunk ``index`` as the last frame on screen held, with the chunk's own audio."""

    index: int
    audio: np.ndarray  # [CHUNK_SAMPLES] float32 at 16 kHz
    problem: ChunkProblem
    detail: str
    """Why, for the log."""


@dataclass(frozen=True)
class Generated:
    """Send the engine's chunk as generated."""

    chunk: Chunk


Step = Wait | Filler | Held | Generated


def unusable(chunk: Chunk) -> str | None:
    """Why ``chunk`` cannot be sent, or ``None`` if it has ``[28, H, W, 3]`` uint8 frames
    and ``[17920]`` samples."""
    frames = chunk.frames
    if frames.ndim != 4 or frames.shape[0] != CHUNK_FRAMES or frames.shape[3] != RGB_CHANNELS:
        return f"expected [{CHUNK_FRAMES}, H, W, {RGB_CHANNELS}] frames, got {frames.shape}"
    if frames.dtype != np.uint8:
        return f"expected uint8 frames, got {frames.dtype}"
    if chunk.audio.shape != (CHUNK_SAMPLES,):
        return f"expected {CHUNK_SAMPLES} audio samples, got {chunk.audio.shape}"
    return None


class ChunkBook:
    """What the scheduler knows about every chunk taken and not yet sent."""

    def __init__(self) -> None:
        self.next_take = 0
        """The index of the next chunk to take."""
        self._audio: dict[int, np.ndarray] = {}
        self._busy: set[int] = set()
        self._loop: set[int] = set()
        self._results: dict[int, MailboxItem] = {}

    def taken(self, index: int, audio: np.ndarray, *, submitted: bool) -> None:
        """Chunk ``index`` was taken with ``audio``; ``submitted``: the engine has its job."""
        self._audio[index] = audio
        if not submitted:
            self._busy.add(index)
        self.next_take = index + 1

    def looped(self, index: int) -> None:
        """Chunk ``index`` plays from the idle loop: no engine job (``idle_mode: loop``)."""
        self._loop.add(index)
        self.next_take = index + 1

    def arrived(self, item: MailboxItem, next_out: int) -> bool:
        """The engine's result for a chunk; False (dropped) if that chunk already went out."""
        if item.index < next_out:
            return False
        self._results[item.index] = item
        return True

    def forget_from(self, first: int) -> None:
        """Drop what is known of chunks ``first`` and later (an interrupt's cut)."""
        for index in range(first, self.next_take):
            self._forget(index)

    def clear(self) -> None:
        """Drop everything (close)."""
        self._audio.clear()
        self._busy.clear()
        self._loop.clear()
        self._results.clear()

    def next_step(
        self, state: InterruptState, now: float, deadline: Callable[[int], float]
    ) -> Step:
        """What to do with chunk ``state.next_out`` at wall time ``now``; ``deadline(k)`` is
        the wall time by which chunk ``k`` must be queued. A step other than ``Wait``
        consumes the chunk's entry."""
        index = state.next_out
        if index >= self.next_take:
            return Wait(None)
        if state.is_filler(index):
            self._forget(index)
            return Filler(index)
        if index in self._loop:
            self._forget(index)
            return Filler(index, LOOP_PROBLEM)
        if index in self._busy:
            return self._held(
                index, ChunkProblem.ENGINE_BUSY, "was not submitted (the engine was busy)"
            )
        item = self._results.get(index)
        if item is None:
            if now >= deadline(index):
                return self._held(index, ChunkProblem.LATE, "was not ready by its deadline")
            return Wait(deadline(index))
        if isinstance(item, ChunkFailure):
            return self._held(index, ChunkProblem.ENGINE_ERROR, f"failed: {item.message}")
        problem = unusable(item)
        if problem is not None:
            return self._held(index, ChunkProblem.BAD_OUTPUT, f"is unusable: {problem}")
        self._forget(index)
        if state.settles(index) and is_rest_audio(item.audio):
            return Filler(index)  # the engine's state still carried the cut speech
        return Generated(item)

    def _held(self, index: int, problem: ChunkProblem, detail: str) -> Held:
        audio = self._audio[index]
        self._forget(index)
        return Held(index, audio, problem, detail)

    def _forget(self, index: int) -> None:
        self._audio.pop(index, None)
        self._busy.discard(index)
        self._loop.discard(index)
        self._results.pop(index, None)

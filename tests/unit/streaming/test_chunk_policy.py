"""The scheduler's policy alone: ordering, late, busy, engine errors, bad output, filler.

``ChunkBook.next_step`` on real ``Chunk`` / ``ChunkFailure`` values and a real
``InterruptState``; no engine, no tracks, no event loop.
"""

from __future__ import annotations

import numpy as np
import pytest

from headcast.pipeline.engine import ChunkFailure
from headcast.pipeline.media import CHUNK_FRAMES, CHUNK_SAMPLES, Chunk
from headcast.streaming.chunk_policy import ChunkBook, Filler, Generated, Held, Wait, unusable
from headcast.streaming.interrupt_state import InterruptState
from headcast.streaming.observer import ChunkProblem

HEIGHT, WIDTH = 8, 6
DEADLINE_0 = 10.0
CHUNK_PERIOD_S = 1.12


def _deadline(index: int) -> float:
    return DEADLINE_0 + index * CHUNK_PERIOD_S


def _audio(level: float) -> np.ndarray:
    return np.full(CHUNK_SAMPLES, level, dtype=np.float32)


def _chunk(index: int, audio_level: float = 0.3, **override: np.ndarray) -> Chunk:
    frames = np.full((CHUNK_FRAMES, HEIGHT, WIDTH, 3), index, dtype=np.uint8)
    parts = {"frames": frames, "audio": _audio(audio_level)} | override
    return Chunk(index=index, compute_seconds=0.5, **parts)


def _book(taken: int, *, busy: frozenset[int] = frozenset()) -> ChunkBook:
    book = ChunkBook()
    for index in range(taken):
        book.taken(index, _audio(0.01 * (index + 1)), submitted=index not in busy)
    return book


def test_an_untaken_chunk_waits_for_the_take() -> None:
    assert ChunkBook().next_step(InterruptState(), 0.0, _deadline) == Wait(None)


def test_a_chunk_waits_for_its_result_until_its_deadline_then_goes_out_late() -> None:
    book, state = _book(1), InterruptState()
    assert book.next_step(state, DEADLINE_0 - 0.001, _deadline) == Wait(DEADLINE_0)
    step = book.next_step(state, DEADLINE_0, _deadline)
    assert isinstance(step, Held) and step.problem is ChunkProblem.LATE and step.index == 0
    assert np.array_equal(step.audio, _audio(0.01)), "its own audio still plays"
    state.went_out(0, filler=False)
    assert not book.arrived(_chunk(0), state.next_out), "the late result is dropped"
    assert book.next_step(state, DEADLINE_0, _deadline) == Wait(None)


def test_chunks_go_out_in_order_whatever_order_results_arrive_in() -> None:
    book, state = _book(2), InterruptState()
    assert book.arrived(_chunk(1), state.next_out)
    assert book.next_step(state, 0.0, _deadline) == Wait(DEADLINE_0), "chunk 0 comes first"
    book.arrived(_chunk(0), state.next_out)
    first = book.next_step(state, 0.0, _deadline)
    assert isinstance(first, Generated) and first.chunk.index == 0
    state.went_out(0, filler=False)
    second = book.next_step(state, 0.0, _deadline)
    assert isinstance(second, Generated) and second.chunk.index == 1


def test_a_chunk_the_engine_was_too_busy_for_goes_out_at_once_holding_the_frame() -> None:
    book, state = _book(2, busy=frozenset({0})), InterruptState()
    step = book.next_step(state, 0.0, _deadline)  # long before the deadline: no waiting
    assert isinstance(step, Held) and step.problem is ChunkProblem.ENGINE_BUSY
    np.testing.assert_array_equal(step.audio, _audio(0.01))


def test_an_engine_failure_goes_out_held_with_the_error_for_the_log() -> None:
    book, state = _book(1), InterruptState()
    book.arrived(ChunkFailure(0, RuntimeError("CUDA out of memory")), state.next_out)
    step = book.next_step(state, 0.0, _deadline)
    assert isinstance(step, Held) and step.problem is ChunkProblem.ENGINE_ERROR
    assert "RuntimeError: CUDA out of memory" in step.detail


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"frames": np.zeros((CHUNK_FRAMES - 1, HEIGHT, WIDTH, 3), np.uint8)}, "frames"),
        ({"frames": np.zeros((CHUNK_FRAMES, HEIGHT, WIDTH, 4), np.uint8)}, "frames"),
        ({"frames": np.zeros((CHUNK_FRAMES, HEIGHT, WIDTH, 3), np.float32)}, "uint8"),
        ({"audio": np.zeros(CHUNK_SAMPLES - 640, np.float32)}, "audio samples"),
    ],
)
def test_unusable_output_goes_out_held(override: dict[str, np.ndarray], complaint: str) -> None:
    book, state = _book(1), InterruptState()
    book.arrived(_chunk(0, **override), state.next_out)
    step = book.next_step(state, 0.0, _deadline)
    assert isinstance(step, Held) and step.problem is ChunkProblem.BAD_OUTPUT
    assert complaint in step.detail
    assert unusable(_chunk(0)) is None


def test_after_a_cut_the_chunks_taken_before_it_go_out_as_filler() -> None:
    book, state = _book(4), InterruptState()
    for index in range(4):
        book.arrived(_chunk(index), state.next_out)
    state.went_out(0, filler=False)
    state.interrupt()
    book.forget_from(1)  # the cut falls in chunk 1; chunks 1-3 were taken before it
    state.cut(first_chunk=1, next_take=book.next_take)
    for index in (1, 2, 3):
        assert book.next_step(state, 0.0, _deadline) == Filler(index)
        state.went_out(index, filler=True)
    assert book.next_step(state, 0.0, _deadline) == Wait(None)


@pytest.mark.parametrize(("level", "filler"), [(0.0, True), (0.3, False)])
def test_the_first_chunk_after_an_interrupt_is_filler_only_if_silent(
    level: float, filler: bool
) -> None:
    book, state = _book(2), InterruptState()
    state.interrupt()
    state.cut(first_chunk=0, next_take=1)  # chunk 0 taken before, chunk 1 after
    assert book.next_step(state, 0.0, _deadline) == Filler(0)
    state.went_out(0, filler=True)
    book.arrived(_chunk(1, audio_level=level), state.next_out)
    step = book.next_step(state, 0.0, _deadline)
    if filler:  # the engine made it from a state that still carried the cut speech
        assert step == Filler(1)
    else:
        assert isinstance(step, Generated) and step.chunk.index == 1
    state.went_out(1, filler=filler)
    book.taken(2, _audio(0.0), submitted=True)
    book.arrived(_chunk(2, audio_level=0.0), state.next_out)
    later = book.next_step(state, 0.0, _deadline)
    assert isinstance(later, Generated), "later silent chunks are the engine's idle motion"

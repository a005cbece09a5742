"""The generation gate (streaming/generation_gate.py): which chunks take engine time.

Pure rules over a real one-slot pool (``server.generation_slots``), chunk by chunk: a
``generate`` session generates every chunk and holds its slot; a ``loop`` session generates
its rest chunk (only with a free slot nobody waits for), then only its speech, re-seeding after
the loop, gives the slot back once drained, waits for a busy slot (counted from the first chunk that
found the speech) and drops the speech past the bound; an interrupt makes the next chunk re-seed.
"""

from __future__ import annotations

import pytest

from headcast.pipeline.media import CHUNK_SECONDS
from headcast.server.generation_slots import SlotPool
from headcast.streaming.generation_gate import (
    LOOP_CHUNKS,
    GenerationGate,
    IdleMode,
    TakeDecision,
    TakeStep,
)

WAIT_MAX_S = 3.0


def _take(gate: GenerationGate, index: int, *, speech: bool, more: bool = False) -> TakeDecision:
    """Decide chunk ``index`` at its take time; a generated chunk is taken and drained."""
    decision = gate.decide(index, index * CHUNK_SECONDS, speech=speech)
    if decision.step is TakeStep.GENERATE:
        gate.generated(silent=not speech, more_speech=more)
    gate.drained()
    return decision


def _loop_gate(pool: SlotPool) -> GenerationGate:
    return GenerationGate(IdleMode.LOOP, pool.slot(), speech_wait_max_s=WAIT_MAX_S)


def _rested_gate(pool: SlotPool) -> GenerationGate:
    """A loop-mode gate past its rest chunk (the loop plays), its slot given back."""
    gate = _loop_gate(pool)
    for index in range(LOOP_CHUNKS):
        _take(gate, index, speech=False)
    assert gate.has_rest and pool.busy == 0
    return gate


def test_generate_mode_generates_every_chunk_and_keeps_its_slot() -> None:
    pool = SlotPool(1)
    gate = GenerationGate(IdleMode.GENERATE, pool.slot(), speech_wait_max_s=WAIT_MAX_S)
    steps = [_take(gate, index, speech=index in (3, 4)) for index in range(8)]
    assert {d.step for d in steps} == {TakeStep.GENERATE}
    assert all(d.reseed_after is None and d.waited_s is None for d in steps)
    assert pool.busy == 1
    gate.close()
    assert pool.busy == 0


def test_a_loop_session_generates_its_rest_chunks_then_only_its_speech() -> None:
    pool = SlotPool(1)
    gate = _loop_gate(pool)
    speech = {5, 6}
    steps = [_take(gate, index, speech=index in speech, more=index == 5) for index in range(10)]
    generated = [index for index, d in enumerate(steps) if d.step is TakeStep.GENERATE]
    assert generated == [*range(LOOP_CHUNKS), 5, 6]
    assert steps[5].reseed_after == 5 - LOOP_CHUNKS, "re-seeded after the loop's chunks"
    assert steps[5].waited_s == 0.0 and steps[6].reseed_after is None
    assert pool.busy == 0, "silent again and drained: the slot went back"


def test_the_slot_goes_back_only_once_the_engine_delivered() -> None:
    pool = SlotPool(1)
    gate = _rested_gate(pool)
    decision = gate.decide(2, 2 * CHUNK_SECONDS, speech=True)
    gate.generated(silent=False, more_speech=False)  # the utterance's last chunk
    assert decision.step is TakeStep.GENERATE and gate.releasing and pool.busy == 1
    assert gate.decide(3, 3 * CHUNK_SECONDS, speech=False).step is TakeStep.IDLE
    assert pool.busy == 1, "chunk 2 is still in the engine"
    gate.drained()
    assert pool.busy == 0 and not gate.releasing


def test_speech_waits_for_a_busy_slot_then_generates_re_seeded() -> None:
    pool = SlotPool(1)
    other = pool.slot()
    gate = _rested_gate(pool)
    assert other.request()
    steps = [_take(gate, index, speech=True) for index in (2, 3)]
    assert [d.step for d in steps] == [TakeStep.WAIT, TakeStep.WAIT]
    other.release()  # the slot goes to the waiting session
    decision = _take(gate, 4, speech=True)
    assert decision.step is TakeStep.GENERATE
    assert decision.waited_s == pytest.approx(2 * CHUNK_SECONDS)
    assert decision.reseed_after == 4 - LOOP_CHUNKS


def test_speech_waiting_past_the_bound_is_dropped_and_the_queue_left() -> None:
    pool = SlotPool(1)
    other = pool.slot()
    assert other.request()
    gate = _loop_gate(pool)
    first = gate.decide(0, 0.0, speech=False)  # no free slot for the rest chunks: no queue
    assert first.step is TakeStep.IDLE and pool.waiting == 0
    steps = [gate.decide(index, index * CHUNK_SECONDS, speech=True) for index in range(1, 4)]
    wait, drop = TakeStep.WAIT, TakeStep.DROP
    # found at chunk 1; at chunk 3 the next boundary (3 chunks, 3.36 s) would pass the bound
    assert [d.step for d in steps] == [wait, wait, drop]
    assert steps[-1].waited_s == pytest.approx(2 * CHUNK_SECONDS)
    assert pool.waiting == 0, "the dropped speech left the queue"
    assert gate.decide(4, 4 * CHUNK_SECONDS, speech=True).step is wait, "new speech asks anew"
    assert pool.waiting == 1


def test_speech_cleared_while_waiting_leaves_the_queue() -> None:
    pool = SlotPool(1)
    other = pool.slot()
    gate = _rested_gate(pool)
    other.request()
    assert _take(gate, 2, speech=True).step is TakeStep.WAIT
    assert pool.waiting == 1
    assert _take(gate, 3, speech=False).step is TakeStep.IDLE  # an interrupt cleared it
    assert pool.waiting == 0


def test_an_interrupt_makes_the_next_generated_chunk_re_seed() -> None:
    pool = SlotPool(1)
    gate = _rested_gate(pool)
    index = LOOP_CHUNKS
    assert _take(gate, index, speech=True, more=True).reseed_after is None, "right after"
    gate.interrupted()
    assert _take(gate, index + 1, speech=True).reseed_after == 0


def test_rest_chunks_take_only_a_slot_nobody_waits_for() -> None:
    pool = SlotPool(1)
    speaker, waiter = pool.slot(), pool.slot()
    gate = _loop_gate(pool)
    assert speaker.request()
    assert not waiter.request()
    assert _take(gate, 0, speech=False).step is TakeStep.IDLE
    speaker.release()  # the slot goes to the waiting session, not to the rest chunks
    assert waiter.held
    assert _take(gate, 1, speech=False).step is TakeStep.IDLE
    waiter.release()
    steps = [_take(gate, index, speech=False) for index in range(2, 6)]
    generate, idle = TakeStep.GENERATE, TakeStep.IDLE
    assert [d.step for d in steps] == [generate] * LOOP_CHUNKS + [idle] * (4 - LOOP_CHUNKS)
    assert gate.has_rest and pool.busy == 0


def test_after_its_first_speech_a_session_without_a_rest_chunk_makes_one() -> None:
    pool = SlotPool(1)
    other = pool.slot()
    gate = _loop_gate(pool)
    assert other.request()
    assert _take(gate, 0, speech=False).step is TakeStep.IDLE  # busy: no rest chunk yet
    other.release()
    other.request()
    assert _take(gate, 1, speech=True).step is TakeStep.WAIT
    other.release()
    steps = [_take(gate, index, speech=index == 2) for index in range(2, 7)]
    generate, idle = TakeStep.GENERATE, TakeStep.IDLE
    # the slot goes back after the speech; the loop (the avatar held) plays a chunk, then a
    # free slot makes the rest chunk: silence right after rest
    assert [d.step for d in steps] == [generate, idle, generate, idle, idle]
    assert steps[2].reseed_after == 1 and gate.has_rest and pool.busy == 0


def test_a_gap_inside_an_utterance_keeps_the_slot() -> None:
    pool = SlotPool(1)
    gate = _rested_gate(pool)
    assert _take(gate, 1, speech=True, more=True).step is TakeStep.GENERATE
    gap = gate.decide(2, 2 * CHUNK_SECONDS, speech=False, open_utterance=True)
    assert gap.step is TakeStep.GENERATE and gap.reseed_after is None
    gate.generated(silent=True, more_speech=True)
    assert pool.busy == 1 and not gate.releasing
    assert _take(gate, 3, speech=True).step is TakeStep.GENERATE
    assert _take(gate, 4, speech=False).step is TakeStep.IDLE and pool.busy == 0

"""``InterruptState``: the epoch, the output cursor, filler and settle chunks, the ease-in."""

from __future__ import annotations

from headcast.streaming.interrupt_state import InterruptState


def test_a_fresh_state_sends_everything_as_it_comes() -> None:
    state = InterruptState()
    assert (state.epoch, state.next_out, state.ease_next) == (0, 0, False)
    assert not any(state.is_filler(index) for index in range(4))
    assert not any(state.settles(index) for index in range(4))
    assert state.is_current(0)


def test_an_interrupt_makes_conversions_under_way_stale() -> None:
    state = InterruptState()
    stamped = state.epoch
    state.interrupt()
    assert not state.is_current(stamped)
    assert state.is_current(state.epoch)
    state.interrupt()
    assert state.epoch == stamped + 2


def test_a_cut_rewinds_the_cursor_and_sends_the_chunks_taken_before_it_as_filler() -> None:
    state = InterruptState()
    state.went_out(3, filler=False)
    state.interrupt()
    state.cut(first_chunk=3, next_take=6)  # chunk 3 was playing, 4 and 5 were taken
    assert state.next_out == 3
    assert [state.is_filler(index) for index in range(2, 8)] == [
        True,  # below the cursor anyway
        True,
        True,
        True,
        False,  # taken after the interrupt: the engine's
        False,
    ]
    assert not state.settles(5)
    assert state.settles(6), "the first chunk taken after the interrupt settles the engine"
    assert not state.settles(6), "only once"


def test_a_second_interrupt_replaces_the_first_cut() -> None:
    state = InterruptState()
    state.cut(first_chunk=1, next_take=3)
    state.cut(first_chunk=2, next_take=5)
    assert state.next_out == 2 and state.is_filler(4) and not state.is_filler(5)
    assert not state.settles(3) and state.settles(5)


def test_filler_going_out_eases_the_next_chunk_in_and_a_chunk_ends_the_ease() -> None:
    state = InterruptState()
    state.went_out(0, filler=True)
    assert (state.next_out, state.ease_next) == (1, True)
    state.went_out(1, filler=False)
    assert (state.next_out, state.ease_next) == (2, False)


def test_nothing_converted_after_the_end_goes_out() -> None:
    state = InterruptState()
    state.end()
    assert not state.is_current(state.epoch)

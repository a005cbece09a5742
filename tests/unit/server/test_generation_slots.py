"""Generation slots of one engine group (server/generation_slots.py): first come, first served.

A free slot is held at once; a busy pool queues the sessions in the order they asked and
hands each released slot to the head of the queue; a session that gives its slot back and
asks again goes to the back (no session keeps the others out); ``try_request`` never queues
and never overtakes a waiting session; leaving the queue, asking twice and releasing twice
change nothing; a pool that grows grants at once, one that
shrinks takes nothing away.
"""

from __future__ import annotations

import pytest

from headcast.server.generation_slots import SessionSlot, SlotPool


def _holders(slots: list[SessionSlot]) -> list[int]:
    return [number for number, slot in enumerate(slots) if slot.held]


def test_a_free_slot_is_held_at_once_and_a_busy_pool_queues_in_order() -> None:
    pool = SlotPool(1)
    a, b, c = pool.slot(), pool.slot(), pool.slot()
    assert a.request() and pool.busy == 1
    assert not b.request() and not c.request()
    assert pool.waiting == 2
    a.release()
    assert _holders([a, b, c]) == [1], "the first in the queue gets the slot"
    b.release()
    assert _holders([a, b, c]) == [2]
    assert (pool.busy, pool.waiting) == (1, 0)


def test_asking_again_goes_to_the_back_so_nobody_starves() -> None:
    pool = SlotPool(1)
    sessions = [pool.slot() for _ in range(4)]
    order: list[int] = []
    for session in sessions:
        session.request()
    for _ in range(8):  # every holder speaks once, gives the slot back and asks again
        (holder,) = _holders(sessions)
        order.append(holder)
        sessions[holder].release()
        sessions[holder].request()
    assert order == [0, 1, 2, 3, 0, 1, 2, 3]


def test_leaving_the_queue_and_repeated_calls_change_nothing_else() -> None:
    pool = SlotPool(1)
    a, b, c = pool.slot(), pool.slot(), pool.slot()
    a.request()
    a.request()
    b.request()
    b.request()
    c.request()
    assert (pool.busy, pool.waiting) == (1, 2)
    b.release()  # b gives up waiting
    b.release()
    assert pool.waiting == 1 and not b.held
    a.release()
    a.release()
    assert _holders([a, b, c]) == [2] and pool.waiting == 0


def test_several_slots_and_resizing() -> None:
    pool = SlotPool(0)
    slots = [pool.slot() for _ in range(4)]
    for slot in slots:
        assert not slot.request()
    pool.resize(2)  # the group became ready
    assert _holders(slots) == [0, 1] and pool.waiting == 2
    pool.resize(1)  # fewer slots after a restart: nobody loses theirs...
    assert pool.busy == 2
    slots[0].release()  # ...but none is granted until the pool is under its total
    assert _holders(slots) == [1]
    slots[1].release()
    assert _holders(slots) == [2]
    with pytest.raises(ValueError, match="0 or more"):
        pool.resize(-1)


def test_try_request_takes_only_a_free_slot_nobody_waits_for() -> None:
    pool = SlotPool(1)
    a, b, c = pool.slot(), pool.slot(), pool.slot()
    assert a.try_request() and a.try_request()
    assert not b.try_request() and pool.waiting == 0, "it never queues"
    assert not c.request()
    a.release()
    assert c.held and not b.held
    c.release()
    assert b.try_request()

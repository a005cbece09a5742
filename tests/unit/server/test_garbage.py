"""The garbage policy: a session's reference cycles are collected soon after it ends."""

from __future__ import annotations

import asyncio
import gc
import weakref

from headcast.server.garbage import GarbagePolicy

DELAY_S = 0.05


class _Node:
    """Half of a reference cycle, holding a buffer like an RTP packet."""

    def __init__(self) -> None:
        self.other: _Node | None = None
        self.payload = bytearray(1 << 20)


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


async def test_a_session_that_ends_has_its_cycles_collected_once() -> None:
    policy = GarbagePolicy(delay_s=DELAY_S)
    gc.disable()  # only the policy may collect during the test
    try:
        first, second = _cycle(), _cycle()
        assert first() is not None and second() is not None  # unreachable, not yet freed
        policy.session_ended()
        policy.session_ended()  # a second end while one collection is pending: no second
        await asyncio.sleep(DELAY_S * 4)
    finally:
        gc.enable()
    assert first() is None and second() is None
    assert policy.collections == 1


async def test_a_cancelled_collection_never_runs() -> None:
    policy = GarbagePolicy(delay_s=DELAY_S)
    policy.session_ended()
    policy.cancel()
    await asyncio.sleep(DELAY_S * 3)
    assert policy.collections == 0


def test_freezing_moves_the_live_objects_out_of_the_scans() -> None:
    try:
        GarbagePolicy().freeze_startup_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

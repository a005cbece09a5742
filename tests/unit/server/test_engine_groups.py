"""Engine groups in the server (server/engine_groups.py): placement, capacity, failures.

Real puppet worker processes on the CPU (no torch: each starts in about a second): sessions
go to the least-loaded group with a free slot; capacity is the sum of the ready groups'
slots (in loop mode each group hands out its own generation slots to its sessions); a group
whose worker is killed ends its sessions through their leases, counts the failure and, with
no restarts left, stays failed while the other group serves; groups that cannot load make
the server's not-ready reason name each cause.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from headcast.pipeline.engine import EngineNotReady
from headcast.pipeline.engine_options import PuppetOptions
from headcast.pipeline.engine_processes import ProcessGroupEngine
from headcast.server.capacity import CapacityPolicy
from headcast.server.engine_groups import CapacityReached, EngineGroups, GroupState, Lease
from headcast.server.group_plan import GroupPlan

WAIT_S = 60.0
POLL_S = 0.05
TWO_GROUPS = [GroupPlan(0, ("cpu",), False), GroupPlan(1, ("cpu",), False)]


def _groups(
    *, slots: int = 2, restarts: int = 0, height: int = 96, failures: list[int] | None = None
) -> EngineGroups:
    return EngineGroups(
        TWO_GROUPS,
        engine_name="puppet",
        options=PuppetOptions(height=height, width=64),
        policy=CapacityPolicy(max_sessions=slots, fallback=1),
        restarts=restarts,
        on_failure=None if failures is None else failures.append,
    )


async def _until(what: str, condition: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {WAIT_S} s")
        await asyncio.sleep(POLL_S)


@pytest.fixture
async def started() -> AsyncIterator[list[EngineGroups]]:
    running: list[EngineGroups] = []
    yield running
    for groups in running:
        await groups.stop()


def _ready(groups: EngineGroups) -> bool:
    return all(s.state is GroupState.READY for s in groups.statuses())


async def test_sessions_go_to_the_least_loaded_group_with_a_free_slot(
    started: list[EngineGroups],
) -> None:
    groups = _groups(slots=2)
    started.append(groups)
    assert groups.capacity is None
    with pytest.raises(EngineNotReady, match="still loading"):
        groups.acquire(lambda _reason: None)
    assert groups.worker_for_preparation() is None, "no worker before a group is ready"
    groups.start()
    await _until("both groups ready", lambda: _ready(groups))
    assert groups.capacity == 4

    idle_first = groups.worker_for_preparation()  # both idle: the first group's worker
    first = groups.acquire(lambda _reason: None)
    assert first.group == "0"
    assert groups.worker_for_preparation() not in (None, idle_first), "avoids the busy group"
    first.release()
    assert groups.worker_for_preparation() is idle_first

    leases = [groups.acquire(lambda _reason: None) for _ in range(4)]
    assert [lease.group for lease in leases] == ["0", "1", "0", "1"]
    with pytest.raises(CapacityReached, match=r"\(4 of 4\)"):
        groups.acquire(lambda _reason: None)
    leases[1].release()
    leases[1].release()  # idempotent
    assert groups.acquire(lambda _reason: None).group == "1"
    assert [s.sessions for s in groups.statuses()] == [2, 2]


async def test_in_loop_mode_each_group_has_its_own_generation_slots(
    started: list[EngineGroups],
) -> None:
    groups = EngineGroups(
        TWO_GROUPS,
        engine_name="puppet",
        options=PuppetOptions(height=96, width=64),
        policy=CapacityPolicy(max_sessions=3, fallback=1, generation_slots=1, loop=True),
        restarts=0,
    )
    started.append(groups)
    groups.start()
    await _until("both groups ready", lambda: _ready(groups))
    assert groups.capacity == 6, "sessions, not slots, make the capacity"
    leases = [groups.acquire(lambda _reason: None) for _ in range(4)]  # two on each group
    assert [lease.group for lease in leases] == ["0", "1", "0", "1"]
    assert leases[0].slot.request() and leases[1].slot.request()
    assert not leases[2].slot.request(), "group 0's one slot is busy"
    statuses = groups.statuses()
    assert [(s.generation_slots, s.generation_busy, s.speech_waiting) for s in statuses] == [
        (1, 1, 1),
        (1, 1, 0),
    ]
    leases[0].release()  # the session ends: its slot goes to the one waiting in its group
    assert leases[2].slot.held and not leases[3].slot.held
    assert [s.sessions for s in groups.statuses()] == [1, 2]


async def test_a_dead_group_ends_its_sessions_and_the_other_serves_on(
    started: list[EngineGroups],
) -> None:
    failures: list[int] = []
    groups = _groups(slots=1, restarts=0, failures=failures)
    started.append(groups)
    groups.start()
    await _until("both groups ready", lambda: _ready(groups))
    lost: list[tuple[int, str]] = []  # (session, reason)
    leases: list[Lease] = [
        groups.acquire(lambda reason, session=session: lost.append((session, reason)))
        for session in range(2)
    ]
    assert [lease.group for lease in leases] == ["0", "1"]
    engine = leases[0].worker.engine
    assert isinstance(engine, ProcessGroupEngine)
    (pid,) = engine.pids

    os.kill(pid, signal.SIGKILL)
    await _until("the failure to reach the loop", lambda: lost)

    assert [session for session, _reason in lost] == [0] and failures == [0]
    assert f"worker rank 0 (pid {pid}, cpu) was killed by SIGKILL while serving" in lost[0][1]
    await _until(
        "group 0 to fail for good", lambda: groups.statuses()[0].state is GroupState.FAILED
    )
    dead, alive = groups.statuses()
    assert dead.failures == 1 and dead.capacity == 0 and "not restarted again" in dead.detail
    assert alive.state is GroupState.READY and alive.failures == 0
    assert groups.capacity == 1  # only the living group's slot counts
    leases[0].release()  # the registry releases a lost session's lease when it closes
    with pytest.raises(CapacityReached):
        groups.acquire(lambda _reason: None)  # group 1's one slot is still taken
    leases[1].release()
    assert groups.acquire(lambda _reason: None).group == "1"


async def test_when_every_group_fails_to_load_the_reason_names_each(
    started: list[EngineGroups],
) -> None:
    groups = _groups(height=8)  # the puppet needs at least 16x16
    started.append(groups)
    groups.start()
    await _until(
        "both groups to fail",
        lambda: all(s.state is GroupState.FAILED for s in groups.statuses()),
    )
    reason = groups.not_ready_reason()
    assert reason.startswith("every engine group failed (group 0: failed to load: ")
    assert "group 1: failed to load" in reason and "16x16" in reason
    with pytest.raises(EngineNotReady, match="every engine group failed"):
        groups.acquire(lambda _reason: None)

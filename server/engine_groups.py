"""The server's engine groups: starting them, placing sessions on them, and living with a
group that dies.

Owns ``EngineGroups``: one ``EngineWorker`` per ``GroupPlan`` (in the server process for a
single one-device group, else a ``ProcessGroupEngine`` of worker processes behind it), each
group's capacity (``CapacityPolicy`` applied to the group's own warm-up RTF, settled once
per start of the group: its generation slots, a ``SlotPool``, and its session limit),
placement (``acquire``: the least-loaded ready group with room for a session, as a
``Lease`` -- the worker and the session's ``SessionSlot`` in its group's pool -- that the
session releases when it ends), ``capacity`` (the sum of the ready groups' session limits),
``statuses`` for ``/readyz`` and ``/metrics``, and the failure path: a group whose worker process
died calls every lease's ``on_lost(reason)`` (the registry ends those sessions with an error event),
shuts the dead incarnation down and starts it again, at most ``restarts`` times; then it stays
failed and the other groups go on. A group that fails to load is not restarted (the cause is nearly
always the configuration).

Also owns ``CapacityReached``. Knows nothing about HTTP, metrics backends or how sessions
stream; runs on the event loop except for the failure report, which arrives from a worker's
watching thread and is handed to the loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from headcast.pipeline.engine import Engine, EngineNotReady, EngineWorker, default_registry
from headcast.pipeline.engine_options import EngineOptions
from headcast.pipeline.engine_processes import ProcessGroupEngine
from headcast.server.capacity import CapacityPolicy, GroupCapacity
from headcast.server.generation_slots import SessionSlot, SlotPool
from headcast.server.group_plan import CPU_DEVICE, GroupPlan

if TYPE_CHECKING:
    from headcast.pipeline.parallel import ParallelGroup

logger = logging.getLogger(__name__)


class CapacityReached(RuntimeError):
    """Every ready group has as many sessions as it admits."""


class GroupState(enum.StrEnum):
    """Where an engine group is, as ``/readyz`` shows it; the server as a whole is in one of
    the same states (``Runtime.readiness``)."""

    LOADING = "loading"
    """Starting, loading or warming up (also while restarting after a failure)."""

    READY = "ready"
    """Serving sessions."""

    FAILED = "failed"
    """Failed to load, or died more often than it may be restarted; serves nothing."""


@dataclass(frozen=True)
class GroupStatus:
    """One group as ``/readyz`` and ``/metrics`` report it."""

    index: int
    devices: tuple[str, ...]
    state: GroupState
    sessions: int
    """Sessions placed on the group now."""

    capacity: int
    """Sessions the group admits (0 unless ready)."""

    generation_slots: int
    """Chunks the group generates in real time at once (0 unless ready)."""

    generation_busy: int
    """Generation slots held by sessions now."""

    speech_waiting: int
    """Sessions waiting for a generation slot now."""

    warmup_rtf: float | None
    """Compute seconds per second of media measured at the group's warm-up."""

    failures: int
    """Worker deaths since the server started."""

    last_failure: str | None
    """The cause of the latest worker death (which rank, which signal or status)."""

    detail: str
    """What the group is doing, or why it failed."""

    load_seconds: float | None = None


@dataclass(eq=False)
class _Group:
    """One group and its current incarnation (worker thread and engine)."""

    plan: GroupPlan
    worker: EngineWorker
    engine: Engine
    generation: int = 0
    """Bumped at every (re)start: a failure report of an older incarnation is stale."""

    leases: set[Lease] = field(default_factory=set)
    capacity: GroupCapacity | None = None
    """Slots and session limit of the current incarnation, settled once it is ready."""

    pool: SlotPool = field(default_factory=SlotPool)
    """The group's generation slots (sized when ``capacity`` is settled)."""

    failures: int = 0
    restarting: bool = False
    last_failure: str | None = None
    failed_for_good: bool = False

    @property
    def label(self) -> str:
        return str(self.plan.index)


class Lease:
    """A session's place on a group: the worker it talks to and its generation slot, until
    ``release``."""

    def __init__(self, group: _Group, on_lost: Callable[[str], None]) -> None:
        self._group = group
        self.worker = group.worker
        self.slot: SessionSlot = group.pool.slot()
        """The session's place in the group's generation slots."""
        self.on_lost = on_lost
        """Called on the event loop if the group dies under the session, with the cause."""

    @property
    def group(self) -> str:
        """The group's label (its index) for metrics and logs."""
        return self._group.label

    def release(self) -> None:
        """Free the session's place and its generation slot (idempotent)."""
        self._group.leases.discard(self)
        self.slot.release()


class EngineGroups:
    """Every engine group of one server (see the module docstring)."""

    def __init__(
        self,
        plans: Sequence[GroupPlan],
        *,
        engine_name: str,
        options: EngineOptions,
        policy: CapacityPolicy,
        restarts: int,
        engine: Engine | None = None,
        on_failure: Callable[[int], None] | None = None,
        log_level: str = "INFO",
    ) -> None:
        """``engine`` replaces the configured one in a single in-process group (tests);
        ``on_failure(index)`` is told, on the loop, of every worker death."""
        if not plans:
            raise ValueError("a server needs at least one engine group")
        if engine is not None and not (len(plans) == 1 and plans[0].in_process):
            raise ValueError("a given engine serves a single in-process group only")
        self._plans = tuple(plans)
        self._engine_name = engine_name
        self._options = options
        self._policy = policy
        self._restarts = restarts
        self._given_engine = engine
        self._on_failure = on_failure
        self._log_level = log_level
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._groups = [self._new_group(plan) for plan in self._plans]

    def _new_group(self, plan: GroupPlan) -> _Group:
        engine = self._make_engine(plan, generation=1)
        worker = EngineWorker(engine, device_name=f"group{plan.index}")
        return _Group(plan, worker, engine, generation=1)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every group's worker (engines load on their threads); on the event loop."""
        self._loop = asyncio.get_running_loop()
        for group in self._groups:
            group.worker.start()
        logger.info(
            "%d engine group(s) of %d device(s): %s",
            len(self._plans),
            self._plans[0].size,
            "; ".join(f"group {p.index} on {', '.join(p.devices)}" for p in self._plans),
        )

    async def stop(self) -> None:
        """Stop every group: its thread finishes the current job, its processes end."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, _shut_down, g.worker, g.engine) for g in self._groups)
        )

    # -- placement -----------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The first group's engine (what the server runs, for logs and ``/readyz``)."""
        return self._groups[0].engine

    @property
    def capacity(self) -> int | None:
        """Sessions the ready groups admit, or ``None`` while none is ready."""
        ready = self._ready()
        if not ready:
            return None
        return sum(self._capacity(g).sessions for g in ready)

    def acquire(self, on_lost: Callable[[str], None]) -> Lease:
        """A place on the least-loaded ready group with room for one more session.

        Raises ``EngineNotReady`` when no group is ready and ``CapacityReached`` when every
        group is full.
        """
        ready = self._ready()
        if not ready:
            raise EngineNotReady(self.not_ready_reason())
        free = [g for g in ready if len(g.leases) < self._capacity(g).sessions]
        if not free:
            capacity = sum(self._capacity(g).sessions for g in ready)
            raise CapacityReached(
                f"every session slot is in use ({capacity} of {capacity}); retry later, or set "
                "max_sessions (HEADCAST_MAX_SESSIONS) higher if the engine keeps up with more "
                "(with idle_mode: loop, silent sessions take no engine time)"
            )
        group = min(free, key=self._load)
        lease = Lease(group, on_lost)
        group.leases.add(lease)
        return lease

    def worker_for_preparation(self) -> EngineWorker | None:
        """The worker of the least-loaded ready group, for background work that takes no
        session slot (an avatar's preparation); ``None`` while no group is ready."""
        ready = self._ready()
        return min(ready, key=self._load).worker if ready else None

    def avatar_cache_evictions(self) -> dict[str, int]:
        """Per group label: avatars its engine dropped from its device cache (since the
        group's current incarnation loaded)."""
        return {g.label: g.engine.avatar_cache_evictions for g in self._groups}

    def not_ready_reason(self) -> str:
        """Why no session can be placed, for a 503."""
        if self._groups and all(self._state(g) is GroupState.FAILED for g in self._groups):
            causes = "; ".join(f"group {g.label}: {self._detail(g)}" for g in self._groups)
            return f"every engine group failed ({causes})"
        return "the engine is still loading"

    # -- status --------------------------------------------------------------------------------

    def statuses(self) -> list[GroupStatus]:
        """Every group's state, in index order."""
        return [self.status(index) for index in range(len(self._groups))]

    def status(self, index: int) -> GroupStatus:
        """Group ``index``'s state (one gauge of ``/metrics`` reads one group's)."""
        group = self._groups[index]
        state = self._state(group)
        ready = state is GroupState.READY
        return GroupStatus(
            index=group.plan.index,
            devices=group.plan.devices,
            state=state,
            sessions=len(group.leases),
            capacity=self._capacity(group).sessions if ready else 0,
            generation_slots=self._capacity(group).slots if ready else 0,
            generation_busy=group.pool.busy,
            speech_waiting=group.pool.waiting,
            warmup_rtf=group.engine.warmup_rtf if ready else None,
            failures=group.failures,
            last_failure=group.last_failure,
            detail=self._detail(group),
            load_seconds=group.worker.load_seconds,
        )

    def _ready(self) -> list[_Group]:
        return [g for g in self._groups if self._state(g) is GroupState.READY]

    def _load(self, group: _Group) -> tuple[float, int]:
        """Sessions per admitted session, then the index: how placement picks a group
        (sessions and avatar preparations alike)."""
        return len(group.leases) / self._capacity(group).sessions, group.plan.index

    def _state(self, group: _Group) -> GroupState:
        if group.failed_for_good or group.worker.load_error is not None:
            return GroupState.FAILED
        if group.restarting or not group.worker.is_ready:
            return GroupState.LOADING
        return GroupState.READY

    def _detail(self, group: _Group) -> str:
        worker = group.worker
        if group.failed_for_good:
            return (
                f"{group.last_failure}; not restarted again (group_restarts: {self._restarts}); "
                "see the server log, fix the cause and restart the server"
            )
        if worker.load_error is not None:
            return (
                f"failed to load: {worker.load_error}; see the server log, fix the cause and "
                "restart the server"
            )
        if group.restarting or (group.last_failure is not None and not worker.is_ready):
            return f"restarting after: {group.last_failure}"
        if not worker.is_ready:
            return "loading and warming up"
        return "ready"

    def _capacity(self, group: _Group) -> GroupCapacity:
        """The group's slots and session limit, settled the first time it is seen ready."""
        if group.capacity is None:
            capacity = self._policy.resolve(group.engine)
            group.capacity = capacity
            group.pool.resize(capacity.slots)
            logger.info(
                "group %s: %d generation slot(s), %d session(s) (%s)",
                group.label, capacity.slots, capacity.sessions, capacity.source,
            )  # fmt: skip
        return group.capacity

    # -- failures ------------------------------------------------------------------------------

    def _make_engine(self, plan: GroupPlan, generation: int) -> Engine:
        if self._given_engine is not None:
            return self._given_engine
        if plan.in_process:
            return default_registry().create(
                self._engine_name, self._options, _single_device(plan.devices[0])
            )
        return ProcessGroupEngine(
            engine=self._engine_name,
            options=self._options,
            devices=plan.devices,
            group=plan.index,
            on_failure=lambda reason: self._report(plan.index, generation, reason),
            log_level=self._log_level,
        )

    def _report(self, index: int, generation: int, reason: str) -> None:
        """From a watching thread: hand the failure to the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._failed, index, generation, reason)
        except RuntimeError:  # the loop closed meanwhile: the server is gone
            logger.debug("group %d failed after the event loop closed", index)

    def _failed(self, index: int, generation: int, reason: str) -> None:
        group = self._groups[index]
        if generation != group.generation or self._stopping:
            return
        group.failures += 1
        group.last_failure = reason
        group.capacity = None
        lost = list(group.leases)
        logger.error(
            "group %s failed: %s; ending its %d session(s)", group.label, reason, len(lost)
        )
        if self._on_failure is not None:
            self._on_failure(index)
        for lease in lost:
            try:
                lease.on_lost(reason)
            except Exception:
                logger.exception("ending a session of failed group %s failed", group.label)
        if group.failures > self._restarts:
            group.failed_for_good = True
        else:
            group.restarting = True
        task = asyncio.get_running_loop().create_task(
            self._replace(group), name=f"group {group.label} restart"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _replace(self, group: _Group) -> None:
        """Shut the dead incarnation down; start a new one unless the group failed for good."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _shut_down, group.worker, group.engine)
        if group.failed_for_good or self._stopping:
            return
        group.generation += 1
        engine = self._make_engine(group.plan, group.generation)
        group.engine = engine
        group.worker = EngineWorker(engine, device_name=f"group{group.plan.index}")
        group.restarting = False
        group.worker.start()
        logger.info(
            "group %s restarting (%d of %d restarts)", group.label, group.failures, self._restarts
        )


def _single_device(device: str) -> ParallelGroup | None:
    """The ``ParallelGroup`` of a one-device group on ``device`` (``None`` on the CPU: the
    engine computes where it always did, and the server needs no torch)."""
    if device == CPU_DEVICE:
        return None
    from headcast.pipeline.parallel import ParallelGroup

    return ParallelGroup.single(device)


def _shut_down(worker: EngineWorker, engine: Engine) -> None:
    """Stop ``worker``'s thread, then ``engine``'s processes (if it has any)."""
    worker.shutdown()
    if isinstance(engine, ProcessGroupEngine):
        engine.stop()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("restarting an engine group failed", exc_info=task.exception())

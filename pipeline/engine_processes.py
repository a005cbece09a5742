"""An engine whose work runs in an engine group's worker processes.

Owns ``ProcessGroupEngine``: an ``Engine`` for the server's ``EngineWorker`` thread that, in
``load``, starts one worker process per device (``python -m headcast.pipeline.group_worker``, with
NVLink multicast switched off in its environment), hands each its ``GroupSpec`` over a Unix
socket pair, and then forwards ``open_session`` / ``step`` / ``reseed`` / ``close_session``
and each step of ``prepare_avatar`` to rank 0 and waits for its reply. Because it sits
behind the ordinary ``EngineWorker``, sessions keep the
same ``SessionHandle`` (submit, ``drop_pending``, mailbox) whether their group is a thread or
processes: streaming never sees ranks.

It also supervises: a thread per process waits for its exit. A process that dies while the
group is not being stopped fails the whole group: the other ranks are killed (a rank stuck in
a collective would never return), every later call raises ``EngineGroupFailed`` with the
cause (which rank, which signal or status), and ``on_failure(reason)`` is called once -- from the
watching thread -- if the group had loaded. ``stop`` ends the processes (a polite stop
request, then SIGKILL after a grace period).

Cost of a chunk's trip: the frames (28.9 MB at 768x448) cross the socket as one raw buffer;
see docs/deployment.md for the measured time. Knows nothing about asyncio, sessions or
placement.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

from headcast.pipeline.engine_api import EngineError, EngineGroupFailed
from headcast.pipeline.engine_options import EngineOptions
from headcast.pipeline.group_messages import (
    CloseRequest,
    Done,
    Failed,
    GroupSpec,
    Loaded,
    OpenRequest,
    PrepareRequest,
    Request,
    ReseedRequest,
    StepRequest,
    StopRequest,
    recv_message,
    send_message,
)
from headcast.pipeline.media import Avatar, Chunk, ChunkJob, PreparationStep, Reseed
from headcast.pipeline.rendezvous import CHILD_ENV, free_port

logger = logging.getLogger(__name__)

WORKER_MODULE = "headcast.pipeline.group_worker"
STOP_GRACE_S = 10.0
"""How long ``stop`` waits for the processes to leave after the stop request, in seconds,
before it kills them."""

EXIT_REPORT_S = 5.0
"""How long a call that lost rank 0's connection waits for the process's exit status (to
name the cause), in seconds."""

KILL_WAIT_S = 10.0
"""How long to wait for a killed process to be reaped, in seconds."""


class RankError(EngineError):
    """An engine call failed on a rank of the group (the group goes on)."""


@dataclass(frozen=True)
class RemoteSession:
    """The server-side handle of a session's state, which lives in every rank's process."""

    session: int


def describe_exit(returncode: int) -> str:
    """``-9`` -> ``"was killed by SIGKILL"``; ``3`` -> ``"exited with status 3"``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


@dataclass
class _Rank:
    rank: int
    device: str
    process: subprocess.Popen[bytes]
    conn: Connection


class ProcessGroupEngine:
    """An ``Engine`` whose ranks run in worker processes (see the module docstring).

    ``devices`` holds one device per rank (``"cuda:3"``, or ``"cpu"`` for a CPU worker slot).
    Every method but ``stop``, ``failure`` and ``pids`` runs on the ``EngineWorker`` thread.
    """

    def __init__(
        self,
        *,
        engine: str,
        options: EngineOptions,
        devices: Sequence[str],
        group: int = 0,
        on_failure: Callable[[str], None] | None = None,
        log_level: str = "INFO",
    ) -> None:
        if not devices:
            raise ValueError("an engine group needs at least one device")
        self.name = engine
        self.options = options
        self.devices = tuple(devices)
        self.group = group
        self.label = f"group {group}"
        self.description = f"{engine} in {self.label} ({self._where()}), loading"
        self.height = options.height
        self.width = options.width
        self.warmup_rtf: float | None = None
        self.load_seconds: float | None = None
        self.avatar_cache_evictions = 0
        """Rank 0's engine's count, as of its latest reply."""
        self._on_failure = on_failure
        self._log_level = log_level
        self._ranks: list[_Rank] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        """Guards ``_failure``, ``_stopping``, ``_loaded`` and the process list."""
        self._failure: str | None = None
        self._ended = threading.Event()
        """Set once ``_failure`` is recorded or ``stop`` began."""
        self._stopping = False
        self._loaded = False
        self._call_lock = threading.Lock()
        """Held while a request is on the wire (the device thread, or ``stop``)."""

    # -- state seen from other threads ----------------------------------------------------------

    @property
    def world_size(self) -> int:
        return len(self.devices)

    @property
    def failure(self) -> str | None:
        """Why the group failed, or ``None`` while it is healthy."""
        with self._lock:
            return self._failure

    @property
    def pids(self) -> list[int]:
        """Process ids of the ranks, rank 0 first (empty before ``load``)."""
        with self._lock:
            return [rank.process.pid for rank in self._ranks]

    # -- Engine ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Start the worker processes and wait until every rank loaded and warmed up."""
        port = free_port() if self.world_size > 1 else 0
        for rank, device in enumerate(self.devices):
            self._start_rank(rank, device, port)
        logger.info("%s: started %d worker process(es) on %s", self.label, self.world_size,
                    self._where())  # fmt: skip
        reply = self._receive()
        if isinstance(reply, Failed):
            self.stop()
            raise EngineError(f"{self.label} failed to load: {reply.message}")
        if not isinstance(reply, Loaded):
            self.stop()
            raise EngineError(f"{self.label} sent {type(reply).__name__} instead of Loaded")
        self.description = reply.description
        if self.world_size > 1:
            self.description += f" [{self.world_size} ranks: {self._where()}]"
        self.height, self.width = reply.height, reply.width
        self.warmup_rtf = reply.warmup_rtf
        self.load_seconds = reply.load_seconds
        with self._lock:
            self._loaded = True
            failure = self._failure
        if failure is not None:  # a rank died right after loading
            raise EngineGroupFailed(failure)

    def open_session(self, avatar: Avatar, seed: int) -> RemoteSession:
        state = RemoteSession(next(self._ids))
        self._call(OpenRequest(state.session, avatar, seed))
        return state

    def step(self, state: RemoteSession, job: ChunkJob) -> Chunk:
        started = time.perf_counter()
        # A job's re-seed went ahead as its own request (``reseed``): its frames cross once.
        reply = self._call(StepRequest(state.session, replace(job, reseed=None)))
        if reply.chunk is None:
            raise EngineError(f"{self.label} answered a step without a chunk")
        # What the session waits for: the ranks' compute plus the trip of the frames.
        return replace(reply.chunk, compute_seconds=time.perf_counter() - started)

    def reseed(self, state: RemoteSession, reseed: Reseed) -> None:
        self._call(ReseedRequest(state.session, reseed))

    def close_session(self, state: RemoteSession) -> None:
        if self.failure is None:
            self._call(CloseRequest(state.session))

    def prepare_avatar(self, avatar: Avatar) -> Iterator[PreparationStep]:
        """Every rank prepares ``avatar`` in lockstep, one request per step; rank 0's steps
        come back (its last one with the assets). Closed early (cancelled), it tells the
        ranks to drop the preparation."""
        preparation = next(self._ids)
        request = PrepareRequest(preparation, avatar)
        finished = False
        try:
            while True:
                step = self._call(request).step
                if step is None:
                    raise EngineError(f"{self.label} answered a preparation step without a step")
                finished = step.assets is not None
                yield step
                if finished:
                    return
                request = PrepareRequest(preparation)
        finally:
            if not finished and self.failure is None:
                try:
                    self._call(PrepareRequest(preparation, cancel=True))
                except EngineError:
                    logger.warning("%s: dropping preparation %d failed", self.label, preparation)

    # -- stopping ---------------------------------------------------------------------------------

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """End every worker process: a stop request to rank 0, then SIGKILL after
        ``grace_s``. Safe from any thread, idempotent."""
        with self._lock:
            self._stopping = True
            ranks = list(self._ranks)
        self._ended.set()
        if not ranks:
            return
        if self._call_lock.acquire(timeout=grace_s):  # not while a request is on the wire
            try:
                if ranks[0].process.poll() is None:
                    send_message(ranks[0].conn, StopRequest())
            except OSError:
                pass  # rank 0 is gone already
            finally:
                self._call_lock.release()
        deadline = time.monotonic() + grace_s
        for rank in ranks:
            try:
                rank.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s: rank %d did not stop within %.0f s; killing it",
                               self.label, rank.rank, grace_s)  # fmt: skip
        self._kill(ranks)
        for rank in ranks:
            rank.conn.close()

    # -- internals ------------------------------------------------------------------------------

    def _where(self) -> str:
        return ", ".join(self.devices)

    def _start_rank(self, rank: int, device: str, port: int) -> None:
        ours, theirs = socket.socketpair()
        command = [
            sys.executable, "-m", WORKER_MODULE, "--fd", str(theirs.fileno()),
            "--group", str(self.group), "--rank", str(rank),
        ]  # fmt: skip
        try:
            process = subprocess.Popen(command, env=_worker_env(), pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()  # the child holds its copy: its death shows as end of file here
        conn = Connection(ours.detach())
        spec = GroupSpec(
            engine=self.name,
            options=self.options,
            label=self.label,
            rank=rank,
            world_size=self.world_size,
            device=device,
            master_port=port,
            log_level=self._log_level,
        )
        with self._lock:
            self._ranks.append(_Rank(rank, device, process, conn))
        send_message(conn, spec)
        threading.Thread(
            target=self._watch,
            args=(rank, process),
            name=f"headcast-group{self.group}-rank{rank}-watch",
            daemon=True,
        ).start()

    def _watch(self, rank: int, process: subprocess.Popen[bytes]) -> None:
        returncode = process.wait()
        with self._lock:
            if self._stopping or self._failure is not None:
                return
            when = "while serving" if self._loaded else "while loading"
            self._failure = (
                f"worker rank {rank} (pid {process.pid}, {self.devices[rank]}) "
                f"{describe_exit(returncode)} {when}"
            )
            self._ended.set()
            loaded, failure, ranks = self._loaded, self._failure, list(self._ranks)
        logger.error("%s failed: %s; stopping its other ranks", self.label, failure)
        self._kill(ranks)
        if loaded and self._on_failure is not None:
            try:
                self._on_failure(failure)
            except Exception:
                logger.exception("%s: the failure callback failed", self.label)

    def _kill(self, ranks: list[_Rank]) -> None:
        for rank in ranks:
            if rank.process.poll() is None:
                rank.process.kill()
        for rank in ranks:
            try:
                rank.process.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                logger.error("%s: rank %d (pid %d) survived SIGKILL for %.0f s",
                             self.label, rank.rank, rank.process.pid, KILL_WAIT_S)  # fmt: skip

    def _call(self, request: Request) -> Done:
        """Send ``request`` to rank 0 and wait for the group's reply."""
        failure = self.failure
        if failure is not None:
            raise EngineGroupFailed(failure)
        with self._call_lock:
            try:
                send_message(self._ranks[0].conn, request)
            except OSError:
                raise EngineGroupFailed(self._lost_reason()) from None
            reply = self._receive()
        if isinstance(reply, Failed):
            raise RankError(reply.message)
        if not isinstance(reply, Done):
            raise EngineError(f"{self.label} answered {type(reply).__name__} to a request")
        self.avatar_cache_evictions = reply.avatar_cache_evictions
        return reply

    def _receive(self) -> object:
        try:
            return recv_message(self._ranks[0].conn)
        except (EOFError, OSError):
            raise EngineGroupFailed(self._lost_reason()) from None

    def _lost_reason(self) -> str:
        """Why rank 0's connection closed: the watcher's account once it has one."""
        self._ended.wait(EXIT_REPORT_S)  # the watcher records the cause right after the exit
        return self.failure or f"{self.label}: rank 0 closed its connection"


def _worker_env() -> dict[str, str]:
    """The server's environment (the worker imports ``headcast`` as the server does: installed,
    or through the same ``PYTHONPATH``) with NVLink multicast off."""
    env = dict(os.environ)
    env.update(CHILD_ENV)
    return env

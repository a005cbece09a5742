"""One worker process of an engine group: ``python -m headcast.pipeline.group_worker --fd N ...``.

Owns the life of one rank: read its ``GroupSpec`` from the server's socket (file descriptor
``--fd``), join the group's ``torch.distributed`` process group when the group has more than
one rank (NCCL on CUDA, gloo on the CPU, over a TCP store on 127.0.0.1) plus a gloo control
group, create and load the engine with its ``ParallelGroup``, then run requests in lockstep:
rank 0 takes each request from the server and broadcasts it on the control group; every rank
applies it to its engine; the ranks agree on success (an all-gather of error messages) and
rank 0 sends the group's reply, with rank 0's chunk. ``--group`` and ``--rank`` only name
the process for ``ps``. SIGINT and SIGTERM are ignored: the server ends its workers.

A request that fails on any rank fails for the group (a session whose preparation failed on
one rank is closed on the others), so the ranks' states never drift apart. When the server
goes away (end of file on the socket) rank 0 stops every rank. Knows nothing about
sessions, mailboxes, asyncio or how the server supervises the processes.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from headcast.pipeline.engine import default_registry
from headcast.pipeline.engine_api import Engine
from headcast.pipeline.group_messages import (
    CloseRequest,
    Done,
    Failed,
    GroupSpec,
    Heartbeat,
    Loaded,
    OpenRequest,
    PrepareRequest,
    Reply,
    Request,
    ReseedRequest,
    StepRequest,
    StopRequest,
    contiguous,
    recv_message,
    send_message,
)
from headcast.pipeline.media import Chunk, PreparationStep

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from headcast.pipeline.parallel import ParallelGroup

logger = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
"""Rank 0 broadcasts a ``Heartbeat`` after this many seconds without a request."""

CONTROL_TIMEOUT = datetime.timedelta(hours=1)
"""Timeout of the control group's collectives: the longest the ranks may disagree about
when a request starts or ends -- loading (minutes for the 14B model) and the first
compiled chunk included. An idle group stays inside it through heartbeats."""

EXIT_OK = 0
EXIT_LOAD_FAILED = 3
"""Exit status of every rank when the engine failed to load on some rank."""

IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""A Ctrl-C or a service manager's SIGTERM to every process of the server reaches the
workers too; they ignore it and leave when the server, which owns their lifetime, stops
them (after closing its sessions) or goes away (end of file on the socket)."""

LOG_FORMAT = "%(asctime)s %(levelname)s [{label} rank {rank}] %(name)s: %(message)s"


@dataclass
class _Rank:
    """One rank's engine, sessions and links."""

    spec: GroupSpec
    engine: Engine
    conn: Connection
    control: ProcessGroup | None
    """Gloo group of the control plane; ``None`` in a group of one."""

    states: dict[int, Any]
    preparations: dict[int, Iterator[PreparationStep]] = field(default_factory=dict)
    """Avatar preparations under way, by id (``PrepareRequest``)."""

    @property
    def primary(self) -> bool:
        return self.spec.rank == 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one rank until it is told to stop; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m headcast.pipeline.group_worker")
    parser.add_argument("--fd", type=int, required=True, help="socket to the server")
    parser.add_argument("--group", default="?", help="the group's index (for ps)")
    parser.add_argument("--rank", default="?", help="this process's rank (for ps)")
    args = parser.parse_args(argv)
    for stop_signal in IGNORED_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    conn = Connection(args.fd)
    spec = recv_message(conn)
    if not isinstance(spec, GroupSpec):
        raise TypeError(f"expected a GroupSpec first, got {type(spec).__name__}")
    logging.basicConfig(
        level=spec.log_level,
        format=LOG_FORMAT.format(label=spec.label, rank=spec.rank),
        stream=sys.stderr,
    )
    parallel, control = _join(spec)
    try:
        engine = _load(spec, conn, control, parallel)
        if engine is None:
            return EXIT_LOAD_FAILED
        _serve(_Rank(spec, engine, conn, control, {}))
        return EXIT_OK
    finally:
        _leave(control)


def _join(spec: GroupSpec) -> tuple[ParallelGroup | None, ProcessGroup | None]:
    """This rank's ``ParallelGroup`` and control group (``None`` where there is no group).

    A CPU worker of one rank gets no ``ParallelGroup`` (and imports no torch): it computes as
    the in-process engine does. A CUDA worker of one rank is pinned to its device; a rank of
    a group joins it through ``pipeline.launch.init_rank``.
    """
    on_cuda = spec.device.startswith("cuda")
    if spec.world_size == 1 and not on_cuda:
        return None, None
    import torch
    import torch.distributed as dist

    from headcast.pipeline.launch import init_rank
    from headcast.pipeline.parallel import ParallelGroup

    device = torch.device(spec.device)
    if spec.world_size == 1:
        torch.cuda.set_device(device)
        return ParallelGroup.single(device), None
    parallel = init_rank(spec.rank, spec.world_size, spec.master_port, device)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    logger.info("joined the group: %d ranks, this one on %s", spec.world_size, device)
    return parallel, control


def _leave(control: ProcessGroup | None) -> None:
    if control is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _load(
    spec: GroupSpec,
    conn: Connection,
    control: ProcessGroup | None,
    parallel: ParallelGroup | None,
) -> Engine | None:
    """Create, load and warm up the engine on every rank; rank 0 reports ``Loaded`` or
    ``Failed``. Returns the engine, or ``None`` when it failed on some rank."""
    started = time.perf_counter()
    made: list[Engine] = []

    def create_and_load() -> None:
        engine = default_registry().create(spec.engine, spec.options, parallel)
        engine.load()
        made.append(engine)

    error = _agree(spec, control, _attempt(spec, create_and_load))
    if spec.rank == 0:
        reply: Reply
        if error is not None:
            reply = Failed(error)
        else:
            engine = made[0]
            reply = Loaded(
                description=engine.description,
                height=engine.height,
                width=engine.width,
                warmup_rtf=engine.warmup_rtf,
                load_seconds=time.perf_counter() - started,
            )
        send_message(conn, reply)
    if error is not None:
        logger.error("the engine failed to load: %s", error)
        return None
    return made[0]


def _serve(rank: _Rank) -> None:
    """Run requests in lockstep until a ``StopRequest``."""
    while True:
        request = _share(rank, _next_request(rank) if rank.primary else None)
        if isinstance(request, StopRequest):
            logger.info("stopping")
            break
        if isinstance(request, Heartbeat):
            continue
        result, error = _apply(rank, request)
        error = _agree(rank.spec, rank.control, error)
        if error is not None and isinstance(request, OpenRequest):
            _forget(rank, request.session)  # prepared here, failed elsewhere
        if error is not None and isinstance(request, PrepareRequest):
            rank.preparations.pop(request.preparation, None)  # stepped here, failed elsewhere
        if rank.primary:
            reply = (
                Failed(error)
                if error is not None
                else Done(
                    contiguous(result) if isinstance(result, Chunk) else None,
                    result if isinstance(result, PreparationStep) else None,
                    rank.engine.avatar_cache_evictions,
                )
            )
            send_message(rank.conn, reply)
    for session in list(rank.states):
        _forget(rank, session)


def _next_request(rank: _Rank) -> Request:
    """Rank 0: the server's next request; a heartbeat after a quiet spell (in a group of
    several ranks); a stop when the server went away."""
    quiet_limit = HEARTBEAT_S if rank.control is not None else None
    try:
        if not rank.conn.poll(quiet_limit):
            return Heartbeat()
        request = recv_message(rank.conn)
    except (EOFError, OSError):
        logger.warning("the server closed the connection; stopping the group")
        return StopRequest()
    if not isinstance(
        request,
        OpenRequest | StepRequest | ReseedRequest | CloseRequest | PrepareRequest | StopRequest,
    ):
        raise TypeError(f"unexpected request {type(request).__name__} from the server")
    return request


def _share(rank: _Rank, request: Request | None) -> Request:
    """Every rank gets rank 0's request (a broadcast on the control group)."""
    if rank.control is None:
        assert request is not None
        return request
    import torch.distributed as dist

    box: list[Request | None] = [request]
    dist.broadcast_object_list(box, src=0, group=rank.control)
    shared = box[0]
    assert shared is not None
    return shared


def _apply(rank: _Rank, request: Request) -> tuple[Any, str | None]:
    """Apply ``request`` to this rank's engine: (result, None) or (None, error message)."""
    engine = rank.engine
    try:
        if isinstance(request, OpenRequest):
            rank.states[request.session] = engine.open_session(request.avatar, request.seed)
            return None, None
        if isinstance(request, StepRequest):
            state = rank.states.get(request.session)
            if state is None:
                return None, f"session {request.session} is not open on rank {rank.spec.rank}"
            return engine.step(state, request.job), None
        if isinstance(request, ReseedRequest):
            state = rank.states.get(request.session)
            if state is None:
                return None, f"session {request.session} is not open on rank {rank.spec.rank}"
            engine.reseed(state, request.reseed)
            return None, None
        if isinstance(request, CloseRequest):
            _forget(rank, request.session)
            return None, None
        if isinstance(request, PrepareRequest):
            return _prepare_step(rank, request), None
    except Exception as exc:
        if isinstance(request, PrepareRequest):
            rank.preparations.pop(request.preparation, None)
        logger.exception("%s failed", type(request).__name__)
        return None, _describe(rank.spec, exc)
    raise TypeError(f"unknown request {request!r}")


def _prepare_step(rank: _Rank, request: PrepareRequest) -> PreparationStep | None:
    """One step of an avatar preparation on this rank (``None`` for a cancel)."""
    if request.cancel:
        rank.preparations.pop(request.preparation, None)
        return None
    if request.avatar is not None:
        rank.preparations[request.preparation] = iter(rank.engine.prepare_avatar(request.avatar))
    steps = rank.preparations.get(request.preparation)
    if steps is None:
        raise KeyError(f"preparation {request.preparation} is not under way on this rank")
    step = next(steps)  # StopIteration: the engine ended without assets (an error)
    if step.assets is not None:
        del rank.preparations[request.preparation]
    return step


def _forget(rank: _Rank, session: int) -> None:
    state = rank.states.pop(session, None)
    if state is not None:
        error = _attempt(rank.spec, lambda: rank.engine.close_session(state))
        if error is not None:
            logger.error("closing session %d failed: %s", session, error)


def _attempt(spec: GroupSpec, action: Callable[[], object]) -> str | None:
    """Run ``action()``; the error as a message naming this rank, or ``None``."""
    try:
        action()
    except Exception as exc:
        logger.exception("the engine failed")
        return _describe(spec, exc)
    return None


def _describe(spec: GroupSpec, error: Exception) -> str:
    return f"rank {spec.rank}: {type(error).__name__}: {error}"


def _agree(spec: GroupSpec, control: ProcessGroup | None, error: str | None) -> str | None:
    """The group's outcome: the first rank's error message, or ``None`` if all succeeded."""
    if control is None:
        return error
    import torch.distributed as dist

    errors: list[str | None] = [None] * spec.world_size
    dist.all_gather_object(errors, error, group=control)
    return next((e for e in errors if e is not None), None)


if __name__ == "__main__":
    sys.exit(main())

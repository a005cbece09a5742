"""Start the processes of a parallel group on this host and join them into one process group.

Owns putting the environment every process it starts gets (``CHILD_ENV``, from
``pipeline.rendezvous``: NVLink multicast off) in place, the rendezvous
(``torch.distributed``'s TCP store on 127.0.0.1 at a free port), ``init_rank`` (join the group: NCCL
on CUDA, gloo on CPU) and ``run_group`` (spawn N processes that each run a function with their
``ParallelGroup``; rank 0's return value comes back, any rank's exception is raised here with its
traceback). Ranks on the CPU share the host's cores: each gets ``cores // N`` threads.

Knows nothing about what the ranks compute.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.rendezvous import CHILD_ENV, LOOPBACK_HOST, free_port

__all__ = [
    "CHILD_ENV",
    "GroupFailed",
    "RankReport",
    "child_environment",
    "collect_reports",
    "free_port",
    "group_devices",
    "init_rank",
    "run_group",
]

logger = logging.getLogger(__name__)

DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
"""How long a collective may wait for the other ranks before the group fails, in seconds."""

DEFAULT_RUN_TIMEOUT_S = 3600.0
"""How long ``run_group`` waits for every rank to finish, in seconds."""

POLL_INTERVAL_S = 0.5
"""How often ``run_group`` checks for ranks that died without reporting, in seconds."""

JOIN_TIMEOUT_S = 30.0
"""How long a finished rank may take to exit before it is terminated, in seconds."""


class GroupFailed(RuntimeError):
    """A rank of a started group raised, died or did not finish in time."""


@dataclass(frozen=True)
class RankReport:
    """What one rank sends back: its pickled result (rank 0 only) or its error's traceback.

    The result travels as plain pickle bytes: a tensor put on a multiprocessing queue
    as is would be shared through the sender's file descriptors, which are gone once the
    sender has exited.
    """

    rank: int
    result: bytes | None = None
    error: str | None = None

    @classmethod
    def of(cls, rank: int, result: Any) -> RankReport:
        """Rank ``rank``'s report of ``result`` (kept only from rank 0)."""
        return cls(rank, pickle.dumps(result) if rank == 0 else None)


def group_devices(world_size: int, device_type: str) -> list[torch.device]:
    """One device per rank: ``cuda:0`` .. ``cuda:N-1``, or ``cpu`` for every rank."""
    if device_type == "cpu":
        return [torch.device("cpu")] * world_size
    visible = torch.cuda.device_count()
    if world_size > visible:
        advice = f"use --gpus {visible} or fewer" if visible else "use --gpus 1 or a CPU device"
        raise ValueError(f"{world_size} GPUs asked for, {visible} visible: {advice}")
    return [torch.device("cuda", index) for index in range(world_size)]


@contextlib.contextmanager
def child_environment() -> Iterator[None]:
    """``CHILD_ENV`` in ``os.environ`` while processes are started (they inherit it)."""
    saved = {name: os.environ.get(name) for name in CHILD_ENV}
    os.environ.update(CHILD_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def init_rank(
    rank: int,
    world_size: int,
    port: int,
    device: torch.device,
    *,
    timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
) -> ParallelGroup:
    """Join this process to the group (NCCL on CUDA, gloo on CPU) and return its place."""
    os.environ.update(CHILD_ENV)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://{LOOPBACK_HOST}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    return ParallelGroup(rank=rank, world_size=world_size, device=device)


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    device: torch.device,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    reports: multiprocessing.Queue[RankReport],
    log_level: int,
) -> None:
    """Entry point of one started process: join, run ``target``, report, leave."""
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)-7s rank{rank} %(name)s: %(message)s"
    )
    try:
        parallel = init_rank(rank, world_size, port, device)
        if device.type == "cpu":  # the ranks share the host's cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        result = target(parallel, *args)
        reports.put(RankReport.of(rank, result))
    except BaseException:  # noqa: BLE001 -- every failure goes back to the parent, with its traceback
        reports.put(RankReport(rank, error=traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_group(
    world_size: int,
    target: Callable[..., Any],
    args: tuple[Any, ...] = (),
    *,
    devices: Sequence[torch.device],
    timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
) -> Any:
    """Run ``target(parallel, *args)`` in ``world_size`` new processes; rank 0's result.

    ``target`` must be a module-level function (processes are spawned, not forked). Raises
    ``GroupFailed`` with the first failing rank's traceback if any rank raises, dies or
    the group is not done within ``timeout_s``.
    """
    if len(devices) != world_size:
        raise ValueError(f"{len(devices)} devices for {world_size} ranks")
    context = multiprocessing.get_context("spawn")
    reports: multiprocessing.Queue[RankReport] = context.Queue()
    port = free_port()
    level = logging.getLogger().getEffectiveLevel()
    processes = [
        context.Process(
            target=_rank_main,
            args=(rank, world_size, port, devices[rank], target, args, reports, level),
            name=f"headcast-rank{rank}",
        )
        for rank in range(world_size)
    ]
    with child_environment():
        for process in processes:
            process.start()
    try:
        return collect_reports(processes, reports, timeout_s)
    finally:
        for process in processes:
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                process.terminate()
                process.join(JOIN_TIMEOUT_S)


def collect_reports(
    processes: Sequence[multiprocessing.process.BaseProcess],
    reports: multiprocessing.Queue[RankReport],
    timeout_s: float,
) -> Any:
    """Wait for one ``RankReport`` from every rank (``processes[rank]``); rank 0's result.

    Raises ``GroupFailed`` on the first error reported, when a rank dies without
    reporting, or when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    pending = set(range(len(processes)))
    result: Any = None
    while pending:
        if time.monotonic() > deadline:
            raise GroupFailed(f"ranks {sorted(pending)} did not finish within {timeout_s:.0f} s")
        try:
            report: RankReport = reports.get(timeout=POLL_INTERVAL_S)
        except queue.Empty:
            dead = [rank for rank in pending if not processes[rank].is_alive()]
            if dead:  # a report may still be on its way: one more wait, then give up
                try:
                    report = reports.get(timeout=POLL_INTERVAL_S)
                except queue.Empty:
                    codes = {rank: processes[rank].exitcode for rank in dead}
                    raise GroupFailed(
                        f"ranks died without reporting (exit codes {codes})"
                    ) from None
            else:
                continue
        if report.error is not None:
            raise GroupFailed(f"rank {report.rank} failed:\n{report.error}")
        pending.discard(report.rank)
        if report.rank == 0 and report.result is not None:
            result = pickle.loads(report.result)
    return result

"""Which rank of a sequence-parallel engine group this process is, and its collectives.

Owns ``ParallelGroup``: the rank, the group size, the device and the ``torch.distributed``
process group of one worker process of an engine group (N processes, one per GPU, NCCL on
CUDA and gloo on CPU). An engine created with ``parallel=ParallelGroup(...)`` is driven in
lockstep: every rank of the group calls ``load``, ``open_session``, ``step`` and
``close_session`` with the same arguments in the same order; rank 0's results are the
group's results. Knows nothing about sessions, queues or how the processes were started.

Also owns the two collectives the parallel model code uses (``all_to_all`` and
``gather_rows``), both through ``torch.distributed``'s functional collectives, which
``torch.compile`` traces into the graph (the default process group's name when ``group``
is None), and ``even_splits``, the one rule for dividing rows, tokens or heads among ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

if TYPE_CHECKING:
    from torch.distributed.distributed_c10d import GroupName  # a str


@dataclass(frozen=True)
class ParallelGroup:
    """One process's place in an engine group of ``world_size`` ranks."""

    rank: int
    """This process's rank in the group, ``0 <= rank < world_size``; rank 0 answers."""

    world_size: int
    """Processes (devices) in the group; 1 means no parallelism."""

    device: torch.device
    """The device this rank computes on (``cuda:<index>`` or ``cpu``)."""

    group: dist.ProcessGroup | None = None
    """Process group for the tensor collectives (``None``: the default group)."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1}")

    @property
    def is_primary(self) -> bool:
        """True on rank 0, the rank whose results the group hands back."""
        return self.rank == 0

    @property
    def is_parallel(self) -> bool:
        """True when the group has more than one rank (work is split among them)."""
        return self.world_size > 1

    @property
    def group_name(self) -> GroupName:
        """The process group's registered name (what the functional collectives take)."""
        group = self.group if self.group is not None else dist.group.WORLD
        if group is None:
            raise RuntimeError(
                "torch.distributed is not initialised: call init_process_group before "
                "running a parallel engine"
            )
        return group.group_name

    @classmethod
    def single(cls, device: torch.device | str) -> ParallelGroup:
        """A group of one: the process computes everything itself."""
        return cls(rank=0, world_size=1, device=torch.device(device))


def even_splits(total: int, parts: int) -> tuple[int, ...]:
    """``total`` items in ``parts`` contiguous shares differing by at most one, larger first.

    ``even_splits(40, 3) == (14, 13, 13)``; ``even_splits(8, 3) == (3, 3, 2)``.
    """
    if parts < 1 or total < 0:
        raise ValueError(f"cannot split {total} items into {parts} parts")
    base, extra = divmod(total, parts)
    return tuple(base + (1 if index < extra else 0) for index in range(parts))


def split_offsets(sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Start of each share: ``split_offsets((3, 3, 2)) == (0, 3, 6)``."""
    offsets, start = [], 0
    for size in sizes:
        offsets.append(start)
        start += size
    return tuple(offsets)


def all_to_all(
    x: torch.Tensor, output_splits: list[int], input_splits: list[int], group_name: GroupName
) -> torch.Tensor:
    """Exchange the rows (dim 0) of ``x``: ``input_splits[j]`` rows go to rank ``j``, and
    ``output_splits[i]`` rows come from rank ``i``, stacked in rank order (traceable)."""
    out = funcol.all_to_all_single(x.contiguous(), output_splits, input_splits, group_name)
    return _waited(out)


def gather_rows(
    x: torch.Tensor, sizes: tuple[int, ...], dim: int, group_name: GroupName
) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim``; rank ``r`` holds ``sizes[r]`` rows.

    Uneven shares are padded to the largest for the (equal-size) all-gather and cut out
    after it. Returns a view with the gathered dimension at ``dim`` (not contiguous unless
    ``dim`` is 0).
    """
    most = max(sizes)
    local = x.movedim(dim, 0)  # [rows, ...]
    if local.shape[0] not in sizes:
        raise ValueError(f"this rank holds {local.shape[0]} rows, not one of {sizes}")
    if local.shape[0] < most:
        local = torch.cat([local, local.new_zeros(most - local.shape[0], *local.shape[1:])])
    # all_gather_tensor (not all_gather_single, which torch 2.11 lacks): the same gather on dim 0
    gathered = _waited(funcol.all_gather_tensor(local.contiguous(), 0, group_name))
    if any(size != most for size in sizes):
        gathered = torch.cat(
            [gathered[rank * most : rank * most + size] for rank, size in enumerate(sizes)]
        )  # [sum(sizes), ...]
    return gathered.movedim(0, dim)  # [..., sum(sizes), ...]


def _waited(x: torch.Tensor) -> torch.Tensor:
    """The collective's result once it has arrived. Eager collectives return a tensor that
    waits on first use (a view would not wait); under ``torch.compile`` the graph already
    waits, and ``x`` is a plain tensor."""
    return x.wait() if isinstance(x, funcol.AsyncCollectiveTensor) else x

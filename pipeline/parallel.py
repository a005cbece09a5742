"""Which rank of a sequence-parallel engine group this process is.

Owns ``ParallelGroup``: the rank, the group size, the device and the ``torch.distributed``
process group of one worker process of an engine group (N processes, one per GPU, NCCL on
CUDA and gloo on CPU). An engine created with ``parallel=ParallelGroup(...)`` is driven in
lockstep: every rank of the group calls ``load``, ``open_session``, ``step`` and
``close_session`` with the same arguments in the same order; rank 0's results are the
group's results. Knows nothing about sessions, queues or how the processes were started.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


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

    @classmethod
    def single(cls, device: torch.device | str) -> ParallelGroup:
        """A group of one: the process computes everything itself."""
        return cls(rank=0, world_size=1, device=torch.device(device))

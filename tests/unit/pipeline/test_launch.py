"""``pipeline.launch`` on real processes: the environment every rank gets, rank 0's result,
and a failing rank's traceback raised in the parent."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from headcast.pipeline.launch import CHILD_ENV, GroupFailed, group_devices, run_group
from headcast.pipeline.parallel import ParallelGroup

WORLD = 2
TIMEOUT_S = 120.0


def rank_facts(parallel: ParallelGroup) -> dict[str, object]:
    """What rank 0 sees: its place, the environment, and a sum over the group."""
    total = torch.tensor([float(parallel.rank + 1)])
    dist.all_reduce(total)
    return {
        "rank": parallel.rank,
        "world": parallel.world_size,
        "env": {name: os.environ.get(name) for name in CHILD_ENV},
        "sum": float(total),
    }


def fail_on_last_rank(parallel: ParallelGroup) -> None:
    if parallel.rank == parallel.world_size - 1:
        raise ValueError("planned failure of the last rank")


def test_ranks_join_one_group_with_multicast_off() -> None:
    parent_env = {name: os.environ.get(name) for name in CHILD_ENV}
    facts = run_group(WORLD, rank_facts, devices=group_devices(WORLD, "cpu"), timeout_s=TIMEOUT_S)
    assert facts == {"rank": 0, "world": WORLD, "env": CHILD_ENV, "sum": 3.0}
    assert {name: os.environ.get(name) for name in CHILD_ENV} == parent_env  # left as it was


def test_a_failing_rank_raises_its_traceback_here() -> None:
    with pytest.raises(GroupFailed, match="planned failure of the last rank"):
        run_group(
            WORLD, fail_on_last_rank, devices=group_devices(WORLD, "cpu"), timeout_s=TIMEOUT_S
        )

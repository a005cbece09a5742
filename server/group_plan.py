"""Which engine groups a server runs, on which devices: settings in, a list of plans out.

Owns ``GroupPlan`` (one group: its index, one device per rank, and whether it runs inside the
server process) and ``plan_groups``, the rule:

- ``gpus`` unset: every visible GPU for the diffusion engines; the puppet (which never uses a
  GPU), and any engine on a host without CUDA, gets one group on the CPU;
- ``gpus`` set: CUDA devices ``cuda:<index>`` where the engine uses CUDA, otherwise CPU
  worker slots (``cpu``, one worker process per index: groups anywhere, e.g. in CI);
- groups are consecutive runs of ``gpus_per_session`` devices, ``len(gpus) //
  gpus_per_session`` of them;
- exactly one group of one device runs in the server process on the engine thread (as a
  single-device server always did: no process start, no frame copy); any other layout runs
  every group as worker processes, so a crash takes down one group only.

``PlanError`` says what to change. Knows nothing about starting anything; the only thing it
asks the machine is how many CUDA devices torch sees (``visible_cuda_devices``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from headcast.server.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

CPU_DEVICE = "cpu"
GPU_ENGINES = frozenset({"tiny", "flashtalk", "omniavatar"})
"""Engines that compute on a CUDA device when there is one (the puppet never does)."""


class PlanError(SettingsError):
    """The settings ask for groups this host cannot form; the message says what to change."""


@dataclass(frozen=True)
class GroupPlan:
    """One engine group to start."""

    index: int
    """The group's number: its ``group`` label in /metrics and its place in /readyz."""

    devices: tuple[str, ...]
    """One torch device per rank: ``"cuda:<index>"`` or ``"cpu"`` (a CPU worker slot)."""

    in_process: bool
    """Run on the engine thread of the server process instead of worker processes."""

    @property
    def size(self) -> int:
        """Ranks in the group (``gpus_per_session``)."""
        return len(self.devices)


def visible_cuda_devices(engine: str) -> int:
    """CUDA devices torch sees, or 0 for an engine that never uses one (no torch import)."""
    if engine not in GPU_ENGINES:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_groups(settings: Settings, cuda_devices: int) -> list[GroupPlan]:
    """The groups ``settings`` ask for on a host where torch sees ``cuda_devices`` GPUs."""
    size = settings.gpus_per_session
    on_cuda = settings.engine in GPU_ENGINES and cuda_devices > 0
    indexes = settings.gpus
    if indexes is None:
        if not on_cuda:
            if size > 1:
                raise PlanError(
                    f"gpus_per_session is {size} but there is no GPU for the {settings.engine} "
                    f"engine; list {size} CPU worker slots (e.g. gpus: "
                    f"{list(range(size))}) to run a group of {size} processes on the CPU"
                )
            return [GroupPlan(0, (CPU_DEVICE,), in_process=True)]
        indexes = list(range(cuda_devices))
        idle = indexes[len(indexes) - len(indexes) % size :]
        if len(indexes) < size:
            raise PlanError(
                f"gpus_per_session is {size} but torch sees {cuda_devices} GPU(s); lower "
                "gpus_per_session or run on a host with more GPUs"
            )
        if idle:
            logger.warning(
                "GPU(s) %s stay idle: %d visible GPUs do not divide into groups of %d",
                idle, cuda_devices, size,
            )  # fmt: skip
            indexes = indexes[: len(indexes) - len(idle)]
    elif on_cuda:
        missing = [index for index in indexes if index >= cuda_devices]
        if missing:
            raise PlanError(
                f"gpus lists device(s) {missing} but torch sees {cuda_devices} GPU(s) "
                f"(0..{cuda_devices - 1}); check gpus and CUDA_VISIBLE_DEVICES"
            )
    devices = [f"cuda:{index}" if on_cuda else CPU_DEVICE for index in indexes]
    groups = [tuple(devices[start : start + size]) for start in range(0, len(devices), size)]
    in_process = len(groups) == 1 and size == 1
    return [GroupPlan(index, group, in_process) for index, group in enumerate(groups)]

"""Stage timers for one chunk: CUDA events on the GPU, the host clock on the CPU.

Owns: the ``StageTimer`` interface (``mark(stage)`` closes the stage that began at the
previous mark; ``read()`` returns seconds per stage once the work is done), its two
implementations, and ``stage_timer(device)`` which picks one. On CUDA a mark records an
event on the current stream and never waits: the events are read after the chunk's frames
reached the host, so timing adds no synchronisation to the hot path. Stage times on the GPU
are device-timeline times (the time between the events as the stream reached them).

Knows nothing about models, chunks or which stages exist.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import torch

from headcast.pipeline.media import MS_PER_S


class StageTimer(ABC):
    """Times consecutive stages: ``start()``, then ``mark(name)`` at the end of each stage."""

    @abstractmethod
    def start(self) -> None:
        """Open the first stage (idempotent only before the first mark)."""

    @abstractmethod
    def mark(self, stage: str) -> None:
        """Close the stage that began at the previous mark (or ``start``) and name it."""

    @abstractmethod
    def read(self) -> dict[str, float]:
        """Seconds per stage, in mark order; call once the timed work has finished.

        Stages marked twice under one name are summed.
        """


class HostStageTimer(StageTimer):
    """``time.perf_counter`` marks: right for CPU work, which runs synchronously."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._stages: dict[str, float] = {}

    def start(self) -> None:
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        if self._last is None:
            raise RuntimeError("StageTimer.mark() before start()")
        self._stages[stage] = self._stages.get(stage, 0.0) + (now - self._last)
        self._last = now

    def read(self) -> dict[str, float]:
        return dict(self._stages)


class CudaStageTimer(StageTimer):
    """CUDA events recorded on the current stream; read after the work is done.

    ``read()`` waits for the last event only (the chunk's frames are already on the host
    by then, so it returns at once in the generator).
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._start: torch.cuda.Event | None = None
        self._marks: list[tuple[str, torch.cuda.Event]] = []

    def _record(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]  # unannotated in torch
        event.record(torch.cuda.current_stream(self._device))
        return event

    def start(self) -> None:
        self._start = self._record()

    def mark(self, stage: str) -> None:
        if self._start is None:
            raise RuntimeError("StageTimer.mark() before start()")
        self._marks.append((stage, self._record()))

    def read(self) -> dict[str, float]:
        if self._start is None or not self._marks:
            return {}
        self._marks[-1][1].synchronize()
        stages: dict[str, float] = {}
        previous = self._start
        for stage, event in self._marks:
            seconds = previous.elapsed_time(event) / MS_PER_S
            stages[stage] = stages.get(stage, 0.0) + seconds
            previous = event
        return stages


def stage_timer(device: torch.device | str) -> StageTimer:
    """The right timer for work on ``device``: CUDA events on a GPU, the host clock elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return CudaStageTimer(device)
    return HostStageTimer()

"""Fixtures for session tests: a real engine worker around ``FakeEngine``, a fast clock, and
a scripted inbound audio track."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from headcast.pipeline.engine import EngineWorker
from tests.conftest import FakeEngine

WORKER_READY_TIMEOUT_S = 10.0
FAST_CLOCK_SPEED = 5.0
"""Media seconds per wall second in session tests (a 1.12 s chunk takes 0.224 s)."""


class FastClock:
    """A ``WallClock`` running ``speed`` times faster than the event loop's clock."""

    def __init__(self, speed: float = FAST_CLOCK_SPEED) -> None:
        self.speed = speed
        self._loop = asyncio.get_running_loop()
        self._origin = self._loop.time()

    def now(self) -> float:
        return self._origin + (self._loop.time() - self._origin) * self.speed

    async def sleep_until(self, deadline: float) -> None:
        delay = (deadline - self.now()) / self.speed
        if delay > 0:
            await asyncio.sleep(delay)


class ScriptedAudioTrack:
    """Yields ``count`` 20 ms frames of 48 kHz stereo s16 silence, then ends like a closed
    track (what aiortc's decoder hands over for a browser microphone)."""

    kind = "audio"

    def __init__(self, count: int) -> None:
        self._left = count
        self._pts = 0
        self.received = 0

    async def recv(self) -> av.AudioFrame:
        if self._left == 0:
            raise MediaStreamError
        self._left -= 1
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960 * 2), dtype=np.int16), format="s16", layout="stereo"
        )
        frame.sample_rate = 48_000
        frame.pts = self._pts
        self._pts += 960
        self.received += 1
        return frame


@pytest.fixture
def start_worker() -> Iterator[Callable[[FakeEngine], EngineWorker]]:
    """``start_worker(engine)``: a started, ready ``EngineWorker``, shut down after the test."""
    workers: list[EngineWorker] = []

    def start(engine: FakeEngine) -> EngineWorker:
        worker = EngineWorker(engine)
        worker.start()
        worker.wait_ready(WORKER_READY_TIMEOUT_S)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.shutdown()

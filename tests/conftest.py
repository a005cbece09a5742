"""Shared test fixtures: a scripted stand-in engine, the artifacts folder, the CI soak.

``FakeEngine`` implements ``pipeline.engine.Engine`` with flat grey frames whose level
encodes the chunk index, and can be told to fail, block or refuse to load -- the engine
behaviours the streaming and server layers must survive, produced on demand. It runs on the
real ``EngineWorker`` thread; only the model is replaced.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from headcast.pipeline.media import CHUNK_FRAMES, Avatar, Chunk, ChunkJob, PreparationStep, Reseed
from headcast.streaming.ice import HostCandidatePolicy, host_candidates

REPO_ROOT = Path(__file__).resolve().parent.parent
GATE_TIMEOUT_S = 30.0
"""Longest a gated engine step or load waits for the test to open the gate, in seconds."""


def grey_level(index: int) -> int:
    """The grey level ``FakeEngine`` paints chunk ``index`` with (distinct for 6 chunks)."""
    return 30 + 40 * (index % 6)


@dataclass
class FakeState:
    avatar: str
    jobs: list[ChunkJob] = field(default_factory=list)
    reseeds: list[tuple[int, Reseed]] = field(default_factory=list)
    """(jobs stepped before it, the re-seed), in order."""


class FakeEngine:
    """A scripted engine: grey frames, plus failures, gates and load errors on request."""

    name = "fake"
    description = "test engine: flat grey frames whose level encodes the chunk index"
    warmup_rtf: float | None = None

    def __init__(
        self,
        height: int = 96,
        width: int = 64,
        *,
        fail_on: Iterable[int] = (),
        gates: dict[int, threading.Event] | None = None,
        load_gate: threading.Event | None = None,
        load_error: Exception | None = None,
        prepare_error: Exception | None = None,
    ) -> None:
        self.height = height
        self.width = width
        self.fail_on = set(fail_on)
        self.gates = gates or {}
        self.load_gate = load_gate
        self.load_error = load_error
        self.prepare_error = prepare_error
        self.sessions: list[FakeState] = []
        self.closed: list[FakeState] = []

    def load(self) -> None:
        if self.load_gate is not None and not self.load_gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the test never opened the load gate")
        if self.load_error is not None:
            raise self.load_error

    def open_session(self, avatar: Avatar, seed: int) -> FakeState:
        if self.prepare_error is not None:
            raise self.prepare_error
        state = FakeState(avatar.name)
        self.sessions.append(state)
        return state

    def step(self, state: FakeState, job: ChunkJob) -> Chunk:
        state.jobs.append(job)
        gate = self.gates.get(job.index)
        if gate is not None and not gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError(f"the test never opened the gate of chunk {job.index}")
        if job.index in self.fail_on:
            raise RuntimeError(f"scripted failure of chunk {job.index}")
        frames = np.full(
            (CHUNK_FRAMES, self.height, self.width, 3), grey_level(job.index), dtype=np.uint8
        )
        return Chunk(index=job.index, frames=frames, audio=job.audio, compute_seconds=0.01)

    def reseed(self, state: FakeState, reseed: Reseed) -> None:
        state.reseeds.append((len(state.jobs), reseed))

    def close_session(self, state: FakeState) -> None:
        self.closed.append(state)

    avatar_cache_evictions = 0

    def prepare_avatar(self, avatar: Avatar) -> Iterator[PreparationStep]:
        """One step; the assets are the picture's mean colour."""
        if self.prepare_error is not None:
            raise self.prepare_error
        yield PreparationStep(1.0, {"mean": avatar.image.mean(axis=(0, 1))})


SUITE_NICENESS = 5
"""Niceness the test process takes while the CI soak runs beside it (see ``ci_soak``)."""


@pytest.fixture
def make_fake_engine() -> Callable[..., FakeEngine]:
    """``make_fake_engine(**options) -> FakeEngine`` (see ``FakeEngine``)."""
    return FakeEngine


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``<repo>/artifacts`` (git-ignored), created: where tests leave measurements."""
    path = REPO_ROOT / "artifacts"
    path.mkdir(exist_ok=True)
    return path


async def client_offer(*, video: bool = True) -> str:
    """A real aiortc offer as a client sends it: sendrecv audio (and recvonly video), ICE
    gathered on 127.0.0.1."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        if video:
            pc.addTransceiver("video", direction="recvonly")
        with host_candidates(HostCandidatePolicy(loopback_only=True)):
            await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


@pytest.fixture(scope="session", autouse=True)
def ci_soak(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    artifacts_dir: Path,
) -> Iterator[object]:
    """The CI soak in the background from the first test on, when ``test_soak.py`` is
    selected (``tests/integration/soak_background.py``); ``None`` otherwise.

    Once the soak runs, the test process lowers its own priority (``SUITE_NICENESS``): what it
    starts from then on (servers, browsers) inherits it, so the soak's servers and clients
    keep the CPU they need for its timing checks while the unit tests run beside it.
    """
    # Imported here: soak_background imports the integration conftest, which imports this.
    from tests.integration.soak_background import SOAK_TEST, start_soak

    if not any(item.nodeid.startswith(SOAK_TEST) for item in request.session.items):
        yield None
        return
    with start_soak(tmp_path_factory.mktemp("soak-server"), artifacts_dir / "soak-ci") as soak:
        os.nice(SUITE_NICENESS)
        yield soak

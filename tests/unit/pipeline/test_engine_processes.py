"""Engine groups as worker processes (pipeline/engine_processes.py, pipeline/group_worker.py).

Real processes, real sockets, real gloo: a group of one CPU worker and a group of two gloo
ranks run the puppet behind the ordinary ``EngineWorker`` and hand back exactly the frames
the in-process puppet draws, and prepare an avatar (every rank in lockstep) into exactly the
in-process puppet's assets, which a later session on the group animates; a rank killed with
SIGKILL fails its group with the cause named
and every later chunk fails as a value; a bad option fails loading with the engine's own
message; a stopped group's processes leave by themselves; a re-seed runs on every rank in
lockstep. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from headcast.pipeline.engine import (
    ChunkFailure,
    EngineGroupFailed,
    EngineNotReady,
    EngineWorker,
    SessionHandle,
)
from headcast.pipeline.engine_options import PuppetOptions
from headcast.pipeline.engine_processes import ProcessGroupEngine, describe_exit
from headcast.pipeline.media import (
    CHUNK_SAMPLES,
    RESEED_FRAMES,
    Avatar,
    AvatarAssets,
    Chunk,
    ChunkJob,
    Reseed,
)
from headcast.pipeline.puppet import PuppetEngine
from tests.unit.pipeline.test_engine import Inbox

HEIGHT, WIDTH = 96, 64
LOAD_WAIT_S = 120.0
"""Longest wait for a group to start (two ranks import torch; the CPU is shared)."""
WAIT_S = 30.0
SEED = 7


def _speech(index: int) -> ChunkJob:
    t = np.arange(CHUNK_SAMPLES, dtype=np.float32) / 16_000
    audio = (0.5 * np.sin(2 * np.pi * (150 + 50 * index) * t)).astype(np.float32)  # [17920]
    return ChunkJob(index=index, audio=audio)


def _reference(avatar: Avatar, jobs: list[ChunkJob]) -> list[np.ndarray]:
    """The frames the in-process puppet draws for ``jobs``."""
    puppet = PuppetEngine(height=HEIGHT, width=WIDTH)
    puppet.load()
    state = puppet.open_session(avatar, SEED)
    return [puppet.step(state, job).frames for job in jobs]


def _start(devices: list[str], **options: object) -> tuple[EngineWorker, ProcessGroupEngine]:
    engine = ProcessGroupEngine(
        engine="puppet",
        options=PuppetOptions(height=HEIGHT, width=WIDTH),
        devices=devices,
        group=3,
        **options,  # type: ignore[arg-type]
    )
    worker = EngineWorker(engine, device_name="group3")
    worker.start()
    return worker, engine


@pytest.fixture
def groups() -> Iterator[list[tuple[EngineWorker, ProcessGroupEngine]]]:
    started: list[tuple[EngineWorker, ProcessGroupEngine]] = []
    yield started
    for worker, engine in started:
        worker.shutdown(WAIT_S)
        engine.stop()


def _open(worker: EngineWorker, avatar: Avatar, inbox: Inbox, size: int = 4) -> SessionHandle:
    prepared = threading.Event()
    errors: list[BaseException | None] = []
    handle = worker.open_session(
        avatar,
        notify=inbox.notify,
        seed=SEED,
        mailbox_size=size,
        done=lambda error: (errors.append(error), prepared.set()),
    )
    assert prepared.wait(WAIT_S) and errors == [None], errors
    return handle


def _prepare(worker: EngineWorker, avatar: Avatar) -> AvatarAssets:
    """``avatar``'s assets, prepared on ``worker`` (bounded wait)."""
    finished = threading.Event()
    outcome: list[tuple[AvatarAssets | None, BaseException | None]] = []
    worker.prepare_avatar(
        avatar, done=lambda assets, error: (outcome.append((assets, error)), finished.set())
    )
    assert finished.wait(WAIT_S), "the preparation did not finish"
    ((assets, error),) = outcome
    assert error is None and assets is not None, error
    return assets


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"]], ids=["1-rank", "2-gloo-ranks"])
def test_a_process_group_hands_back_the_in_process_frames(
    devices: list[str], groups: list[tuple[EngineWorker, ProcessGroupEngine]]
) -> None:
    worker, engine = _start(devices)
    groups.append((worker, engine))
    worker.wait_ready(LOAD_WAIT_S)
    assert len(engine.pids) == len(devices) and os.getpid() not in engine.pids
    assert engine.description.startswith("puppet")
    assert engine.warmup_rtf is None  # the puppet measures none
    avatar = PuppetEngine(height=HEIGHT, width=WIDTH).default_avatar()
    jobs = [_speech(index) for index in range(3)]
    inbox = Inbox()
    handle = _open(worker, avatar, inbox)
    for job in jobs:
        handle.submit(job)
    got = inbox.collect(handle, len(jobs), timeout=WAIT_S)
    for chunk, job, frames in zip(got, jobs, _reference(avatar, jobs), strict=True):
        assert isinstance(chunk, Chunk), chunk
        assert chunk.index == job.index and chunk.compute_seconds > 0
        np.testing.assert_array_equal(chunk.frames, frames)
        np.testing.assert_array_equal(chunk.audio, job.audio)
    handle.close()

    photo = np.full((HEIGHT, WIDTH, 3), (150, 120, 100), dtype=np.uint8)
    added = Avatar(name="added", image=photo)
    assets = _prepare(worker, added)
    puppet = PuppetEngine(height=HEIGHT, width=WIDTH)
    puppet.load()
    (expected,) = (step.assets for step in puppet.prepare_avatar(added))
    assert expected is not None and assets.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(assets[name], array)
    stored = Avatar(name="added", image=photo, assets=assets)
    handle = _open(worker, stored, inbox)
    handle.submit(jobs[0])
    (chunk,) = inbox.collect(handle, 1, timeout=WAIT_S)
    assert isinstance(chunk, Chunk)
    np.testing.assert_array_equal(chunk.frames, _reference(added, jobs[:1])[0])
    handle.close()

    processes = list(engine.pids)
    worker.shutdown(WAIT_S)
    engine.stop()
    for pid in processes:  # reaped: a stopped group leaves no process behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_killed_rank_fails_its_group_and_says_why(
    groups: list[tuple[EngineWorker, ProcessGroupEngine]],
) -> None:
    reasons: list[str] = []
    failed = threading.Event()

    def on_failure(reason: str) -> None:
        reasons.append(reason)
        failed.set()

    worker, engine = _start(["cpu", "cpu"], on_failure=on_failure)
    groups.append((worker, engine))
    worker.wait_ready(LOAD_WAIT_S)
    inbox = Inbox()
    handle = _open(worker, PuppetEngine(height=HEIGHT, width=WIDTH).default_avatar(), inbox)
    handle.submit(_speech(0))
    assert isinstance(inbox.collect(handle, 1)[0], Chunk)

    rank0, rank1 = engine.pids
    os.kill(rank1, signal.SIGKILL)
    assert failed.wait(WAIT_S), "the group did not notice its dead rank"
    assert len(reasons) == 1
    assert f"worker rank 1 (pid {rank1}, cpu) was killed by SIGKILL while serving" in reasons[0]
    assert engine.failure == reasons[0]
    with pytest.raises(ProcessLookupError):  # the other rank was taken down with it
        os.kill(rank0, 0)

    handle.submit(_speech(1))
    (failure,) = inbox.collect(handle, 1)
    assert isinstance(failure, ChunkFailure) and isinstance(failure.error, EngineGroupFailed)
    assert "SIGKILL" in failure.message
    with pytest.raises(EngineGroupFailed):
        engine.open_session(PuppetEngine().default_avatar(), 0)


def test_a_load_error_names_the_engine_s_complaint(
    groups: list[tuple[EngineWorker, ProcessGroupEngine]],
) -> None:
    engine = ProcessGroupEngine(
        engine="puppet", options=PuppetOptions(height=8, width=8), devices=["cpu"], group=3
    )
    worker = EngineWorker(engine, device_name="group3")
    groups.append((worker, engine))
    worker.start()
    with pytest.raises(EngineNotReady, match=r"group 3 failed to load: rank 0: .*16x16"):
        worker.wait_ready(LOAD_WAIT_S)
    assert engine.failure is None  # a load error is not a crash


def test_exit_causes_read_as_sentences() -> None:
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


def test_a_re_seed_runs_on_every_rank_in_lockstep(
    groups: list[tuple[EngineWorker, ProcessGroupEngine]],
) -> None:
    """A job's re-seed crosses to the ranks as its own request, runs on each, and the chunk
    after it equals the in-process puppet's after the same re-seed; a re-seed that fails
    (frames of another size) fails that chunk only, and the group goes on."""
    worker, engine = _start(["cpu", "cpu"])
    groups.append((worker, engine))
    worker.wait_ready(LOAD_WAIT_S)
    avatar = PuppetEngine(height=HEIGHT, width=WIDTH).default_avatar()
    shown = _reference(avatar, [_speech(0)])[0][10:15]  # [5, H, W, 3]
    reseed = Reseed(shown.copy(), 2 * CHUNK_SAMPLES)
    wrong_size = Reseed(np.zeros((RESEED_FRAMES, 4, 4, 3), np.uint8), 0)
    jobs = [
        _speech(0),
        replace(_speech(1), reseed=reseed),
        replace(_speech(2), reseed=wrong_size),
        _speech(3),
    ]
    inbox = Inbox()
    handle = _open(worker, avatar, inbox)
    for job in jobs:
        handle.submit(job)
    got = inbox.collect(handle, len(jobs), timeout=WAIT_S)
    puppet = PuppetEngine(height=HEIGHT, width=WIDTH)
    puppet.load()
    state = puppet.open_session(avatar, SEED)
    expected = [puppet.step(state, _speech(0)).frames]
    puppet.reseed(state, reseed)
    expected.append(puppet.step(state, _speech(1)).frames)
    expected.append(puppet.step(state, _speech(3)).frames)  # chunk 2 failed on every rank

    assert isinstance(got[2], ChunkFailure) and "puppet's size" in got[2].message, got[2]
    for chunk, frames in zip([got[0], got[1], got[3]], expected, strict=True):
        assert isinstance(chunk, Chunk), chunk
        np.testing.assert_array_equal(chunk.frames, frames)
    assert engine.failure is None
    handle.close()

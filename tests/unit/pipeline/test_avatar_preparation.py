"""Avatar preparation on the device thread (pipeline/engine.py) and in the engines.

The device thread runs a preparation's steps only while no session job waits: a chunk
submitted while a preparation is under way waits for one step at most. A failing,
cancelled or interrupted (engine stopped) preparation reports its error and leaves the
sessions alone. The puppet's and the tiny diffusion engine's assets bring a session back
to exactly the frames of one prepared from the picture, and their bounded device caches
count evictions. Every wait is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from headcast.pipeline.avatar_cache import AvatarCache
from headcast.pipeline.engine import EngineWorker, PreparationCancelled
from headcast.pipeline.media import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    Avatar,
    AvatarAssets,
    Chunk,
    ChunkJob,
    PreparationStep,
)
from headcast.pipeline.puppet import PuppetEngine
from tests.unit.pipeline.test_engine import Inbox

WAIT_S = 10.0
PREPARATION_STEPS = 4
SIZE_PX = 4


class SteppedEngine:
    """Records the order of its chunk steps and preparation steps; a gate holds a chunk."""

    name = "stepped"
    description = "records the device thread's order of work"
    height = SIZE_PX
    width = SIZE_PX
    warmup_rtf: float | None = None
    avatar_cache_evictions = 0

    def __init__(self) -> None:
        self.order: list[str] = []
        self.gate = threading.Event()
        self.chunk_started = threading.Event()
        self.closed_preparations = 0

    def load(self) -> None:
        return None

    def open_session(self, avatar: Avatar, seed: int) -> dict[str, Any]:
        return {"name": avatar.name}

    def step(self, state: dict[str, Any], job: ChunkJob) -> Chunk:
        self.chunk_started.set()
        if job.index == 0:
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        self.order.append(f"chunk{job.index}")
        frames = np.zeros((CHUNK_FRAMES, SIZE_PX, SIZE_PX, 3), dtype=np.uint8)
        return Chunk(index=job.index, frames=frames, audio=job.audio)

    def close_session(self, state: dict[str, Any]) -> None:
        return None

    def prepare_avatar(self, avatar: Avatar) -> Iterator[PreparationStep]:
        try:
            for number in range(1, PREPARATION_STEPS):
                if avatar.name == "broken" and number == 2:
                    raise RuntimeError("step 2 of this avatar fails")
                self.order.append(f"{avatar.name}-step{number}")
                yield PreparationStep(number / PREPARATION_STEPS)
            self.order.append(f"{avatar.name}-done")
            yield PreparationStep(1.0, {"mean": avatar.image.mean(axis=(0, 1))})
        finally:
            self.closed_preparations += 1


class Outcome:
    """A preparation's progress reports and its one outcome (bounded wait)."""

    def __init__(self) -> None:
        self.progress: list[float] = []
        self.done = threading.Event()
        self.results: list[tuple[AvatarAssets | None, BaseException | None]] = []

    def finish(self, assets: AvatarAssets | None, error: BaseException | None) -> None:
        self.results.append((assets, error))
        self.done.set()

    def wait(self) -> tuple[AvatarAssets | None, BaseException | None]:
        assert self.done.wait(WAIT_S), "the preparation never finished"
        (result,) = self.results
        return result


def photo(name: str) -> Avatar:
    return Avatar(name=name, image=np.full((8, 8, 3), 100, dtype=np.uint8))


def job(index: int) -> ChunkJob:
    return ChunkJob(index=index, audio=np.zeros(CHUNK_SAMPLES, dtype=np.float32))


@pytest.fixture
def stepped() -> Iterator[tuple[EngineWorker, SteppedEngine]]:
    engine = SteppedEngine()
    worker = EngineWorker(engine, device_name="stepped")
    worker.start()
    worker.wait_ready(WAIT_S)
    yield worker, engine
    engine.gate.set()
    worker.shutdown(WAIT_S)


def prepare(worker: EngineWorker, avatar: Avatar) -> Outcome:
    outcome = Outcome()
    worker.prepare_avatar(avatar, done=outcome.finish, on_progress=outcome.progress.append)
    return outcome


def test_waiting_chunks_go_before_the_steps_of_a_preparation(
    stepped: tuple[EngineWorker, SteppedEngine],
) -> None:
    worker, engine = stepped
    inbox = Inbox()
    handle = worker.open_session(photo("live"), notify=inbox.notify)
    handle.submit(job(0))
    assert engine.chunk_started.wait(WAIT_S)  # chunk 0 holds the device thread
    outcome = prepare(worker, photo("face"))
    handle.submit(job(1))
    handle.submit(job(2))
    engine.gate.set()
    assets, error = outcome.wait()
    inbox.collect(handle, 3)
    assert error is None and assets is not None
    np.testing.assert_array_equal(assets["mean"], [100.0, 100.0, 100.0])
    # The chunks queued behind the preparation still ran first; then every step in order.
    assert engine.order == [
        "chunk0", "chunk1", "chunk2", "face-step1", "face-step2", "face-step3", "face-done",
    ]  # fmt: skip
    assert outcome.progress == [0.25, 0.5, 0.75]
    handle.close()


def test_a_chunk_submitted_during_a_preparation_waits_one_step_at_most(
    stepped: tuple[EngineWorker, SteppedEngine],
) -> None:
    worker, engine = stepped
    engine.gate.set()
    inbox = Inbox()
    handle = worker.open_session(photo("live"), notify=inbox.notify)
    stepped_once = threading.Event()
    outcome = Outcome()

    def progress(fraction: float) -> None:
        if fraction == 0.25:
            handle.submit(job(1))  # from the device thread, right after step 1
            stepped_once.set()

    worker.prepare_avatar(photo("face"), done=outcome.finish, on_progress=progress)
    outcome.wait()
    assert stepped_once.is_set()
    inbox.collect(handle, 1)
    assert engine.order.index("chunk1") == engine.order.index("face-step1") + 1
    handle.close()


def test_a_failing_preparation_reports_its_error_and_sessions_go_on(
    stepped: tuple[EngineWorker, SteppedEngine],
) -> None:
    worker, engine = stepped
    engine.gate.set()
    outcome = prepare(worker, photo("broken"))
    assets, error = outcome.wait()
    assert assets is None and isinstance(error, RuntimeError) and "step 2" in str(error)
    inbox = Inbox()
    handle = worker.open_session(photo("live"), notify=inbox.notify)
    handle.submit(job(1))
    (chunk,) = inbox.collect(handle, 1)
    assert isinstance(chunk, Chunk)
    assert prepare(worker, photo("next")).wait()[1] is None  # and later ones still work
    handle.close()


def test_a_cancelled_preparation_stops_before_its_next_step(
    stepped: tuple[EngineWorker, SteppedEngine],
) -> None:
    worker, engine = stepped
    outcome = Outcome()
    preparation: list[Any] = []

    def progress(fraction: float) -> None:
        preparation[0].cancel()  # cancelled right after its first step

    preparation.append(
        worker.prepare_avatar(photo("face"), done=outcome.finish, on_progress=progress)
    )
    assets, error = outcome.wait()
    assert assets is None and isinstance(error, PreparationCancelled)
    assert engine.order == ["face-step1"]
    assert engine.closed_preparations == 1  # the engine's generator was closed


def test_stopping_the_engine_ends_a_waiting_preparation_with_a_cancel(
    stepped: tuple[EngineWorker, SteppedEngine],
) -> None:
    worker, engine = stepped
    inbox = Inbox()
    handle = worker.open_session(photo("live"), notify=inbox.notify)
    handle.submit(job(0))
    assert engine.chunk_started.wait(WAIT_S)
    outcome = prepare(worker, photo("face"))
    stopper = threading.Thread(target=worker.shutdown, args=(WAIT_S,))
    stopper.start()
    engine.gate.set()
    stopper.join(WAIT_S)
    assets, error = outcome.wait()
    assert assets is None and isinstance(error, PreparationCancelled)


def test_the_avatar_cache_drops_the_least_recently_used_and_counts() -> None:
    cache: AvatarCache[int] = AvatarCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.evictions == 1 and len(cache) == 2
    with pytest.raises(ValueError, match="at least 1"):
        AvatarCache(0)


def _speech(index: int) -> ChunkJob:
    t = np.arange(CHUNK_SAMPLES, dtype=np.float32) / 16_000
    return ChunkJob(index, (0.4 * np.sin(2 * np.pi * 140 * t)).astype(np.float32))


def test_puppet_assets_bring_back_the_same_frames_and_evictions_are_counted() -> None:
    height, width = 96, 64
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    maker = PuppetEngine(height=height, width=width)
    maker.load()
    (last,) = list(maker.prepare_avatar(Avatar("photo", picture)))
    assert last.progress == 1.0 and last.assets is not None
    fresh = PuppetEngine(height=height, width=width)
    fresh.load()
    stored = Avatar("photo", np.zeros_like(picture), assets=last.assets)  # image unused
    computed = maker.step(maker.open_session(Avatar("photo", picture), 5), _speech(0))
    restored = fresh.step(fresh.open_session(stored, 5), _speech(0))
    np.testing.assert_array_equal(restored.frames, computed.frames)
    for number in range(5):  # the cache holds 4: the fifth drops one
        fresh.open_session(Avatar(f"other{number}", picture), 0)
    assert fresh.avatar_cache_evictions >= 1
    wrong = Avatar(
        "wrong",
        picture,
        assets={
            "background": np.zeros((8, 8, 3), np.uint8),
            "lid_colours": np.zeros((2, 3), np.float32),
        },
    )
    with pytest.raises(ValueError, match="prepare it again"):
        fresh.open_session(wrong, 0)


def test_tiny_assets_bring_back_the_same_chunk_without_computing_again() -> None:
    from headcast.pipeline.diffusion_engine import tiny_engine
    from headcast.pipeline.engine_options import TinyOptions

    height, width = 64, 32
    picture = np.random.default_rng(4).integers(0, 255, (height, width, 3), dtype=np.uint8)
    maker = tiny_engine(TinyOptions(height=height, width=width))
    maker.load()
    steps = list(maker.prepare_avatar(Avatar("photo", picture)))
    assert [step.assets is None for step in steps] == [True] * (len(steps) - 1) + [False]
    progress = [step.progress for step in steps]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(steps) > 3
    assets = steps[-1].assets
    assert assets is not None and {"context", "clip_fea", "y", "first_motion"} <= assets.keys()
    computed = maker.step(maker.open_session(Avatar("photo", picture), 9), _speech(0))

    fresh = tiny_engine(TinyOptions(height=height, width=width))
    fresh.load()
    generator = fresh.generator
    assert generator is not None
    encoders_used: list[str] = []
    generator.encoders.encode_image = lambda image: encoders_used.append("clip")  # type: ignore[method-assign]
    restored = fresh.step(
        fresh.open_session(Avatar("photo", picture, assets=assets), 9), _speech(0)
    )
    assert encoders_used == []  # nothing of the conditioning was computed again
    np.testing.assert_array_equal(restored.frames, computed.frames)
    assert fresh.avatar_cache_evictions == 0

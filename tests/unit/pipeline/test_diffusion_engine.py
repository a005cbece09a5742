"""The ``tiny`` engine through the device thread: same frames as calling ``step`` directly."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from headcast.pipeline.avatar_art import DEFAULT_AVATAR_NAME, draw_default_avatar
from headcast.pipeline.diffusion_engine import WARMUP_CHUNKS, DiffusionEngine
from headcast.pipeline.engine import Chunk, EngineWorker, default_registry
from headcast.pipeline.engine_options import TinyOptions
from headcast.pipeline.generator import resize_video
from headcast.pipeline.media import CHUNK_SAMPLES, CHUNK_SECONDS, Avatar, ChunkJob

CHUNKS = 3
WAIT_S = 300.0
SEED = 5


def _speech(chunks: int) -> np.ndarray:
    t = np.arange(chunks * CHUNK_SAMPLES) / 16_000
    envelope = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float32)
    return (0.4 * envelope * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def engine() -> DiffusionEngine:
    engine = default_registry().create("tiny", TinyOptions(height=224, width=128))
    assert isinstance(engine, DiffusionEngine)
    assert "noise" in engine.description, "the tiny engine must say its pictures are noise"
    return engine


def test_chunks_through_the_engine_thread_equal_direct_steps(engine: DiffusionEngine) -> None:
    avatar = Avatar(DEFAULT_AVATAR_NAME, draw_default_avatar(256, 160))
    audio = _speech(CHUNKS)
    jobs = [ChunkJob(i, audio[i * CHUNK_SAMPLES : (i + 1) * CHUNK_SAMPLES]) for i in range(CHUNKS)]
    worker = EngineWorker(engine)
    worker.start()
    try:
        worker.wait_ready(WAIT_S)
        assert engine.warmup_rtf is not None and engine.warmup_rtf > 0
        arrived = threading.Event()
        handle = worker.open_session(avatar, notify=arrived.set, seed=SEED, mailbox_size=CHUNKS)
        for job in jobs:
            handle.submit(job)
        threaded: list[Chunk] = []
        while len(threaded) < CHUNKS:
            assert arrived.wait(WAIT_S), f"only {len(threaded)} of {CHUNKS} chunks arrived"
            arrived.clear()
            while (item := handle.mailbox.get_nowait()) is not None:
                assert isinstance(item, Chunk), item
                threaded.append(item)
        handle.close()
    finally:
        worker.shutdown()
    state = engine.open_session(avatar, SEED)  # the device thread is gone: safe to call here
    direct = [engine.step(state, job) for job in jobs]
    for a, b in zip(threaded, direct, strict=True):
        assert a.index == b.index
        assert a.frames.shape == (28, 224, 128, 3)
        assert np.array_equal(a.frames, b.frames), f"chunk {a.index} differs"
        assert np.array_equal(a.audio, b.audio)


def test_resize_video_keeps_equal_sizes_and_scales_others() -> None:
    video = torch.rand(3, 2, 8, 4) * 2 - 1  # [3, T, h, w] in [-1, 1]
    assert resize_video(video, None) is video
    assert resize_video(video, (8, 4)) is video
    scaled = resize_video(video, (16, 8))
    assert scaled.shape == (3, 2, 16, 8)
    # bilinear (align_corners=False) keeps a constant picture constant and stays in range
    flat = resize_video(torch.full((3, 1, 8, 4), 0.25), (16, 8))
    assert torch.allclose(flat, torch.full_like(flat, 0.25))
    assert scaled.min() >= -1 and scaled.max() <= 1


class _CompilingGenerator:
    """A generator whose first chunk is slow (it "compiles") and the rest fast."""

    FIRST_S = 0.5
    LATER_S = 0.01

    def __init__(self) -> None:
        self.steps = 0

    def prepare(self, image: np.ndarray, prompt: str | None = None, seed: int = 0) -> object:
        return object()

    def step(
        self, state: object, audio: np.ndarray, output_size: tuple[int, int] | None = None
    ) -> None:
        self.steps += 1
        time.sleep(self.FIRST_S if self.steps == 1 else self.LATER_S)


def test_the_warm_up_rtf_leaves_out_the_compiling_first_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = _CompilingGenerator()

    def build(*args: Any, **kwargs: Any) -> _CompilingGenerator:
        return generator

    monkeypatch.setattr("headcast.pipeline.tiny.build_tiny_generator", build)
    engine = default_registry().create("tiny", TinyOptions(height=224, width=128))
    assert isinstance(engine, DiffusionEngine)
    engine.load()

    assert generator.steps == WARMUP_CHUNKS >= 2
    assert engine.warmup_rtf is not None
    assert engine.warmup_rtf < _CompilingGenerator.FIRST_S / 2 / CHUNK_SECONDS

"""Re-seeding an engine from the frames on screen (``Engine.reseed``, ``idle_mode: loop``).

- tiny (FlashTalk's code, random weights): the motion latents become exactly the VAE encode
  of the frames shown (resized to the generated size by the engine), the silence that
  played ends the audio ring, and the next chunk continues from them: two sessions with
  different histories re-seeded from the same frames after a ring's worth of silence
  generate the same chunk, which a session continuing from its own last chunk does not;
- puppet: the head position, the mouth and a blink under way are read back from the frames,
  so the next frame continues from the last one shown;
- the device thread applies a job's re-seed right before its step, and a failing re-seed
  fails that chunk as a value.

The whole server path (a process group of ranks in lockstep, over WebRTC) is tested in
tests/unit/pipeline/test_engine_processes.py and tests/integration/test_duty_cycle.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from headcast.pipeline import config as pipeline_config
from headcast.pipeline.avatar_art import DEFAULT_AVATAR_NAME, draw_default_avatar
from headcast.pipeline.diffusion_engine import DiffusionEngine, resize_frames
from headcast.pipeline.engine import ChunkFailure, EngineWorker
from headcast.pipeline.generator import FlashTalkGenerator
from headcast.pipeline.media import CHUNK_SAMPLES, RESEED_FRAMES, Avatar, Chunk, ChunkJob, Reseed
from headcast.pipeline.puppet import PuppetEngine
from headcast.pipeline.tiny import build_tiny_generator
from tests.conftest import FakeEngine

WAIT_S = 30.0
SEED = 11
OUTPUT_HEIGHT, OUTPUT_WIDTH = 96, 48
"""The tiny engine's output size: not its generated size (64x32), so re-seeds are resized."""


@pytest.fixture(scope="module")
def tiny() -> FlashTalkGenerator:
    return build_tiny_generator(pipeline_config.tiny(), seed=0)


def _voice(index: int) -> np.ndarray:
    t = np.arange(CHUNK_SAMPLES) / 16_000
    return (0.3 * np.sin(2 * np.pi * (150 + 40 * index) * t)).astype(np.float32)  # [17920]


def _to_model(frames: np.ndarray) -> torch.Tensor:
    """[M, H, W, 3] uint8 -> [1, 3, M, H, W] in [-1, 1], written out independently."""
    video = torch.tensor(frames, dtype=torch.float32).permute(3, 0, 1, 2).unsqueeze(0)
    return video / 127.5 - 1.0


def test_the_motion_becomes_the_vae_encode_of_the_frames_and_the_silence_ends_the_ring(
    tiny: FlashTalkGenerator,
) -> None:
    image = draw_default_avatar(256, 160)
    shown = tiny.step(tiny.prepare(image, seed=SEED), _voice(0)).frames[-RESEED_FRAMES:]
    state = tiny.prepare(image, seed=SEED)
    tiny.step(state, _voice(1))
    before = state.ring.window()
    silence = 3 * CHUNK_SAMPLES

    tiny.reseed(state, shown, silence)

    with torch.no_grad():
        expected = tiny.vae.encode(_to_model(shown))[0]  # [z, 2, h, w]
    assert state.motion.shape == expected.shape
    torch.testing.assert_close(state.motion, expected, rtol=0, atol=1e-5)
    window = state.ring.window()
    assert not np.any(window[-silence:]), "the silence that played is the ring's newest audio"
    np.testing.assert_array_equal(window[:-silence], before[silence:])
    with pytest.raises(ValueError, match="re-seed frames must be"):
        tiny.reseed(state, shown[:3], 0)


def test_the_next_chunk_continues_from_the_frames_not_from_the_engines_own_history(
    tiny: FlashTalkGenerator,
) -> None:
    image = draw_default_avatar(256, 160)
    shown = tiny.step(tiny.prepare(image, seed=SEED), _voice(0)).frames[-RESEED_FRAMES:]
    ring = tiny.config.audio.window_samples  # a ring's worth of silence: no audio history
    chunks = []
    for history in (_voice(1), _voice(2)):  # two sessions that said different things
        state = tiny.prepare(image, seed=SEED)
        tiny.step(state, history)
        tiny.reseed(state, shown, ring)
        chunks.append(tiny.step(state, _voice(3)).frames)
    own = tiny.prepare(image, seed=SEED)
    tiny.step(own, _voice(1))
    own.ring.push(np.zeros(ring, dtype=np.float32))
    continuing = tiny.step(own, _voice(3)).frames  # from its own last chunk instead

    np.testing.assert_array_equal(chunks[0], chunks[1])
    assert not np.array_equal(chunks[0], continuing)


def test_the_engine_resizes_the_frames_shown_to_the_generated_size(
    tiny: FlashTalkGenerator,
) -> None:
    engine = DiffusionEngine(
        name="tiny", config=tiny.config, height=OUTPUT_HEIGHT, width=OUTPUT_WIDTH, device="cpu"
    )
    engine.generator = tiny  # built above; load() would build and warm up another
    avatar = Avatar(DEFAULT_AVATAR_NAME, draw_default_avatar(256, 160))
    state = engine.open_session(avatar, SEED)
    shown = engine.step(state, ChunkJob(0, _voice(0))).frames[-RESEED_FRAMES:]
    assert shown.shape[1:3] == (OUTPUT_HEIGHT, OUTPUT_WIDTH)

    engine.reseed(state, Reseed(shown, 0))

    generated = resize_frames(shown, tiny.config.height, tiny.config.width)
    with torch.no_grad():
        expected = tiny.vae.encode(_to_model(generated))[0]
    torch.testing.assert_close(state.motion, expected, rtol=0, atol=1e-5)


def test_the_puppet_continues_from_the_last_frame_shown() -> None:
    puppet = PuppetEngine(height=384, width=224)
    puppet.load()
    avatar = puppet.default_avatar()
    silence = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
    state = puppet.open_session(avatar, SEED)
    frames = np.concatenate([puppet.step(state, ChunkJob(k, silence)).frames for k in range(3)])
    shown, following = frames[40:45], frames[45:48]  # [5, H, W, 3] then what came next
    later = puppet.open_session(avatar, SEED)  # the same session, far ahead on its clock
    for index in range(8):
        puppet.step(later, ChunkJob(index, silence))
    unseeded = puppet.step(puppet.open_session(avatar, SEED), ChunkJob(8, silence)).frames

    puppet.reseed(later, Reseed(shown.copy(), 4 * CHUNK_SAMPLES))
    resumed = puppet.step(later, ChunkJob(8, silence)).frames

    def change(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))

    ordinary = max(change(frames[n], frames[n + 1]) for n in range(len(frames) - 1))
    assert change(shown[-1], resumed[0]) <= ordinary, "no jump into the first frame"
    assert change(following[0], resumed[0]) <= ordinary
    assert change(shown[-1], unseeded[0]) > change(shown[-1], resumed[0])
    assert later.mouth_level == 0.0

    # frames that end in the middle of a blink: the blink goes on
    clock = puppet.open_session(avatar, SEED)
    blinking = next(t for t in range(4, len(frames)) if puppet._blink_closure(clock, t) > 0)
    blinking += 1  # the blink's second frame (eyes shut)
    puppet.reseed(later, Reseed(frames[blinking - 4 : blinking + 1].copy(), 0))
    assert later.blink_start is not None
    resumed = puppet.step(later, ChunkJob(9, silence)).frames
    assert change(frames[blinking], resumed[0]) <= ordinary
    with pytest.raises(ValueError, match="puppet's size"):
        puppet.reseed(later, Reseed(np.zeros((RESEED_FRAMES, 8, 8, 3), np.uint8), 0))


class FailingReseedEngine(FakeEngine):
    """``FakeEngine`` whose re-seed always fails."""

    def reseed(self, state: object, reseed: Reseed) -> None:
        raise RuntimeError("no frames like these")


def _run_jobs(engine: FakeEngine, jobs: list[ChunkJob]) -> list[object]:
    """``jobs`` of one session through a real device thread; the mailbox's items."""
    worker = EngineWorker(engine)
    worker.start()
    try:
        worker.wait_ready(WAIT_S)
        arrived = threading.Event()
        handle = worker.open_session(
            Avatar("a", np.zeros((8, 8, 3), np.uint8)), notify=arrived.set, mailbox_size=len(jobs)
        )
        for job in jobs:
            handle.submit(job)
        results: list[object] = []
        while len(results) < len(jobs):
            assert arrived.wait(WAIT_S), f"{len(results)} of {len(jobs)} results"
            arrived.clear()
            while (item := handle.mailbox.get_nowait()) is not None:
                results.append(item)
        handle.close()
        return results
    finally:
        worker.shutdown()


def test_the_device_thread_re_seeds_right_before_the_job_and_fails_it_if_that_fails() -> None:
    frames = np.full((RESEED_FRAMES, 8, 8, 3), 7, dtype=np.uint8)
    silence = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
    jobs = [ChunkJob(0, silence), ChunkJob(1, silence, Reseed(frames, CHUNK_SAMPLES))]
    engine = FakeEngine(8, 8)

    results = _run_jobs(engine, jobs)

    assert all(isinstance(r, Chunk) for r in results)
    (state,) = engine.sessions
    assert [j.index for j in state.jobs] == [0, 1]
    assert all(j.reseed is None for j in state.jobs), "the step gets the job without it"
    ((before, reseed),) = state.reseeds
    assert before == 1 and reseed.silent_samples == CHUNK_SAMPLES
    np.testing.assert_array_equal(reseed.frames, frames)

    (failed,) = _run_jobs(FailingReseedEngine(8, 8), jobs[1:])
    assert isinstance(failed, ChunkFailure) and "no frames like these" in failed.message

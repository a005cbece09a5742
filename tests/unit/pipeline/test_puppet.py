"""Tests of the puppet engine (pipeline/puppet.py) and the drawn default avatar.

The mouth is measured from pixels with ``mouth_open_metric``, as the integration tests do on
received frames; a tone burst must open it in exactly the 40 ms frames that carry it.
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest

from headcast.pipeline.avatar_art import DEFAULT_AVATAR_NAME, FaceLayout, draw_default_avatar
from headcast.pipeline.engine import EngineNotReady
from headcast.pipeline.media import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    Avatar,
    ChunkJob,
    frame_levels_dbfs,
)
from headcast.pipeline.puppet import (
    PUPPET_DESCRIPTION,
    PuppetEngine,
    mouth_open_metric,
    mouth_targets,
)

HEIGHT, WIDTH = 768, 448
OPEN = 0.5
"""``mouth_open_metric`` above this counts as an open mouth (fully open is about 1)."""
CLOSED = 0.05
"""``mouth_open_metric`` below this counts as a closed mouth."""
TONE_HZ = 220.0
TONE_AMPLITUDE = 0.3  # -13.5 dBFS RMS: near fully open
BURST_SAMPLES = 4_800  # 300 ms at 16 kHz
CHUNK_TIME_BOUND_S = 0.5
"""Sanity bound on one chunk's render time (the real figure is tens of ms)."""

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def engine() -> PuppetEngine:
    """One loaded engine for the module: it keeps no per-session state, only avatar caches."""
    puppet = PuppetEngine(height=HEIGHT, width=WIDTH)
    puppet.load()
    return puppet


def silence() -> np.ndarray:
    return np.zeros(CHUNK_SAMPLES, dtype=np.float32)  # [17920]


def tone(samples: int, amplitude: float = TONE_AMPLITUDE) -> np.ndarray:
    t = np.arange(samples, dtype=np.float64) / SAMPLE_RATE_HZ
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)  # [samples]


def metrics(frames: np.ndarray) -> np.ndarray:
    """``mouth_open_metric`` of each frame of [T, H, W, 3]. Returns [T]."""
    return np.array([mouth_open_metric(frame, HEIGHT, WIDTH) for frame in frames])


def run(engine: PuppetEngine, chunks: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """Render ``chunks`` of audio in one session. Returns [len * 28, H, W, 3] uint8."""
    state = engine.open_session(engine.default_avatar(), seed=seed)
    frames = [engine.step(state, ChunkJob(i, audio)).frames for i, audio in enumerate(chunks)]
    engine.close_session(state)
    return np.concatenate(frames)


def dark_share_of_eyes(frame: np.ndarray) -> float:
    """Share of dark (iris and pupil) pixels in both eye boxes of the default face."""
    layout = FaceLayout.for_frame(HEIGHT, WIDTH)
    share = 0.0
    for ex in layout.eye_centres_x:
        box = frame[
            layout.eye_centre_y - layout.eye_half_height : layout.eye_centre_y
            + layout.eye_half_height,
            ex - layout.eye_half_width : ex + layout.eye_half_width,
        ]  # [h, w, 3]
        share += float(np.mean(box.mean(axis=2) < 100)) / 2
    return share


# -- the engine's contract -----------------------------------------------------------------


def test_a_chunk_has_28_frames_of_the_frame_size_and_the_jobs_own_audio(
    engine: PuppetEngine,
) -> None:
    state = engine.open_session(engine.default_avatar(), seed=1)
    audio = tone(CHUNK_SAMPLES, amplitude=0.05)
    chunk = engine.step(state, ChunkJob(41, audio))

    assert chunk.frames.shape == (CHUNK_FRAMES, HEIGHT, WIDTH, 3)
    assert chunk.frames.dtype == np.uint8
    assert chunk.index == 41
    np.testing.assert_array_equal(chunk.audio, audio)
    assert chunk.audio.dtype == np.float32
    assert 0.0 < chunk.compute_seconds < CHUNK_TIME_BOUND_S


def test_it_says_what_it_is(engine: PuppetEngine) -> None:
    assert engine.name == "puppet"
    assert engine.description == PUPPET_DESCRIPTION
    assert "not the FlashTalk model" in engine.description
    # The corner label is the only change to the still picture outside the face.
    raw = engine.default_avatar().image  # [H, W, 3]
    frame = run(engine, [silence()])[0]
    changed = np.any(frame != raw, axis=2)  # [H, W]
    changed[: int(0.8 * HEIGHT)] = False  # the moving head region ends above this
    rows, cols = np.nonzero(changed)
    assert rows.size > 0, "no label drawn"
    assert rows.min() > HEIGHT - 40 and cols.min() > WIDTH - 80  # small, bottom-right


def test_open_session_before_load_and_bad_options_are_refused() -> None:
    fresh = PuppetEngine(height=64, width=48)
    with pytest.raises(EngineNotReady, match="call load"):
        fresh.open_session(fresh.default_avatar(), seed=0)
    with pytest.raises(ValueError, match="25 fps"):
        PuppetEngine(fps=30)
    with pytest.raises(ValueError, match=r"RGB uint8 array \[H, W, 3\]"):
        PuppetEngine(image=np.zeros((10, 10), dtype=np.uint8))


# -- idle: alive but silent ------------------------------------------------------------------


def test_silence_keeps_the_mouth_closed_but_the_picture_moves_and_blinks(
    engine: PuppetEngine,
) -> None:
    frames = run(engine, [silence()] * 4, seed=5)  # 4.48 s

    assert np.all(metrics(frames) < CLOSED)
    distinct = {frame.tobytes() for frame in frames}
    assert len(distinct) >= 8, "the picture is (nearly) frozen in silence"
    diffs = np.abs(np.diff(frames[::7].astype(np.int16), axis=0)).sum(axis=(1, 2, 3))
    assert np.count_nonzero(diffs) >= len(diffs) // 2  # it moves throughout, not once
    eyes = np.array([dark_share_of_eyes(frame) for frame in frames])
    assert eyes.max() > 0.2  # the eyes are open most of the time ...
    assert eyes.min() < 0.25 * eyes.max()  # ... and close fully at least once (a blink)


def test_the_same_seed_renders_the_same_frames(engine: PuppetEngine) -> None:
    audio = [tone(CHUNK_SAMPLES, amplitude=0.02), silence(), silence()]
    first, again = run(engine, audio, seed=9), run(engine, audio, seed=9)
    other = run(engine, audio, seed=10)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


# -- the mouth follows the audio, frame by frame ---------------------------------------------


def test_a_300_ms_tone_burst_opens_the_mouth_in_exactly_its_frames(
    engine: PuppetEngine,
) -> None:
    first_frame = 5
    start = first_frame * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2  # mid-frame onset
    audio = silence()
    audio[start : start + BURST_SAMPLES] = tone(BURST_SAMPLES)
    covered = range(first_frame, (start + BURST_SAMPLES - 1) // SAMPLES_PER_FRAME + 1)
    assert list(covered) == list(range(5, 13))  # 300 ms from mid-frame 5 to the end of 12

    opening = metrics(run(engine, [audio]))

    is_open = opening > OPEN
    assert [i for i in range(CHUNK_FRAMES) if is_open[i]] == list(covered)
    assert np.all(opening[:first_frame] < CLOSED)  # no early opening
    assert np.all(opening[covered.stop + 3 :] < CLOSED)  # closed again after the release
    assert opening[covered.stop] < OPEN  # at most one frame of partial release


def test_a_burst_at_a_chunk_boundary_opens_only_the_next_chunks_first_frames(
    engine: PuppetEngine,
) -> None:
    second = silence()
    second[: 3 * SAMPLES_PER_FRAME] = tone(3 * SAMPLES_PER_FRAME)  # frames 0..2 of chunk 1

    opening = metrics(run(engine, [silence(), second]))

    assert np.all(opening[:CHUNK_FRAMES] < CLOSED)
    assert np.all(opening[CHUNK_FRAMES : CHUNK_FRAMES + 3] > OPEN)
    assert np.all(opening[CHUNK_FRAMES + 6 :] < CLOSED)


def test_the_mouth_opening_grows_with_the_frame_energy(engine: PuppetEngine) -> None:
    levels_db = np.linspace(-60.0, -5.0, CHUNK_FRAMES)  # one level per frame, rising
    audio = np.concatenate(
        [tone(SAMPLES_PER_FRAME, amplitude=np.sqrt(2) * 10 ** (db / 20)) for db in levels_db]
    )

    measured_db = frame_levels_dbfs(audio)
    np.testing.assert_allclose(measured_db, levels_db, atol=0.2)
    targets = mouth_targets(measured_db)
    assert targets[0] == 0.0 and targets[-1] == 1.0
    assert np.all(np.diff(targets) >= 0)
    opening = metrics(run(engine, [audio]))
    assert np.all(np.diff(opening) >= -0.02)  # monotonic up to pixel rounding
    assert opening[0] < CLOSED and opening[-1] > 0.9


def test_the_metric_survives_lossy_coding_and_scaling(engine: PuppetEngine) -> None:
    audio = silence()
    audio[10 * SAMPLES_PER_FRAME : 20 * SAMPLES_PER_FRAME] = tone(10 * SAMPLES_PER_FRAME)
    frames = run(engine, [audio])
    closed_frame, open_frame = frames[2], frames[15]

    def degrade(frame: np.ndarray, scale: float) -> np.ndarray:
        image = PIL.Image.fromarray(frame).filter(PIL.ImageFilter.GaussianBlur(1.5))
        size = (round(WIDTH * scale), round(HEIGHT * scale))
        buffer = io.BytesIO()
        image.resize(size, PIL.Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=20)
        return np.asarray(PIL.Image.open(buffer).convert("RGB"))  # [h, w, 3]

    for scale in (1.0, 0.5):
        closed = mouth_open_metric(degrade(closed_frame, scale), HEIGHT, WIDTH)
        opened = mouth_open_metric(degrade(open_frame, scale), HEIGHT, WIDTH)
        assert closed < CLOSED, f"closed mouth reads {closed:.2f} at scale {scale}"
        assert opened > 0.8, f"open mouth reads {opened:.2f} at scale {scale}"


def test_any_avatar_image_is_fitted_and_gets_a_moving_mouth(engine: PuppetEngine) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(90, 255, size=(500, 400, 3), dtype=np.uint8)  # another aspect
    state = engine.open_session(Avatar(name="photo", image=photo), seed=0)
    audio = silence()
    audio[: 14 * SAMPLES_PER_FRAME] = tone(14 * SAMPLES_PER_FRAME)

    frames = engine.step(state, ChunkJob(0, audio)).frames

    assert frames.shape == (CHUNK_FRAMES, HEIGHT, WIDTH, 3)
    opening = metrics(frames)
    assert np.all(opening[:14] > OPEN) and np.all(opening[17:] < CLOSED)


def test_the_avatar_is_fitted_exactly_as_the_models_fit_it() -> None:
    from headcast.pipeline.imaging import (
        resize_and_centercrop,
    )  # imports torch; the puppet does not
    from headcast.pipeline.puppet import _cover_and_crop

    rng = np.random.default_rng(3)
    for shape in [(500, 400, 3), (300, 900, 3), (1025, 333, 3)]:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        models = resize_and_centercrop(PIL.Image.fromarray(image), (HEIGHT, WIDTH))
        expected = models[0, :, 0].permute(1, 2, 0).numpy()  # [H, W, 3]
        np.testing.assert_array_equal(_cover_and_crop(image, HEIGHT, WIDTH), expected)


# -- the default avatar and speed ----------------------------------------------------------


def test_the_default_avatar_is_deterministic_and_its_mouth_is_where_the_puppet_draws() -> None:
    face = draw_default_avatar(HEIGHT, WIDTH)
    assert face.shape == (HEIGHT, WIDTH, 3) and face.dtype == np.uint8
    np.testing.assert_array_equal(face, draw_default_avatar(HEIGHT, WIDTH))
    assert mouth_open_metric(face, HEIGHT, WIDTH) < CLOSED  # drawn with closed lips
    layout = FaceLayout.for_frame(HEIGHT, WIDTH)
    lips = face[layout.mouth_centre_y, layout.centre_x].astype(int)  # [3]
    cheek = face[layout.mouth_centre_y, layout.centre_x + 2 * layout.mouth_half_width]
    assert lips[0] > lips[1] + 40  # reddish lips on the mouth position ...
    assert np.abs(lips - cheek.astype(int)).sum() > 60  # ... distinct from the skin
    small = draw_default_avatar(96, 64)
    assert small.shape == (96, 64, 3)
    assert PuppetEngine(height=HEIGHT, width=WIDTH).default_avatar().name == DEFAULT_AVATAR_NAME


def test_a_chunk_renders_well_within_real_time(engine: PuppetEngine) -> None:
    rng = np.random.default_rng(1)
    envelope = np.repeat(rng.uniform(0.0, 1.0, CHUNK_SAMPLES // 1280), 1280)  # syllables
    speech = (0.2 * envelope * rng.standard_normal(CHUNK_SAMPLES)).astype(np.float32)
    state = engine.open_session(engine.default_avatar(), seed=2)
    for index in range(3):  # warm the per-avatar caches of the idle offsets
        engine.step(state, ChunkJob(index, speech))
    seconds = []
    for index in range(3, 13):
        started = time.perf_counter()
        engine.step(state, ChunkJob(index, speech))
        seconds.append(time.perf_counter() - started)

    median_ms = 1000 * float(np.median(seconds))
    logger.info("puppet: %.1f ms per chunk (median of %d, speech)", median_ms, len(seconds))
    assert median_ms < 1000 * CHUNK_TIME_BOUND_S

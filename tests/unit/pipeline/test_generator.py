"""The streaming generator: the chunk golden, avatar caching and step() end to end (tiny)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from headcast.pipeline import config as pipeline_config
from headcast.pipeline.audio import AudioConfig
from headcast.pipeline.checkpoint import materialize
from headcast.pipeline.dit import DiTConfig, FlashTalkDiT
from headcast.pipeline.generator import AvatarConditioning, FlashTalkGenerator, first_frame_mask
from headcast.pipeline.media import CHUNK_SAMPLES
from headcast.pipeline.tiny import build_tiny_generator
from headcast.pipeline.vae import VAEConfig, WanVAE
from tests.reference import load_golden, rel_err

GOLDEN_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def golden_generator() -> tuple[
    FlashTalkGenerator, dict[str, torch.Tensor], dict[str, torch.Tensor]
]:
    """A generator holding the goldens' DiT and VAE, configured like the chunk golden."""
    chunk = load_golden("chunk_tiny")
    dit_golden = load_golden("dit_tiny")
    vae_golden = load_golden("vae_tiny")
    dit = materialize(
        lambda: FlashTalkDiT(DiTConfig.from_dict(dit_golden.config)), dit_golden.state
    )
    vae = materialize(lambda: WanVAE(VAEConfig.from_dict(vae_golden.config)), vae_golden.state)
    meta = chunk.metadata
    image = chunk.inputs["cond_image"]
    config = replace(
        pipeline_config.tiny(),
        dit=dit.config,
        vae=vae.config,
        audio=AudioConfig(
            chunk_frames=int(meta["frame_num"]), motion_frames=int(meta["motion_frames_num"])
        ),
        height=image.shape[-2],
        width=image.shape[-1],
        shift=float(meta["sample_shift"]),
    )
    tiny = build_tiny_generator(pipeline_config.tiny(), seed=0)
    generator = FlashTalkGenerator(
        config,
        dit=dit.eval(),
        vae=vae.eval(),
        audio_encoder=tiny.audio_encoder,
        encoders=tiny.encoders,
        device="cpu",
        dtype=torch.float32,
    )
    return generator, chunk.inputs, chunk.outputs


def test_two_streaming_chunks_match_the_official_loop(golden_generator) -> None:
    generator, inputs, outputs = golden_generator
    conditioning = AvatarConditioning(
        context=inputs["context"][None],
        clip_fea=inputs["clip_fea"],
        y=inputs["y"],
        first_motion=inputs["motion_latent_chunk0"],
        reference=inputs["cond_image"],
    )
    noise = list(inputs["noise"])  # per chunk: the initial latent, then one per step

    def draw(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        sample = noise.pop(0)
        assert tuple(sample.shape) == shape
        return sample.to(dtype).clone()

    motion = conditioning.first_motion
    errors = {}
    for index in range(2):
        frames, motion = generator.generate_chunk(
            conditioning, motion, inputs[f"audio_chunk{index}"], draw
        )
        errors[f"frames_chunk{index}"] = rel_err(frames, outputs[f"frames_chunk{index}"])
        errors[f"motion_after_chunk{index}"] = rel_err(
            motion, outputs[f"motion_latent_after_chunk{index}"]
        )
    assert not noise, "the loop must draw exactly the golden's 10 noise tensors"
    assert max(errors.values()) < GOLDEN_TOLERANCE, errors


def test_first_frame_mask_marks_only_the_first_latent_frame() -> None:
    mask = first_frame_mask(3, 2, 2)
    assert mask.shape == (1, 4, 3, 2, 2)
    assert mask[:, :, 0].eq(1).all() and mask[:, :, 1:].eq(0).all()


@pytest.fixture(scope="module")
def tiny_generator() -> FlashTalkGenerator:
    return build_tiny_generator(pipeline_config.tiny(), seed=0)


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    tone = np.sin(2 * np.pi * 180 * t) + 0.3 * rng.standard_normal(t.shape)
    return (0.3 * envelope * tone).astype(np.float32)


def test_step_gives_28_frames_and_advances_the_stream(tiny_generator: FlashTalkGenerator) -> None:
    from headcast.pipeline.avatar_art import draw_default_avatar

    image = draw_default_avatar(256, 160)
    state = tiny_generator.prepare(image, seed=7)
    first_motion = state.motion.clone()
    audio = _speech(2 * CHUNK_SAMPLES / 16_000)
    out0 = tiny_generator.step(state, audio[:CHUNK_SAMPLES])
    out1 = tiny_generator.step(state, audio[CHUNK_SAMPLES:])
    cfg = tiny_generator.config
    assert out0.frames.shape == (28, cfg.height, cfg.width, 3) and out0.frames.dtype == np.uint8
    assert state.chunk_index == 2
    assert not torch.equal(state.motion[:, :1], first_motion)
    assert not np.array_equal(out0.frames, out1.frames)
    assert {"audio_s", "vae_decode_s", "motion_encode_s", "to_host_s"} <= set(out0.timings)


def test_same_seed_same_frames_and_sessions_do_not_share_state(
    tiny_generator: FlashTalkGenerator,
) -> None:
    from headcast.pipeline.avatar_art import draw_default_avatar

    image = draw_default_avatar(256, 160)
    audio = _speech(CHUNK_SAMPLES / 16_000, seed=3)
    a = tiny_generator.prepare(image, seed=11)
    b = tiny_generator.prepare(image, seed=11)
    frames_a = tiny_generator.step(a, audio).frames
    tiny_generator.step(a, audio)  # session a moves on; b must not notice
    frames_b = tiny_generator.step(b, audio).frames
    assert np.array_equal(frames_a, frames_b)
    assert a.conditioning is b.conditioning, "conditioning is computed once per avatar"


def test_avatar_conditioning_survives_a_disk_cache_round_trip(tmp_path: Path) -> None:
    from headcast.pipeline.avatar_art import draw_default_avatar

    image = draw_default_avatar(256, 160)
    first = build_tiny_generator(pipeline_config.tiny(), seed=0, cache_dir=tmp_path)
    computed = first.condition(image)
    assert len(list(tmp_path.glob("avatar-*.pt"))) == 1
    second = build_tiny_generator(pipeline_config.tiny(), seed=0, cache_dir=tmp_path)
    second.encoders = None  # type: ignore[assignment]  # a cache hit must not need encoders
    loaded = second.condition(image)
    for name in computed.__dataclass_fields__:
        assert torch.equal(getattr(computed, name), getattr(loaded, name)), name

"""Settings to engine: the options each engine gets, and every shipped profile loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from headcast.pipeline.diffusion_engine import DiffusionEngine
from headcast.pipeline.engine import default_registry
from headcast.pipeline.engine_options import FlashTalkOptions, PuppetOptions
from headcast.server.engines import create_engine, engine_options
from headcast.server.settings import SettingsError, load_settings

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("profile", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_profile_loads(profile: Path) -> None:
    settings = load_settings(profile)
    options = engine_options(settings)
    assert options.height == settings.height and options.width == settings.width
    assert isinstance(options, default_registry().options_type(settings.engine))


def test_the_realtime_profile_reaches_the_flashtalk_engine() -> None:
    profile = next(p for p in CONFIGS if p.name == "realtime-1gpu.yaml")
    settings = load_settings(profile)
    engine = create_engine(settings)  # created, not loaded: no weights are read
    assert isinstance(engine, DiffusionEngine) and engine.speed is not None
    assert (engine.config.steps, engine.config.height, engine.config.width) == (2, 640, 368)
    assert engine.speed.quantize == "fp8" and engine.speed.compile_mode == "default"
    assert (engine.height, engine.width) == (settings.height, settings.width)
    assert "fp8" in engine.description
    assert not engine.speed.attention_fp8
    fp8_attention = create_engine(load_settings(profile, attention_fp8=True))
    assert isinstance(fp8_attention, DiffusionEngine) and fp8_attention.speed is not None
    assert fp8_attention.speed.attention_fp8


def test_puppet_gets_only_the_size() -> None:
    settings = load_settings(None, engine="puppet", steps=2, quantize="fp8")
    assert engine_options(settings) == PuppetOptions(height=settings.height, width=settings.width)


def test_tiny_gets_its_steps() -> None:
    engine = default_registry().create(
        "tiny", engine_options(load_settings(None, engine="tiny", steps=2))
    )
    assert isinstance(engine, DiffusionEngine) and engine.config.steps == 2


def test_bad_generation_settings_are_named() -> None:
    with pytest.raises(SettingsError, match="steps"):
        load_settings(None, steps=3)
    with pytest.raises(SettingsError, match="quantize"):
        load_settings(None, quantize="int3")


def test_the_avatar_cache_folder_reaches_the_diffusion_engines(tmp_path: Path) -> None:
    settings = load_settings(None, engine="tiny", avatar_cache_dir=tmp_path)
    engine = create_engine(settings)
    assert isinstance(engine, DiffusionEngine) and engine.cache_dir == tmp_path


def test_random_weights_reach_the_flashtalk_engine_and_it_says_so() -> None:
    settings = load_settings(None, engine="flashtalk", random_weights=True, quantize="fp8")
    options = engine_options(settings)
    assert isinstance(options, FlashTalkOptions) and options.random_weights
    engine = create_engine(settings)  # created, not loaded
    assert isinstance(engine, DiffusionEngine) and engine.random_weights
    assert "RANDOM full-size weights" in engine.description and "noise" in engine.description
    real = create_engine(load_settings(None, engine="flashtalk"))
    assert isinstance(real, DiffusionEngine) and not real.random_weights
    assert "RANDOM" not in real.description


def test_random_weights_on_a_cpu_say_to_use_the_tiny_engine() -> None:
    settings = load_settings(None, engine="flashtalk", random_weights=True)
    engine = create_engine(settings)
    assert isinstance(engine, DiffusionEngine)
    engine.device = "cpu"  # this machine may not have a GPU; make sure of it
    with pytest.raises(ValueError, match=r"CUDA GPU.*--engine tiny"):
        engine.load()


def test_the_omniavatar_profile_reaches_the_streaming_engine() -> None:
    from headcast.pipeline.omniavatar.stream_engine import OmniAvatarStreamEngine

    profile = next(p for p in CONFIGS if p.name == "omniavatar-1.3b-stream.yaml")
    settings = load_settings(profile, random_weights=True)
    engine = create_engine(settings)  # created, not loaded: no weights are made
    assert isinstance(engine, OmniAvatarStreamEngine)
    assert engine.bucket == (720, 400) and engine.recipe.segment_frames(engine.bucket) == 41
    assert engine.recipe.overlap == 13 and engine.recipe.steps == 4
    assert len(engine.recipe.sampler_options().guidance.passes) == 1
    assert engine.speed.compile_mode == "default" and "RANDOM" in engine.description
    assert (engine.height, engine.width) == (768, 448)
    assert not engine.recipe.tiled_vae and "whole-frame VAE" in engine.recipe.trade
    tiled = create_engine(
        load_settings(profile, random_weights=True, omni_tiled_vae=True, attention_fp8=True)
    )
    assert isinstance(tiled, OmniAvatarStreamEngine) and tiled.recipe.tiled_vae
    assert tiled.speed.attention_fp8 and not engine.speed.attention_fp8


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"omni_size": "2b"}, "omni_size: Input should be 'tiny', '1.3b' or '14b'"),
        ({"omni_steps": 0}, "omni_steps: Input should be greater than or equal to 1"),
        ({"omni_guidance": 0.5}, "omni_guidance: Input should be greater than or equal to 1"),
        ({"omni_size": "1.3b"}, "size=1.3b needs model_dir .* or random_weights: true"),
        ({"quantize": "int4"}, "quantize='int4' is not offered by the omniavatar engine"),
    ],
)
def test_bad_omniavatar_settings_are_named(settings: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(None, engine="omniavatar", **{"omni_size": "tiny", **settings})

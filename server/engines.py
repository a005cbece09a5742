"""Turning settings into the engine and the avatars the server offers.

Owns ``engine_options`` (the typed options of the engine named by ``settings.engine``),
``create_engine`` (that engine created -- not loaded -- in this process through
``pipeline.engine.default_registry``), ``load_default_avatar`` (the ``default`` avatar: the
configured image, or the drawn face), ``avatar_assets_key`` (which engine set-up an avatar's
stored assets belong to) and ``STAND_IN_ENGINES`` (the engines that are not the model, for
honest startup logs).

Knows nothing about HTTP, sessions or WebRTC.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from headcast.pipeline.avatar_art import DEFAULT_AVATAR_NAME, draw_default_avatar
from headcast.pipeline.engine import Engine, default_registry
from headcast.pipeline.engine_options import (
    EngineOptions,
    FlashTalkOptions,
    OmniAvatarOptions,
    PuppetOptions,
    TinyOptions,
)
from headcast.pipeline.imaging import load_image
from headcast.pipeline.media import Avatar
from headcast.server.settings import Settings

logger = logging.getLogger(__name__)

STAND_IN_ENGINES = {
    "puppet": "a CPU stand-in that moves a drawn mouth with the audio energy",
    "tiny": "the model's code with tiny random weights: its pictures are noise",
}
"""Engines that are not a real model, and what they are instead (``omniavatar`` with
``omni_size: tiny`` is one too: ``stand_in`` says so)."""

OMNI_TINY_STAND_IN = "OmniAvatar's code with tiny random weights: its pictures are noise"


def stand_in(settings: Settings) -> str | None:
    """What the configured engine is instead of a real model, or ``None`` if it is one."""
    if settings.engine == "omniavatar" and settings.omni_size == "tiny":
        return OMNI_TINY_STAND_IN
    return STAND_IN_ENGINES.get(settings.engine)


def engine_options(settings: Settings) -> EngineOptions:
    """The typed options of ``settings.engine``."""
    height, width = settings.height, settings.width
    if settings.engine == "puppet":
        return PuppetOptions(height=height, width=width)
    if settings.engine == "tiny":
        return TinyOptions(
            height=height, width=width, steps=settings.steps, cache_dir=settings.avatar_cache_dir
        )
    if settings.engine == "omniavatar":
        return OmniAvatarOptions(
            height=height,
            width=width,
            size=settings.omni_size,
            steps=settings.omni_steps,
            guidance=settings.omni_guidance,
            gen_height=settings.gen_height,
            gen_width=settings.gen_width,
            model_dir=settings.model_dir,
            wav2vec_dir=settings.wav2vec_dir,
            quantize=settings.quantize,
            attention_fp8=settings.attention_fp8,
            compile=settings.compile,
            speedups=settings.speedups,
            random_weights=settings.random_weights,
            tiled_vae=settings.omni_tiled_vae,
        )
    return FlashTalkOptions(
        height=height,
        width=width,
        steps=settings.steps,
        cache_dir=settings.avatar_cache_dir,
        model_dir=settings.model_dir,
        wav2vec_dir=settings.wav2vec_dir,
        gen_height=settings.gen_height,
        gen_width=settings.gen_width,
        quantize=settings.quantize,
        attention_fp8=settings.attention_fp8,
        compile=settings.compile,
        speedups=settings.speedups,
        random_weights=settings.random_weights,
    )


def create_engine(settings: Settings) -> Engine:
    """Create (not load) the configured engine in this process (no engine group)."""
    return default_registry().create(settings.engine, engine_options(settings))


def load_default_avatar(settings: Settings) -> Avatar:
    """The ``default`` avatar (reads the avatar image file if one is set)."""
    if settings.avatar_image is not None:
        image = np.asarray(load_image(settings.avatar_image), dtype=np.uint8)
        logger.info(
            "default avatar: %s (%dx%d)", settings.avatar_image, image.shape[1], image.shape[0]
        )
    else:
        image = draw_default_avatar(settings.height, settings.width)
    return Avatar(name=DEFAULT_AVATAR_NAME, image=image)


ASSETS_KEY_HEX_CHARS = 12
"""Hex digits of the options' digest in an assets key."""


def avatar_assets_key(settings: Settings) -> str:
    """Names the engine set-up an avatar's stored assets are for: the engine and a digest of
    its options (size, weights, seed, ...). Another set-up prepares the avatar anew."""
    options = repr(engine_options(settings)).encode("utf-8")
    return f"{settings.engine}-{hashlib.sha256(options).hexdigest()[:ASSETS_KEY_HEX_CHARS]}"

"""Turning settings into the engine and the avatars the server offers.

Owns ``engine_options`` (the typed options of the engine named by ``settings.engine``),
``create_engine`` (that engine created -- not loaded -- in this process through
``pipeline.engine.default_registry``), ``load_avatars`` (the ``default`` avatar: the configured image, or the drawn face) and
``STAND_IN_ENGINES`` (the engines that are not the model, for honest startup logs).

Knows nothing about HTTP, sessions or WebRTC.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.avatar_art import DEFAULT_AVATAR_NAME, draw_default_avatar
from pipeline.engine import Engine, default_registry
from pipeline.engine_options import EngineOptions, FlashTalkOptions, PuppetOptions, TinyOptions
from pipeline.imaging import load_image
from pipeline.media import Avatar
from server.settings import Settings

logger = logging.getLogger(__name__)

STAND_IN_ENGINES = {
    "puppet": "a CPU stand-in that moves a drawn mouth with the audio energy",
    "tiny": "the model's code with tiny random weights: its pictures are noise",
}
"""Engines that are not the FlashTalk model, and what they are instead."""


def engine_options(settings: Settings) -> EngineOptions:
    """The typed options of ``settings.engine``."""
    size = {"height": settings.height, "width": settings.width}
    if settings.engine == "puppet":
        return PuppetOptions(**size)
    if settings.engine == "tiny":
        return TinyOptions(**size, steps=settings.steps, cache_dir=settings.avatar_cache_dir)
    return FlashTalkOptions(
        **size,
        steps=settings.steps,
        cache_dir=settings.avatar_cache_dir,
        model_dir=settings.model_dir,
        wav2vec_dir=settings.wav2vec_dir,
        gen_height=settings.gen_height,
        gen_width=settings.gen_width,
        quantize=settings.quantize,
        compile=settings.compile,
        speedups=settings.speedups,
        random_weights=settings.random_weights,
    )


def create_engine(settings: Settings) -> Engine:
    """Create (not load) the configured engine in this process (no engine group)."""
    return default_registry().create(settings.engine, engine_options(settings))


def load_avatars(settings: Settings) -> dict[str, Avatar]:
    """The avatars sessions may ask for, by name (reads the avatar image file if one is set)."""
    if settings.avatar_image is not None:
        image = np.asarray(load_image(settings.avatar_image), dtype=np.uint8)
        logger.info(
            "default avatar: %s (%dx%d)", settings.avatar_image, image.shape[1], image.shape[0]
        )
    else:
        image = draw_default_avatar(settings.height, settings.width)
    return {DEFAULT_AVATAR_NAME: Avatar(name=DEFAULT_AVATAR_NAME, image=image)}

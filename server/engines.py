"""Turning settings into the engine and the avatars the server offers.

Owns ``create_engine`` (the engine named by ``settings.engine``, created -- not loaded --
through ``pipeline.engine.default_registry`` with the options that engine takes),
``load_avatars`` (the ``default`` avatar: the configured image, or the drawn face) and
``STAND_IN_ENGINES`` (the engines that are not the model, for honest startup logs).

Knows nothing about HTTP, sessions or WebRTC.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.avatar_art import DEFAULT_AVATAR_NAME, draw_default_avatar
from pipeline.engine import Engine, default_registry
from pipeline.imaging import load_image
from pipeline.media import Avatar
from server.settings import Settings

logger = logging.getLogger(__name__)

STAND_IN_ENGINES = {
    "puppet": "a CPU stand-in that moves a drawn mouth with the audio energy",
    "tiny": "the model's code with tiny random weights: its pictures are noise",
}
"""Engines that are not the FlashTalk model, and what they are instead."""


def engine_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments ``settings.engine``'s factory takes."""
    options: dict[str, Any] = {"height": settings.height, "width": settings.width}
    if settings.engine in ("tiny", "flashtalk"):
        if settings.steps is not None:
            options["steps"] = settings.steps
        if settings.avatar_cache_dir is not None:
            options["cache_dir"] = settings.avatar_cache_dir
    if settings.engine == "flashtalk":
        if settings.model_dir is not None:
            options["model_dir"] = settings.model_dir
        if settings.wav2vec_dir is not None:
            options["wav2vec_dir"] = settings.wav2vec_dir
        options["gen_height"] = settings.gen_height
        options["gen_width"] = settings.gen_width
        options["quantize"] = settings.quantize
        options["compile"] = settings.compile
        options["speedups"] = settings.speedups
        options["random_weights"] = settings.random_weights
    return options


def create_engine(settings: Settings) -> Engine:
    """Create (not load) the configured engine; raises ``UnknownEngine`` with the choices."""
    return default_registry().create(settings.engine, **engine_options(settings))


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

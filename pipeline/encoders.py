"""Avatar encoders: the T5 prompt encoder and the CLIP visual tower, loaded only while used.

Owns the policy that T5 and CLIP are never resident during streaming: each call builds or
loads its model, runs it once and releases it (freeing device memory). The per-avatar
cache in ``pipeline.generator`` makes these calls rare. Knows nothing about sessions.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import torch

from headcast.pipeline.image import CLIPVisionEncoder
from headcast.pipeline.text import PromptEncoder

logger = logging.getLogger(__name__)


def release_device_memory(device: torch.device) -> None:
    """Return freed blocks of the caching allocator to the device (no-op on CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class OnDemandEncoders:
    """Implements ``pipeline.generator.AvatarEncoders`` with models built per call.

    ``prompt_encoder`` and ``clip`` are factories (e.g. loading from the model directory or
    building random tiny models); the models they return are dropped after one use.
    """

    def __init__(
        self,
        prompt_encoder: Callable[[], PromptEncoder],
        clip: Callable[[], CLIPVisionEncoder],
        device: torch.device | str,
    ) -> None:
        self._prompt_encoder = prompt_encoder
        self._clip = clip
        self.device = torch.device(device)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """prompt -> [L_text, text_dim], with the T5 encoder resident only meanwhile."""
        started = time.perf_counter()
        encoder = self._prompt_encoder()
        try:
            context = encoder.encode(prompt)  # [L_text, text_dim]
        finally:
            del encoder
            release_device_memory(self.device)
        logger.info("prompt encoded in %.2f s (T5 released)", time.perf_counter() - started)
        return context

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[1, 3, 1, H, W] in [-1, 1] -> [1, 257, 1280], with CLIP resident only meanwhile."""
        started = time.perf_counter()
        clip = self._clip()
        try:
            weight = next(clip.parameters())
            features = clip.features(image.to(weight.device, weight.dtype))  # [1, 257, 1280]
        finally:
            del clip
            release_device_memory(self.device)
        logger.info("image encoded in %.2f s (CLIP released)", time.perf_counter() - started)
        return features

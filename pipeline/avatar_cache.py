"""The engines' bounded cache of prepared avatars, on their device.

Owns ``AvatarCache``: a least-recently-used map from an avatar's key to what an engine
prepared for it (the diffusion engines' conditioning tensors on the GPU, the puppet's
prepared art), holding at most ``capacity`` entries and counting the entries it dropped
(``evictions``, exported in ``/metrics`` as ``headcast_avatar_cache_evictions_total``),
and ``avatar_key``, the key of an avatar's picture and prompt under one engine set-up.
Used on the device thread only: not thread-safe. Knows nothing about what it holds.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, TypeVar

import numpy as np

KEY_HEX_CHARS = 32
"""Hex digits of an avatar key."""


def avatar_key(image: np.ndarray, prompt: str, setup: str) -> str:
    """A digest of the picture (pixels and shape), the prompt and the engine ``setup`` (what
    changes the conditioning: preset, generated size): the same avatar under the same set-up
    has the same key, whatever its name."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(image).tobytes())
    digest.update(str(image.shape).encode())
    digest.update(prompt.encode())
    digest.update(setup.encode())
    return digest.hexdigest()[:KEY_HEX_CHARS]


ValueT = TypeVar("ValueT")


class AvatarCache(Generic[ValueT]):
    """At most ``capacity`` prepared avatars, least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an avatar cache holds at least 1 avatar, got {capacity}")
        self.capacity = capacity
        self.evictions = 0
        """Entries dropped to make room since the cache was made."""
        self._entries: OrderedDict[str, ValueT] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> ValueT | None:
        """The entry of ``key`` (now the most recently used), or ``None``."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: ValueT) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used entries over
        ``capacity``."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

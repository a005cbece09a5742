"""How many sessions the server admits at once.

Owns ``capacity_from_rtf`` (the pure rule: a device that needs ``rtf`` seconds of compute per
second of media serves ``floor(1 / rtf)`` sessions in real time, at least one) and
``CapacityPolicy`` (a configured ``max_sessions`` wins; otherwise the engine's measured
warm-up RTF decides; an engine that measures none gets the configured fallback).

Knows nothing about sessions, groups, HTTP or metrics; reads the engine's ``warmup_rtf``
(``pipeline.engine_api.Engine``) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.engine_api import Engine

MIN_SESSIONS = 1
"""A ready server always admits at least one session, even when it is slower than real time
(RTF >= 1): that one session then runs with idle chunks rather than not at all."""


def capacity_from_rtf(rtf: float | None, fallback: int) -> int:
    """``floor(1 / rtf)`` sessions, at least ``MIN_SESSIONS``; ``fallback`` if ``rtf`` is unknown.

    ``rtf`` is unknown when ``None``, not finite or not positive.
    """
    if fallback < MIN_SESSIONS:
        raise ValueError(f"the fallback capacity must be at least {MIN_SESSIONS}, got {fallback}")
    if rtf is None or not math.isfinite(rtf) or rtf <= 0:
        return fallback
    return max(MIN_SESSIONS, math.floor(1.0 / rtf))


def measured_rtf(engine: Engine) -> float | None:
    """The engine's warm-up RTF, or ``None`` if it measured none."""
    value = engine.warmup_rtf
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class CapacityPolicy:
    """Where the session limit comes from."""

    max_sessions: int | None
    """Configured limit; ``None``: derive it from the engine's measured RTF."""

    fallback: int
    """Limit when ``max_sessions`` is unset and the engine measured no RTF."""

    def resolve(self, engine: Engine) -> tuple[int, str]:
        """The limit for a loaded ``engine`` and a phrase saying where it came from."""
        if self.max_sessions is not None:
            return self.max_sessions, "configured max_sessions"
        rtf = measured_rtf(engine)
        limit = capacity_from_rtf(rtf, self.fallback)
        if rtf is None or not math.isfinite(rtf) or rtf <= 0:
            return limit, "max_sessions_fallback (the engine measured no RTF)"
        return limit, f"floor(1 / measured RTF {rtf:.3f})"

"""How much an engine group takes on: its generation slots and its connected sessions.

Owns ``capacity_from_rtf`` (the pure rule: a device that needs ``rtf`` seconds of compute per
second of media generates ``floor(1 / rtf)`` chunks in real time, at least one),
``GroupCapacity`` (a group's generation slots and session limit, and where they came from)
and ``CapacityPolicy``, which settles them for a loaded engine:

- generation slots: ``generation_slots`` if configured; in ``idle_mode: generate`` a
  configured ``max_sessions`` (every session generates all the time, so that is what it
  always meant); else ``floor(1 / RTF)`` of the engine's warm-up; an engine that measures
  none gets the fallback;
- sessions: ``max_sessions`` if configured, else the generation slots.

Knows nothing about sessions, groups, HTTP or metrics; reads the engine's ``warmup_rtf``
(``pipeline.engine_api.Engine``) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from headcast.pipeline.engine_api import Engine

MIN_SESSIONS = 1
"""A ready server always admits at least one session, even when it is slower than real time
(RTF >= 1): that one session then runs with idle chunks rather than not at all."""


def capacity_from_rtf(rtf: float | None, fallback: int) -> int:
    """``floor(1 / rtf)``, at least ``MIN_SESSIONS``; ``fallback`` if ``rtf`` is unknown.

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
class GroupCapacity:
    """What one ready engine group takes on."""

    slots: int
    """Generation slots: chunks the group generates in real time at once."""

    sessions: int
    """Connected sessions the group admits (more get 429)."""

    source: str
    """Where the figures came from, for the log."""


def check_sessions_within_slots(sessions: int | None, slots: int | None, *, loop: bool) -> None:
    """In ``idle_mode: generate`` every connected session holds a generation slot all its
    life, so configured sessions may not outnumber configured slots (ValueError)."""
    if not loop and slots is not None and sessions is not None and sessions > slots:
        raise ValueError(
            f"max_sessions ({sessions}) exceeds generation_slots ({slots}) in idle_mode "
            "generate, where every connected session generates all the time; lower "
            "max_sessions, or set idle_mode: loop so silent sessions take no slot"
        )


@dataclass(frozen=True)
class CapacityPolicy:
    """Where a group's generation slots and session limit come from."""

    max_sessions: int | None
    """Configured session limit; ``None``: the generation slots."""

    fallback: int
    """Generation slots when nothing is configured and the engine measured no RTF."""

    generation_slots: int | None = None
    """Configured generation slots; ``None``: see ``resolve``."""

    loop: bool = False
    """``idle_mode: loop``: sessions may outnumber the slots (a silent session holds none)."""

    def __post_init__(self) -> None:
        check_sessions_within_slots(self.max_sessions, self.generation_slots, loop=self.loop)

    def resolve(self, engine: Engine) -> GroupCapacity:
        """The capacity of a group whose loaded engine is ``engine``."""
        slots, source = self._slots(engine)
        if self.max_sessions is None:
            return GroupCapacity(slots, slots, f"{source}; as many sessions")
        return GroupCapacity(slots, self.max_sessions, f"{source}; configured max_sessions")

    def _slots(self, engine: Engine) -> tuple[int, str]:
        if self.generation_slots is not None:
            return self.generation_slots, "configured generation_slots"
        if not self.loop and self.max_sessions is not None:
            return self.max_sessions, "configured max_sessions"
        rtf = measured_rtf(engine)
        slots = capacity_from_rtf(rtf, self.fallback)
        if rtf is None or not math.isfinite(rtf) or rtf <= 0:
            return slots, "max_sessions_fallback (the engine measured no RTF)"
        return slots, f"floor(1 / measured RTF {rtf:.3f})"

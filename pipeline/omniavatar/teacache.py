"""TeaCache for OmniAvatar: which steps reuse the block stack's residual, decided up front.

Owns: the official rescale coefficients (those of ``Wan2.1-T2V-14B``; the official script
uses them for every model size), the skip decision and the per-step accumulated distance.
The official check runs inside each pass: the first and last steps always compute;
otherwise ``acc += poly(mean|m - m_prev| / mean|m_prev|)`` on the AdaLN input ``m``
(``t_mod``) and the step is skipped while ``acc < threshold`` (computing resets it to 0).
``m`` depends on the timestep only, so the whole schedule is known before sampling: no
host round trip inside the loop, and every pass with a cache skips the same steps. A
skipped step's hidden states are the patch-embedded input plus the residual of the last
computed step (audio additions included). In three-pass guidance the official prompt-only
pass gets a new cache every step, so it never skips (``passes_with_cache``).

Knows nothing about the DiT's insides: it takes the ``t_mod`` of each step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from headcast.pipeline.omniavatar.guidance import Pass

WAN_T2V_14B_COEFFICIENTS = (
    -3.03318725e05,
    4.90537029e04,
    -2.65530556e03,
    5.87365115e01,
    -3.15583525e-01,
)
"""TeaCache's polynomial (highest power first) for ``Wan2.1-T2V-14B``, used for both sizes."""

CACHED_PASSES = (Pass.COND, Pass.UNCOND)
"""Passes that keep a cache across steps (the prompt-only pass of three-pass guidance
gets a fresh one each step in the official code, so it always computes)."""


@dataclass(frozen=True)
class TeaCacheSchedule:
    """Per step: skip the block stack or not, and the accumulated distance after the check."""

    skip: tuple[bool, ...]
    accumulated: tuple[float, ...]

    @classmethod
    def never(cls, steps: int) -> TeaCacheSchedule:
        """Every step computes (TeaCache off)."""
        return cls((False,) * steps, (0.0,) * steps)

    @property
    def computed_steps(self) -> int:
        """Steps that run the block stack."""
        return sum(not skip for skip in self.skip)


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``mean|current - previous| / mean|previous|`` per leading index: ``[N, ...]`` -> ``[N]``."""
    diff = (current - previous).abs().flatten(1).mean(dim=1)
    return diff / previous.abs().flatten(1).mean(dim=1)


def teacache_schedule(
    t_mods: torch.Tensor,
    threshold: float,
    coefficients: Sequence[float] = WAN_T2V_14B_COEFFICIENTS,
) -> TeaCacheSchedule:
    """The schedule for the AdaLN inputs of every step, ``t_mods`` ``[steps, ...]``.

    ``threshold`` 0 (or less) turns TeaCache off.
    """
    steps = t_mods.shape[0]
    if threshold <= 0 or steps < 3:
        return TeaCacheSchedule.never(steps)
    distances = relative_l1(t_mods[1:].float(), t_mods[:-1].float()).cpu().tolist()  # [steps - 1]
    rescale = np.poly1d(np.asarray(coefficients, dtype=np.float64))
    skip = [False]
    accumulated = [0.0]
    acc = 0.0
    for step in range(1, steps):
        if step == steps - 1:
            acc, skipped = 0.0, False
        else:
            acc += float(rescale(distances[step - 1]))
            skipped = acc < threshold
            if not skipped:
                acc = 0.0
        skip.append(skipped)
        accumulated.append(acc)
    return TeaCacheSchedule(tuple(skip), tuple(accumulated))


def passes_with_cache(passes: Sequence[Pass]) -> tuple[Pass, ...]:
    """The passes of a step that use the schedule (the others always compute)."""
    return tuple(p for p in passes if p in CACHED_PASSES)

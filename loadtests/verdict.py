"""The soak's verdict: does anything grow, is every call served in full, is lip sync held.

Owns ``judge`` (samples and calls in, ``Verdict`` out), ``Check`` and ``Growth``. The
resources are compared at the same load -- idle, with no session open -- before the soak's
load phase (after its warm-up) and after it, so a cache filled by the first calls does not
count and growth does:

- resident memory (and GPU memory, where sampled) within ``MAX_MEMORY_GROWTH`` (5 %);
- threads, event-loop tasks and open file descriptors back to their level before;
- every call streamed at ``MIN_CALL_FPS`` (24 fps) or more, none failed, and the soak made
  both kinds of call (hung up, vanished);
- at most ``MAX_SKEWED_SHARE`` of the chunks sent under load had their audio more than
  40 ms off their video.

Growth per hour of each resource is reported two ways: idle-to-idle (the verdict's
comparison over the time between the two) and the least-squares slope under load. Pure
functions; no I/O.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from loadtests.driver import SessionResult
from loadtests.resources import SKEW_LIMIT_S, Sample

S_PER_HOUR = 3600.0
MAX_MEMORY_GROWTH = 0.05
"""Resident (and GPU) memory idle after the soak may exceed idle before it by this share."""

MIN_CALL_FPS = 24.0
"""Every call must receive at least this many video frames per second (25 are sent)."""

MAX_SKEWED_SHARE = 0.0
"""Share of chunks under load allowed outside +-40 ms of A/V skew: none."""

IDLE_BEFORE = "idle-before"
IDLE_AFTER = "idle-after"
LOAD = "load"
OK_OUTCOMES = ("ok", "vanished")

RESOURCES = ("rss_mb", "threads", "tasks", "open_fds", "gpu_mb")
"""The sampled resources, as ``Sample`` names them."""

BACK_TO_BASELINE = ("threads", "tasks", "open_fds")
"""Resources that must return to their idle level exactly."""

MEMORY = ("rss_mb", "gpu_mb")


@dataclass(frozen=True)
class Check:
    """One criterion: what was measured against what limit."""

    name: str
    passed: bool
    measured: str
    limit: str


@dataclass(frozen=True)
class Growth:
    """How one resource moved, per hour."""

    resource: str
    idle_before: float | None
    idle_after: float | None
    idle_to_idle_per_hour: float | None
    load_slope_per_hour: float | None


@dataclass
class Verdict:
    """Every check, the growth of every resource, and the calls in numbers."""

    checks: list[Check]
    growth: list[Growth]
    calls: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "checks": [asdict(check) for check in self.checks],
            "growth_per_hour": [asdict(growth) for growth in self.growth],
            "calls": self.calls,
        }

    def lines(self) -> list[str]:
        """The verdict in words, one line per check and per resource."""
        lines = [f"verdict: {'PASS' if self.passed else 'FAIL (' + ', '.join(self.failed) + ')'}"]
        lines += [
            f"  {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.measured} (limit {c.limit})"
            for c in self.checks
        ]
        lines.append("  growth per hour (idle to idle | slope under load):")
        for g in self.growth:
            lines.append(
                f"    {g.resource}: {_fmt(g.idle_before)} -> {_fmt(g.idle_after)}, "
                f"{_fmt(g.idle_to_idle_per_hour)}/h | {_fmt(g.load_slope_per_hour)}/h"
            )
        return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}" if abs(value) < 1e6 else f"{value:.3g}"


def _values(samples: list[Sample], phase: str, resource: str) -> list[tuple[float, float]]:
    points = [(s.t_s, getattr(s, resource)) for s in samples if s.phase == phase]
    return [(t, v) for t, v in points if v is not None]


def _idle_level(samples: list[Sample], phase: str, resource: str) -> tuple[float, float] | None:
    """(time, value) of ``resource``'s lowest sample in the idle ``phase``, or None if not
    sampled. A leak holds at every idle sample; a transient does not: a closing peer may
    free its last socket a few seconds after its session is released, and the soak's own
    scrape of ``/metrics`` can hold one more accepted socket at one sample (the CI soak once
    read 9, 9, 9, 9, 9, 10, 10 open fds, idle, after 9 before)."""
    points = _values(samples, phase, resource)
    return min(points, key=lambda point: point[1]) if points else None


def _slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2 or len({t for t, _ in points}) < 2:
        return None
    slope = statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope
    return slope * S_PER_HOUR


def growth_of(samples: list[Sample], resource: str) -> Growth:
    before = _idle_level(samples, IDLE_BEFORE, resource)
    after = _idle_level(samples, IDLE_AFTER, resource)
    per_hour = None
    if before is not None and after is not None and after[0] > before[0]:
        per_hour = (after[1] - before[1]) / (after[0] - before[0]) * S_PER_HOUR
    return Growth(
        resource,
        None if before is None else before[1],
        None if after is None else after[1],
        per_hour,
        _slope_per_hour(_values(samples, LOAD, resource)),
    )


def _resource_checks(growth: list[Growth]) -> list[Check]:
    checks: list[Check] = []
    for g in growth:
        if g.idle_before is None or g.idle_after is None:
            if g.resource != "gpu_mb":  # no GPU, no GPU memory: not a failure
                checks.append(Check(g.resource, False, "not sampled while idle", "sampled"))
            continue
        if g.resource in MEMORY:
            change = (g.idle_after - g.idle_before) / g.idle_before if g.idle_before else 0.0
            checks.append(
                Check(
                    f"{g.resource} idle after vs before",
                    change <= MAX_MEMORY_GROWTH,
                    f"{g.idle_before:.1f} -> {g.idle_after:.1f} ({change:+.1%})",
                    f"<= {MAX_MEMORY_GROWTH:+.0%}",
                )
            )
        elif g.resource in BACK_TO_BASELINE:
            checks.append(
                Check(
                    f"{g.resource} back to baseline",
                    g.idle_after <= g.idle_before,
                    f"{g.idle_before:.0f} -> {g.idle_after:.0f}",
                    f"<= {g.idle_before:.0f}",
                )
            )
    return checks


def _call_checks(calls: list[SessionResult]) -> tuple[list[Check], dict[str, Any]]:
    served = [c for c in calls if c.outcome in OK_OUTCOMES]
    failed = [c for c in calls if c.outcome not in OK_OUTCOMES]
    polite = [c for c in calls if c.outcome == "ok"]
    vanished = [c for c in calls if c.outcome == "vanished"]
    rates = [c.fps for c in served if c.fps is not None]
    slow = [c for c in served if c.fps is None or c.fps < MIN_CALL_FPS]
    summary = {
        "total": len(calls),
        "hung_up": len(polite),
        "vanished": len(vanished),
        "failed": len(failed),
        "failures": [f"call {c.index}: {c.detail}" for c in failed],
        "min_fps": min(rates) if rates else None,
        "mean_fps": statistics.fmean(rates) if rates else None,
    }
    checks = [
        Check(
            "every call served",
            not failed,
            f"{len(failed)} of {len(calls)} failed" + (f": {failed[0].detail}" if failed else ""),
            "0 failed",
        ),
        Check(
            "both kinds of call made",
            bool(polite) and bool(vanished),
            f"{len(polite)} hung up, {len(vanished)} vanished",
            ">= 1 of each",
        ),
        Check(
            f"every call >= {MIN_CALL_FPS:.0f} fps",
            bool(served) and not slow,
            f"min {_fmt_fps(summary['min_fps'])} fps, {len(slow)} below",
            f">= {MIN_CALL_FPS:.0f} fps",
        ),
    ]
    return checks, summary


def _fmt_fps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _skew_check(samples: list[Sample]) -> Check:
    load = [s for s in samples if s.phase == LOAD]
    if len(load) < 2:
        return Check("A/V skew within 40 ms", False, "fewer than 2 samples under load", "sampled")
    chunks = load[-1].chunks - load[0].chunks
    skewed = load[-1].chunks_skewed - load[0].chunks_skewed
    share = skewed / chunks if chunks else 1.0
    return Check(
        f"A/V skew within {SKEW_LIMIT_S * 1000:.0f} ms",
        chunks > 0 and share <= MAX_SKEWED_SHARE,
        f"{skewed:.0f} of {chunks:.0f} chunks outside ({share:.2%})",
        f"<= {MAX_SKEWED_SHARE:.0%}",
    )


def judge(samples: list[Sample], calls: list[SessionResult]) -> Verdict:
    """The verdict on a soak's ``samples`` (with idle phases before and after the load
    phase) and its ``calls``."""
    growth = [growth_of(samples, resource) for resource in RESOURCES]
    call_checks, call_summary = _call_checks(calls)
    checks = _resource_checks(growth) + call_checks + [_skew_check(samples)]
    return Verdict(checks, growth, call_summary)

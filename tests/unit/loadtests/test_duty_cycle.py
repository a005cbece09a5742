"""The load driver's duty cycle (loadtests/duty_cycle.py): burst times and seam figures.

Burst times average the duty cycle and end within the run, evenly phased or at seeded random
times; the figures find the seams -- the first frame of an engine chunk after a loop chunk,
and of a loop chunk after an engine chunk -- from ``chunk.stats`` and the received frames'
pts, and the waits' percentiles.
"""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.duty_cycle import FrameLog, SpeechFigures, Spread, burst_times

CHUNK_FRAMES = 28
TICKS = 3_600
"""90 kHz ticks per frame."""


@pytest.mark.parametrize("spread", list(Spread))
def test_bursts_average_the_duty_cycle_and_end_within_the_run(spread: Spread) -> None:
    burst, duty, duration = 2.0, 0.25, 2_000.0
    for index in range(4):
        times = burst_times(index, 4, duty, burst, duration, spread=spread, seed=3)
        assert times == sorted(times) and times[-1] + burst <= duration
        assert all(b - a >= burst for a, b in zip(times, times[1:])), "bursts never overlap"
        assert len(times) * burst / duration == pytest.approx(duty, rel=0.05)
    even = [burst_times(i, 4, duty, burst, 100.0, spread=Spread.EVEN)[0] for i in range(4)]
    assert even == [0.0, 2.0, 4.0, 6.0], "phases spread evenly over the 8 s period"
    seeded = burst_times(1, 4, duty, burst, 100.0, seed=3)
    assert seeded == burst_times(1, 4, duty, burst, 100.0, seed=3)
    assert seeded != burst_times(1, 4, duty, burst, 100.0, seed=4)
    assert burst_times(0, 1, duty, burst, 1.0) == [], "no burst that cannot end in time"


def test_the_figures_find_the_seams_and_the_wait_percentiles() -> None:
    frames = FrameLog()
    rng = np.random.default_rng(0)
    first_pts = 123_456  # the receiver's pts start anywhere
    levels = rng.integers(0, 3, size=4 * CHUNK_FRAMES)  # ordinary small changes
    levels[2 * CHUNK_FRAMES] += 40  # a jump where chunk 2 (engine) follows chunk 1 (loop)
    for n, level in enumerate(levels):
        gray = np.full((64, 64), 100 + level, dtype=np.uint8)
        frames.add(float(n), first_pts + n * TICKS, gray)
    figures = SpeechFigures(waits_ms=[0, 1120, 2240, 0])
    figures.chunk_kinds = {0: "generated", 1: "loop", 2: "generated", 3: "loop"}

    figures.finish(frames)

    assert len(figures.resume_jumps) == 1 and figures.resume_jumps[0] >= 38.0
    assert len(figures.idle_jumps) == 2 and max(figures.idle_jumps) <= 2.0  # chunks 1 and 3
    assert figures.frame_change_p99 is not None and 0 < figures.frame_change_p99 < 38.0
    assert (figures.wait_p50_ms, figures.wait_max_ms) == (560.0, 2240.0)
    assert "chunk_kinds" not in figures.as_report()

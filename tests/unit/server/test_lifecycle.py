"""One session's timers on a real event loop: no-show, idle (re-armed by activity), max duration.

Limits are tenths of a second, so every test runs in well under a second; each asserts which
limit ended the session, that ``end`` ran exactly once, and roughly when.
"""

from __future__ import annotations

import asyncio

import pytest

from headcast.server.lifecycle import LifecycleObserver, LifecyclePolicy, SessionLifecycle
from headcast.server.metrics import Metrics

TICK_S = 0.05
SLACK_S = 0.15
"""Allowed lateness of a timer on a busy 2-core machine, in seconds."""

WAIT_LIMIT_S = 5.0


class Ends:
    """Records ``end(reason)`` calls and when they happened."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.calls: list[tuple[float, str]] = []
        self.event = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self.calls.append((self.loop.time() - self.started, reason))
        self.event.set()

    async def wait(self) -> tuple[float, str]:
        await asyncio.wait_for(self.event.wait(), WAIT_LIMIT_S)
        return self.calls[0]


def _policy(
    no_show: float = 10.0, idle: float = 10.0, max_duration: float = 10.0
) -> LifecyclePolicy:
    return LifecyclePolicy(
        no_show_timeout_s=no_show, idle_timeout_s=idle, max_duration_s=max_duration
    )


def _started(policy: LifecyclePolicy, ends: Ends, **options: float) -> SessionLifecycle:
    lifecycle = SessionLifecycle(policy, ends, **options)
    lifecycle.start()
    lifecycle.start()  # idempotent: no second set of timers
    return lifecycle


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="idle_timeout_s"):
        _policy(idle=0)


async def test_nothing_runs_before_start() -> None:
    ends = Ends()
    lifecycle = SessionLifecycle(_policy(no_show=0.05, idle=0.05, max_duration=0.05), ends)
    lifecycle.mark_connected()  # before start: ignored
    await asyncio.sleep(0.2)
    assert ends.calls == [] and not lifecycle.connected and not lifecycle.ended
    lifecycle.cancel()


async def test_no_show_ends_an_unconnected_session() -> None:
    ends = Ends()
    lifecycle = _started(_policy(no_show=0.2), ends)
    at, reason = await ends.wait()
    assert "no-show" in reason and 0.2 <= at < 0.2 + SLACK_S
    assert lifecycle.ended


async def test_the_token_lifetime_can_shorten_the_no_show_limit() -> None:
    ends = Ends()
    _started(_policy(no_show=5.0), ends, no_show_s=0.1)
    at, reason = await ends.wait()
    assert "no-show" in reason and "0.1 s" in reason and at < 0.1 + SLACK_S


async def test_connecting_stops_the_no_show_timer_and_activity_defers_idle() -> None:
    ends = Ends()
    lifecycle = _started(_policy(no_show=0.15, idle=0.3), ends)
    lifecycle.mark_connected()
    lifecycle.mark_connected()  # idempotent
    for _ in range(8):  # 0.4 s of activity: past both the no-show and the idle limit
        await asyncio.sleep(TICK_S)
        lifecycle.activity()
    assert not ends.calls
    last_activity = ends.loop.time() - ends.started
    at, reason = await ends.wait()
    assert reason.startswith("idle") and "0.3 s" in reason
    assert 0.3 - TICK_S <= at - last_activity < 0.3 + SLACK_S
    await asyncio.sleep(0.2)
    assert len(ends.calls) == 1


async def test_max_duration_ends_even_an_active_session() -> None:
    ends = Ends()
    lifecycle = _started(_policy(idle=0.2, max_duration=0.4), ends)
    lifecycle.mark_connected()
    while not ends.calls and ends.loop.time() - ends.started < WAIT_LIMIT_S:
        lifecycle.activity()
        await asyncio.sleep(TICK_S)
    at, reason = await ends.wait()
    assert "maximum session duration" in reason and 0.4 <= at < 0.4 + SLACK_S
    assert len(ends.calls) == 1


async def test_cancel_stops_every_timer() -> None:
    ends = Ends()
    lifecycle = _started(_policy(no_show=0.1, idle=0.1, max_duration=0.15), ends)
    lifecycle.cancel()
    await asyncio.sleep(0.3)
    assert ends.calls == [] and lifecycle.ended
    lifecycle.mark_connected()  # after the end: no new timer
    await asyncio.sleep(0.15)
    assert ends.calls == []


async def test_the_observer_forwards_to_metrics_and_reports_activity() -> None:
    ends = Ends()
    metrics = Metrics()
    lifecycle = _started(_policy(idle=0.2), ends)
    lifecycle.mark_connected()
    observer = LifecycleObserver(metrics, lifecycle)
    for _ in range(6):  # 0.3 s of client activity reported through the observer
        await asyncio.sleep(TICK_S)
        observer.on_activity()
    assert not ends.calls
    observer.on_frames_dropped(5)
    observer.on_interrupt(0.3)
    assert metrics.registry.get_sample_value("headcast_frames_dropped_total") == 5
    assert metrics.registry.get_sample_value("headcast_interrupt_seconds_count") == 1
    _, reason = await ends.wait()
    assert reason.startswith("idle")

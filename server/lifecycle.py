"""When a session must end on its own: no-show, idle and maximum-duration timers.

Owns ``LifecyclePolicy`` (the three limits), ``SessionLifecycle`` (one session's timers on the
event loop, from ``start()`` -- when the session is handed to its client: the no-show timer
until the client connects, then the idle timer that client activity re-arms; the
maximum-duration timer; ``end(reason)`` is called at most once, when the first one fires) and
``LifecycleObserver`` (a ``SessionObserver`` that forwards every event to another observer -- the
metrics -- and also feeds ``on_activity`` to the session's idle timer).

Knows nothing about HTTP, tokens or how a session is closed: ``end`` does that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from headcast.streaming.observer import ChunkProblem, SessionObserver


@dataclass(frozen=True)
class LifecyclePolicy:
    """The limits of one session's life, in seconds."""

    no_show_timeout_s: float
    """From creation to the client's connection (WebRTC offer or audio WebSocket)."""

    idle_timeout_s: float
    """Longest time without client activity (audio, a command, a keep-alive) once connected."""

    max_duration_s: float
    """Longest life of a session, from creation."""

    def __post_init__(self) -> None:
        for name in ("no_show_timeout_s", "idle_timeout_s", "max_duration_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class SessionLifecycle:
    """One session's timers. Create and use it on the event loop; ``cancel`` it when done."""

    def __init__(
        self,
        policy: LifecyclePolicy,
        end: Callable[[str], None],
        *,
        no_show_s: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """``end(reason)`` is called once when a limit is reached.

        ``no_show_s`` shortens the no-show limit (e.g. to the token lifetime: a session whose
        token expired before it connected can never start).
        """
        self.policy = policy
        self._end = end
        self._loop = loop or asyncio.get_running_loop()
        self._no_show_s = min(policy.no_show_timeout_s, no_show_s or policy.no_show_timeout_s)
        self._last_activity = self._loop.time()
        self._started = False
        self._ended = False
        self.connected = False
        self._no_show: asyncio.TimerHandle | None = None
        self._max: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None

    @property
    def ended(self) -> bool:
        """True once a limit was reached or the timers were cancelled."""
        return self._ended

    def start(self) -> None:
        """Start the no-show and maximum-duration clocks (the session is handed out now)."""
        if self._started or self._ended:
            return
        self._started = True
        self._no_show = self._loop.call_later(self._no_show_s, self._fire_no_show)
        self._max = self._loop.call_later(self.policy.max_duration_s, self._fire_max_duration)

    def mark_connected(self) -> None:
        """The client connected: stop the no-show timer, start the idle timer. Idempotent."""
        if self._ended or self.connected or not self._started:
            return
        self.connected = True
        self._cancel("_no_show")
        self.activity()
        self._arm_idle(self.policy.idle_timeout_s)

    def activity(self) -> None:
        """The client did something: the idle limit counts from now (cheap; call it often)."""
        self._last_activity = self._loop.time()

    def cancel(self) -> None:
        """Stop every timer (the session ended another way). Idempotent."""
        self._ended = True
        for name in ("_no_show", "_idle", "_max"):
            self._cancel(name)

    # -- timers -----------------------------------------------------------------------------

    def _cancel(self, name: str) -> None:
        handle: asyncio.TimerHandle | None = getattr(self, name)
        if handle is not None:
            handle.cancel()
            setattr(self, name, None)

    def _arm_idle(self, delay_s: float) -> None:
        self._idle = self._loop.call_later(delay_s, self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        if self._ended:
            return
        remaining = self._last_activity + self.policy.idle_timeout_s - self._loop.time()
        if remaining > 0:  # activity since the timer was armed: wait for the rest
            self._arm_idle(remaining)
            return
        self._finish(f"idle: no client activity for {self.policy.idle_timeout_s:g} s")

    def _fire_no_show(self) -> None:
        self._no_show = None
        if not self.connected:
            self._finish(f"no-show: the client did not connect within {self._no_show_s:g} s")

    def _fire_max_duration(self) -> None:
        self._max = None
        self._finish(f"reached the maximum session duration of {self.policy.max_duration_s:g} s")

    def _finish(self, reason: str) -> None:
        if self._ended:
            return
        self.cancel()
        self._end(reason)


class LifecycleObserver:
    """A ``SessionObserver`` that forwards to ``inner`` and reports activity to ``lifecycle``."""

    def __init__(self, inner: SessionObserver, lifecycle: SessionLifecycle) -> None:
        self._inner = inner
        self._lifecycle = lifecycle

    def on_chunk(self, compute_seconds: float, rtf: float) -> None:
        self._inner.on_chunk(compute_seconds, rtf)

    def on_chunk_problem(self, problem: ChunkProblem) -> None:
        self._inner.on_chunk_problem(problem)

    def on_first_frame(self, seconds: float) -> None:
        self._inner.on_first_frame(seconds)

    def on_interrupt(self, latency_s: float) -> None:
        self._inner.on_interrupt(latency_s)

    def on_av_skew(self, skew_s: float) -> None:
        self._inner.on_av_skew(skew_s)

    def on_frames_late(self, count: int) -> None:
        self._inner.on_frames_late(count)

    def on_frames_dropped(self, count: int) -> None:
        self._inner.on_frames_dropped(count)

    def on_audio_queued(self, queued_s: float) -> None:
        self._inner.on_audio_queued(queued_s)

    def on_speech_wait(self, seconds: float) -> None:
        self._inner.on_speech_wait(seconds)

    def on_speech_dropped(self) -> None:
        self._inner.on_speech_dropped()

    def on_activity(self) -> None:
        self._lifecycle.activity()
        self._inner.on_activity()

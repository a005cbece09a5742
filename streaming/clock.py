"""The one media clock of a session, and the wall clock it is played out against.

Owns the arithmetic that ties chunk ``k`` to its samples, frames and RTP-style timestamps:
chunk ``k`` covers 16 kHz samples ``[17920·k, 17920·(k+1))`` and video frames
``[28·k, 28·(k+1))``; video frame ``n`` has pts ``n·3600`` at 90 kHz and outgoing audio
packet ``m`` has pts ``m·960`` at 48 kHz. Both outgoing tracks take their timestamps from
here, so sound and picture cannot drift apart. Also owns ``Playout`` (media time -> wall
time) and the ``WallClock`` seam that lets tests run the schedule faster than real time.

Knows nothing about engines, codecs, peer connections or the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from headcast.pipeline.media import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    CHUNK_SECONDS,
    SAMPLE_RATE_HZ,
    VIDEO_FPS,
)

VIDEO_CLOCK_RATE = 90_000
"""RTP clock rate of video timestamps, in Hz."""

AUDIO_CLOCK_RATE = 48_000
"""Sample rate (and RTP clock rate) of the outgoing audio track, in Hz."""

AUDIO_PTIME_S = 0.020
"""Duration of one outgoing audio packet, in seconds."""

VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
"""Time base of outgoing video frame pts, in seconds per tick."""

AUDIO_TIME_BASE = Fraction(1, AUDIO_CLOCK_RATE)
"""Time base of outgoing audio frame pts, in seconds per tick (one tick = one sample)."""

VIDEO_TICKS_PER_FRAME = VIDEO_CLOCK_RATE // VIDEO_FPS  # 3,600 ticks = 40 ms
"""Video clock ticks between consecutive frames."""

AUDIO_PACKET_SAMPLES = round(AUDIO_CLOCK_RATE * AUDIO_PTIME_S)  # 960 samples = 20 ms
"""48 kHz samples in one outgoing audio packet."""

UPSAMPLE_FACTOR = AUDIO_CLOCK_RATE // SAMPLE_RATE_HZ  # 3
"""Outgoing (48 kHz) samples per engine (16 kHz) sample."""

CHUNK_OUT_SAMPLES = CHUNK_SAMPLES * UPSAMPLE_FACTOR  # 53,760 samples
"""48 kHz samples of outgoing audio per chunk."""

CHUNK_AUDIO_PACKETS = CHUNK_OUT_SAMPLES // AUDIO_PACKET_SAMPLES  # 56 packets
"""Outgoing audio packets per chunk (28 frames x 40 ms = 56 packets x 20 ms)."""


def chunk_sample_range(index: int) -> range:
    """16 kHz sample indices covered by chunk ``index``."""
    return range(CHUNK_SAMPLES * index, CHUNK_SAMPLES * (index + 1))


def chunk_frame_range(index: int) -> range:
    """Video frame indices covered by chunk ``index``."""
    return range(CHUNK_FRAMES * index, CHUNK_FRAMES * (index + 1))


def chunk_packet_range(index: int) -> range:
    """Outgoing audio packet indices covered by chunk ``index``."""
    return range(CHUNK_AUDIO_PACKETS * index, CHUNK_AUDIO_PACKETS * (index + 1))


def video_pts(frame_index: int) -> int:
    """pts of video frame ``frame_index``, in 90 kHz ticks."""
    return frame_index * VIDEO_TICKS_PER_FRAME


def audio_pts(packet_index: int) -> int:
    """pts of outgoing audio packet ``packet_index``, in 48 kHz samples."""
    return packet_index * AUDIO_PACKET_SAMPLES


def chunk_start_seconds(index: int) -> float:
    """Media time at which chunk ``index`` starts, in seconds."""
    return index * CHUNK_SECONDS


class WallClock(Protocol):
    """Where a session reads the time and waits for deadlines (seconds, monotonic)."""

    def now(self) -> float:
        """The current time, in seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``."""
        ...


class LoopClock:
    """The running event loop's monotonic clock: the production ``WallClock``."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


async def wait_for_event(event: asyncio.Event, clock: WallClock, deadline: float | None) -> None:
    """Return once ``event`` is set or ``clock`` reaches ``deadline`` (``None``: no deadline)."""
    if deadline is None:
        await event.wait()
        return
    wake = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep_until(deadline))
    try:
        await asyncio.wait({wake, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (wake, timer):
            waiter.cancel()
        await asyncio.gather(wake, timer, return_exceptions=True)


class Signal:
    """A wake-up call for tasks waiting on a ``WallClock`` deadline, resumed in one loop step.

    ``notify`` resolves each waiter's own future, so a waiter runs on the loop's next
    iteration (``wait_for_event`` on an ``asyncio.Event`` takes several: a task per waiter,
    ``asyncio.wait`` and the clean-up each add one). Edge-triggered: only waiters already
    waiting are woken, so check the condition and call ``wait`` with no ``await`` between.
    """

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        """Wake every task now in ``wait``."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, clock: WallClock, deadline: float) -> None:
        """Return at the next ``notify`` or once ``clock`` reaches ``deadline``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        timer = asyncio.ensure_future(clock.sleep_until(deadline))

        def wake_at_deadline(_: asyncio.Future[None]) -> None:
            if not waiter.done():
                waiter.set_result(None)

        timer.add_done_callback(wake_at_deadline)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)


@dataclass(frozen=True)
class Playout:
    """Maps media time to wall time: media time 0 is played out at ``origin``.

    Both outgoing tracks pace against the same ``Playout``, so a video frame and the audio
    packets with the same media time leave at the same wall time.
    """

    origin: float
    """Wall time (``WallClock.now()`` units) at which media time 0 is due, in seconds."""

    def video_due(self, pts: int) -> float:
        """Wall time at which the video frame with ``pts`` (90 kHz) is due."""
        return self.origin + pts / VIDEO_CLOCK_RATE

    def audio_due(self, pts: int) -> float:
        """Wall time at which the audio packet with ``pts`` (48 kHz) is due."""
        return self.origin + pts / AUDIO_CLOCK_RATE

    def chunk_due(self, index: int) -> float:
        """Wall time at which chunk ``index``'s first frame and first sample are due."""
        return self.origin + chunk_start_seconds(index)

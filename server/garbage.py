"""The cyclic garbage collector's policy for the long-running server process.

Owns ``GarbagePolicy``. A closed WebRTC session leaves about 2,300 objects in reference
cycles (aiortc's senders, receivers, RTP packets and rate buckets refer to each other), about
1 MB a session, which only a full collection frees. Python runs a full collection when the
objects that survived since the last one reach a quarter of the long-lived heap; with the
server's ~240,000 objects from start-up that took dozens of sessions, so the resident memory
of a busy server rose by ~1 MB per session between collections (issue 16: +5.8 % in a 2-minute
soak). And a full collection then scanned the whole heap: 0.2 s with the GIL held, on a
2-core machine, long enough to delay every stream's next frame.

So: at start-up the heap is frozen (``gc.freeze``: those objects live as long as the process
and are never scanned again), and a full collection runs shortly after each session ends
(at most one pending at a time). It scans only what was made after start-up: 2-4 ms on the
same machine with one call, mostly 5-12 ms with two calls running (the longest 77 ms, timed
through ``gc.callbacks`` in 5-10 minute soaks), and the memory comes back after every call.

Knows nothing about sessions; the registry calls ``session_ended``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from headcast.pipeline.media import MS_PER_S

logger = logging.getLogger(__name__)

COLLECT_DELAY_S = 1.0
"""How long after a session ends its collection runs, in seconds: the peer connection's
transports finish closing on the event loop first."""


class GarbagePolicy:
    """Freeze the start-up heap; collect once after sessions end."""

    def __init__(self, delay_s: float = COLLECT_DELAY_S) -> None:
        self.delay_s = delay_s
        self._pending: asyncio.TimerHandle | None = None
        self.collections = 0
        """Collections run after sessions ended (for tests and logs)."""

    def freeze_startup_heap(self) -> None:
        """Collect, then move every object alive now out of the collector's reach."""
        gc.collect()
        gc.freeze()
        logger.info("garbage collector: %d start-up objects frozen", gc.get_freeze_count())

    def session_ended(self) -> None:
        """Schedule one full collection (on the running loop) unless one is pending."""
        if self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        self._pending = loop.call_later(self.delay_s, self._collect)

    def cancel(self) -> None:
        """Drop a pending collection (shutdown)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _collect(self) -> None:
        self._pending = None
        started = time.perf_counter()
        found = gc.collect()
        self.collections += 1
        logger.debug(
            "garbage collector: %d unreachable objects after a session ended, %.1f ms",
            found,
            (time.perf_counter() - started) * MS_PER_S,
        )

"""The worker threads that do blocking media work off the event loop.

Owns ``start_media_executor``: a ``ThreadPoolExecutor`` whose threads are all started up
front, so the process's thread count is fixed from startup on (aiortc encodes every frame in
the loop's default executor, which otherwise grows a thread at a time under load and never
shrinks -- indistinguishable from a leak when watching the thread count).

Knows nothing about sessions, engines or the server.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

PRESTART_TIMEOUT_S = 10.0
"""How long starting the pool's threads may take, in seconds."""

THREAD_NAME_PREFIX = "headcast-media"


class ExecutorStartError(RuntimeError):
    """The media threads could not all be started."""


def start_media_executor(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` worker threads, every one of them already running."""
    if threads < 1:
        raise ValueError(f"the media executor needs at least 1 thread, got {threads}")
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=THREAD_NAME_PREFIX)
    # Each task waits until all have started, so the pool must start one thread per task.
    barrier = threading.Barrier(threads, timeout=PRESTART_TIMEOUT_S)
    futures = [executor.submit(barrier.wait) for _ in range(threads)]
    try:
        for future in futures:
            future.result(timeout=PRESTART_TIMEOUT_S)
    except (threading.BrokenBarrierError, TimeoutError) as exc:
        executor.shutdown(wait=False, cancel_futures=True)
        raise ExecutorStartError(
            f"could not start {threads} media threads within {PRESTART_TIMEOUT_S:.0f} s"
        ) from exc
    return executor

"""The background tasks of one session: started by name, watched, cancelled together.

Owns ``SessionTasks``. A session runs a few long-lived tasks (the take and emit loops, the
inbound audio reader); none of them may fail silently, and closing must cancel them all
except the task that is closing. A task that fails is logged and reported to
``on_failure(reason)`` (the session closes itself). Knows nothing about what the tasks do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class SessionTasks:
    """Named tasks of one session (``label``), on the running event loop."""

    def __init__(self, label: str, on_failure: Callable[[str], None]) -> None:
        self._label = label
        self._on_failure = on_failure
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` as the task ``<label>-<what>`` until it ends or is cancelled."""
        task = self._loop.create_task(coro, name=f"{self._label}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def cancel_all(self) -> None:
        """Cancel every task but the caller's own, and wait until they have ended."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.error(
                "%s: task %s failed; closing", self._label, task.get_name(), exc_info=error
            )
            self._on_failure(f"internal error in {task.get_name()}: {error}")

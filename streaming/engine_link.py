"""A session's line to the engine thread, on the event loop side.

Owns ``EngineLink``: it opens the session on the ``EngineWorker`` (the engine prepares the
avatar on its device thread), turns the thread's two callbacks into event-loop calls -- the
preparation's outcome into a future (``wait_prepared``), a result in the mailbox into
``on_result()`` -- and passes chunk jobs and results through (``submit``, ``results``,
``in_flight``, ``drop_pending``, ``close``). The device thread never touches asyncio objects
directly: everything it reports goes through ``call_soon_threadsafe``.

Knows nothing about media time, tracks, audio sources or what a result is used for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from headcast.pipeline.engine import EngineWorker, MailboxItem
from headcast.pipeline.media import Avatar, ChunkJob
from headcast.streaming.session_config import DEFAULT_PREPARE_TIMEOUT_S, PrepareFailed

logger = logging.getLogger(__name__)


class EngineLink:
    """One session's engine state, jobs and results. Create it on the event loop."""

    def __init__(
        self,
        worker: EngineWorker,
        avatar: Avatar,
        *,
        seed: int,
        mailbox_size: int,
        on_result: Callable[[], None],
        label: str,
    ) -> None:
        self._avatar_name = avatar.name
        self._label = label
        self._on_result = on_result
        self._loop = asyncio.get_running_loop()
        self._prepared: asyncio.Future[None] = self._loop.create_future()
        # A failed preparation is also logged by the engine thread; mark it retrieved so an
        # unawaited failure does not warn again at garbage collection.
        self._prepared.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._handle = worker.open_session(
            avatar,
            notify=self._notify_threadsafe,
            seed=seed,
            mailbox_size=mailbox_size,
            done=self._prepared_threadsafe,
        )

    async def wait_prepared(self, timeout: float = DEFAULT_PREPARE_TIMEOUT_S) -> None:
        """Wait for the engine to prepare the avatar; raise ``PrepareFailed`` if it could not."""
        try:
            await asyncio.wait_for(asyncio.shield(self._prepared), timeout)
        except TimeoutError:
            raise PrepareFailed(
                f"the engine did not prepare avatar {self._avatar_name!r} within {timeout:.0f} s"
            ) from None

    def submit(self, job: ChunkJob) -> None:
        """Queue ``job``; raises ``MailboxFull`` or ``SessionClosed`` (``pipeline.engine``)."""
        self._handle.submit(job)

    def results(self) -> Iterator[MailboxItem]:
        """The results waiting in the mailbox, in arrival order (never blocks)."""
        while (item := self._handle.mailbox.get_nowait()) is not None:
            yield item

    @property
    def in_flight(self) -> int:
        """Chunks submitted whose results were not taken out yet (queued, running or in the
        mailbox)."""
        return self._handle.mailbox.in_flight

    def drop_pending(self) -> None:
        """Drop the jobs the engine has not started (an interrupt)."""
        self._handle.drop_pending()

    def close(self) -> None:
        """Release the session's engine state (on the device thread)."""
        self._handle.close()

    # -- called on the device thread -----------------------------------------------------------

    def _notify_threadsafe(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_result)
        except RuntimeError:  # the loop is closed: nobody is left to read the result
            logger.debug("%s: result delivered after the event loop closed", self._label)

    def _prepared_threadsafe(self, error: BaseException | None) -> None:
        def settle() -> None:
            if self._prepared.done():
                return
            if error is None:
                self._prepared.set_result(None)
            else:
                self._prepared.set_exception(
                    PrepareFailed(
                        f"the engine could not prepare avatar {self._avatar_name!r}: {error}"
                    )
                )

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:
            logger.debug("%s: avatar prepared after the event loop closed", self._label)

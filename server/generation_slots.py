"""One engine group's generation slots, handed out first come, first served.

Owns ``SlotPool`` (``total`` slots, the sessions holding one, and the queue of sessions
waiting for one) and ``SessionSlot``, a session's place in it, which implements
``streaming.generation_slot.GenerationSlot``: ``request`` holds a free slot at once when
nobody waits, else joins the back of the queue; ``try_request`` only takes a free slot nobody
waits for (it never queues: what a session does with it must not delay anyone's speech); ``release``
gives the slot to the session at the head of the queue (or leaves the queue). A session that gives a
slot back and asks again goes to the back: no session can keep the others waiting for longer than it
speaks, and none waits behind a later one.

``total`` is settled when the group is ready (``resize``, again after a restart); a smaller
total takes no slot away, it only grants none until enough are back. Knows nothing about
sessions, engines, HTTP or metrics: the server reads ``total``, ``busy`` and ``waiting``.
Runs on the event loop only.
"""

from __future__ import annotations

from collections import deque


class SessionSlot:
    """One session's place in a ``SlotPool`` (``streaming.generation_slot.GenerationSlot``)."""

    def __init__(self, pool: SlotPool) -> None:
        self._pool = pool
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def request(self) -> bool:
        self._pool._request(self)
        return self._held

    def try_request(self) -> bool:
        self._pool._try(self)
        return self._held

    def release(self) -> None:
        self._pool._release(self)


class SlotPool:
    """The generation slots of one engine group (see the module docstring)."""

    def __init__(self, total: int = 0) -> None:
        if total < 0:
            raise ValueError(f"a group has 0 or more generation slots, got {total}")
        self.total = total
        self._holders: set[SessionSlot] = set()
        self._queue: deque[SessionSlot] = deque()

    @property
    def busy(self) -> int:
        """Slots held now."""
        return len(self._holders)

    @property
    def waiting(self) -> int:
        """Sessions waiting for a slot."""
        return len(self._queue)

    def slot(self) -> SessionSlot:
        """A new session's place (holding nothing, waiting for nothing)."""
        return SessionSlot(self)

    def resize(self, total: int) -> None:
        """The group's slots changed (it is ready, or ready again after a restart)."""
        if total < 0:
            raise ValueError(f"a group has 0 or more generation slots, got {total}")
        self.total = total
        self._grant()

    def _request(self, slot: SessionSlot) -> None:
        if slot.held or slot in self._queue:
            return
        self._queue.append(slot)
        self._grant()

    def _try(self, slot: SessionSlot) -> None:
        if not slot.held and not self._queue and len(self._holders) < self.total:
            self._holders.add(slot)
            slot._held = True

    def _release(self, slot: SessionSlot) -> None:
        if slot.held:
            self._holders.discard(slot)
            slot._held = False
            self._grant()
        elif slot in self._queue:
            self._queue.remove(slot)

    def _grant(self) -> None:
        """Hand free slots to the head of the queue, in order."""
        while self._queue and len(self._holders) < self.total:
            slot = self._queue.popleft()
            self._holders.add(slot)
            slot._held = True

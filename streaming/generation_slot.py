"""A session's claim on its engine group's generation slots: the seam the server plugs into.

Owns the ``GenerationSlot`` protocol and ``OwnSlot``. A generation slot is one chunk of
engine time per 1.12 s: a group of engines can produce ``generation_slots`` chunks in real
time, and a session generating chunks holds one. In ``idle_mode: loop`` a session asks for
a slot when its speech starts and gives it back once it is silent again; the server
implements the protocol per engine group (a first-come, first-served queue); a session made
without a server gets ``OwnSlot``, which is always free.

The protocol is polled, not awaited: the session's take loop asks again at every chunk
boundary (a session cannot start generating between two), so nothing here blocks or needs
the event loop. Knows nothing about engines, queues' fairness or the server.
"""

from __future__ import annotations

from typing import Protocol


class GenerationSlot(Protocol):
    """One session's place in its engine group's generation slots. Called on the event loop."""

    def request(self) -> bool:
        """Ask for a slot: join the queue unless already in it or holding one (idempotent).
        Returns True if the session holds a slot now."""
        ...

    def try_request(self) -> bool:
        """Take a slot only if one is free and nobody waits; never queue. Returns True if
        the session holds a slot now (for work that must not delay anyone's speech)."""
        ...

    @property
    def held(self) -> bool:
        """True while the session holds a slot (granted, not yet released)."""
        ...

    def release(self) -> None:
        """Give the slot back, or leave the queue (idempotent)."""
        ...


class OwnSlot:
    """A slot nobody else wants: granted at once, every time (a session without a server)."""

    def __init__(self) -> None:
        self._held = False

    def request(self) -> bool:
        self._held = True
        return True

    def try_request(self) -> bool:
        return self.request()

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        self._held = False

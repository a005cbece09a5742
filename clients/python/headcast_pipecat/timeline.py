"""One playout order for the avatar's two received tracks: video and audio by media time.

Owns ``MediaTimeline``. WebRTC delivers the avatar's video and audio on two tracks whose
arrival times differ (the receiver's audio jitter buffer is deeper); both tracks were stamped
by the server from one media clock, so each item's media time is its pts relative to the first
pts of its track. ``take`` hands items back in media-time order, releasing an item once the
other track has reached its media time too -- or once it has waited ``max_hold_s``, so a
stalled track never stalls the other. Knows nothing about pipecat, aiortc or the server.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

Kind = Literal["video", "audio"]
KINDS: tuple[Kind, Kind] = ("video", "audio")

DEFAULT_MAX_HOLD_S = 0.25
"""Longest an item waits for the other track to catch up, in seconds."""

Item = TypeVar("Item")


@dataclass(order=True)
class _Entry(Generic[Item]):
    media_time: float
    sequence: int
    arrived: float = field(compare=False)
    kind: Kind = field(compare=False)
    item: Item = field(compare=False)


class MediaTimeline(Generic[Item]):
    """Merges two tracks' items into one sequence ordered by media time."""

    def __init__(
        self, clock_rates: dict[Kind, int], max_hold_s: float = DEFAULT_MAX_HOLD_S
    ) -> None:
        self._rates = clock_rates
        self._max_hold_s = max_hold_s
        self._first_pts: dict[Kind, int] = {}
        self._reached: dict[Kind, float] = {}
        self._heap: list[_Entry[Item]] = []
        self._sequence = itertools.count()

    def media_time(self, kind: Kind, pts: int) -> float:
        """Seconds since the track's first item (the first ``pts`` seen is time 0)."""
        first = self._first_pts.setdefault(kind, pts)
        return (pts - first) / self._rates[kind]

    def add(self, kind: Kind, pts: int, item: Item, arrived: float) -> float:
        """Take one received item; returns its media time."""
        at = self.media_time(kind, pts)
        self._reached[kind] = max(self._reached.get(kind, at), at)
        heapq.heappush(self._heap, _Entry(at, next(self._sequence), arrived, kind, item))
        return at

    def take(self, now: float) -> list[tuple[Kind, float, Item]]:
        """Items due by ``now``, in media-time order: (kind, media time, item)."""
        both = min(self._reached.get(kind, float("-inf")) for kind in KINDS)
        due: list[tuple[Kind, float, Item]] = []
        while self._heap:
            head = self._heap[0]
            if head.media_time > both and now - head.arrived < self._max_hold_s:
                break
            heapq.heappop(self._heap)
            due.append((head.kind, head.media_time, head.item))
        return due

    def __len__(self) -> int:
        return len(self._heap)

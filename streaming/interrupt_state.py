"""Where a session's output stands and what the last interrupt changed: one shared object.

Owns ``InterruptState``. An interrupt touches every part of a session at once -- the
scheduler must send the chunks it already took as idle-loop filler, the playout must drop
conversions begun before the cut and fade the engine's next chunk in from the loop -- so
the state those rules read lives here, in one object the parts share, instead of in each:

- ``epoch``: bumped by every interrupt; media converted for an older epoch is stale;
- ``next_out``: the output cursor, the next chunk index to go out (an interrupt rewinds it
  to the chunk the cut falls in);
- ``filler_until``: chunks below it were taken before the last interrupt: filler;
- ``settle_index``: the first chunk taken after the last interrupt; if it is silent it goes
  out as filler too, because the engine made it from a state that still carried the cut
  speech;
- ``ease_next``: filler went out last, so the next generated chunk fades in from the loop.

Plain data and rules, on the event loop: knows nothing of tracks, engines, audio or asyncio.
"""

from __future__ import annotations


class InterruptState:
    """The output cursor of one session and what the last interrupt changed about it."""

    def __init__(self) -> None:
        self.epoch = 0
        """Bumped by every interrupt: media converted before it is stale."""
        self.next_out = 0
        """The next chunk index to go out (chunks below it went out, generated or not)."""
        self.filler_until = 0
        """Chunks below this index were taken before the last interrupt: they go out as
        filler."""
        self.settle_index: int | None = None
        """The first chunk taken after the last interrupt, until it went out."""
        self.ease_next = False
        """Filler went out last: the next chunk fades in from the loop frame on screen."""
        self.ended = False
        """The session is closing: nothing converted from now on is wanted."""

    def interrupt(self) -> None:
        """An interrupt arrived: every conversion under way is stale."""
        self.epoch += 1

    def cut(self, first_chunk: int, next_take: int) -> None:
        """The cut falls in chunk ``first_chunk`` and chunks up to ``next_take`` (excluded)
        were taken before it: the output resumes at ``first_chunk``, as filler until
        ``next_take``, and ``next_take`` is the chunk that settles the engine."""
        self.next_out = first_chunk
        self.filler_until = next_take
        self.settle_index = next_take

    def is_filler(self, index: int) -> bool:
        """True if chunk ``index`` was taken before the last interrupt."""
        return index < self.filler_until

    def settles(self, index: int) -> bool:
        """True (once) if chunk ``index`` is the first taken after the last interrupt."""
        if index != self.settle_index:
            return False
        self.settle_index = None
        return True

    def is_current(self, epoch: int) -> bool:
        """True if media converted for ``epoch`` may still go out."""
        return epoch == self.epoch and not self.ended

    def went_out(self, index: int, *, filler: bool) -> None:
        """Chunk ``index`` was queued on the tracks (``filler``: as idle-loop filler)."""
        self.next_out = index + 1
        self.ease_next = filler

    def end(self) -> None:
        """The session is closing: every conversion from now on is stale."""
        self.ended = True

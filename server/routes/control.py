"""``POST /v1/sessions/{id}/interrupt``: stop the avatar mid-utterance over plain HTTP.

Owns the interrupt route and its response body (the same ``interrupted`` event the
WebSocket and the ``events`` data channel receive). Needs the session's token. Knows nothing
about how an interrupt cuts the media (``streaming.session``).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from headcast.server.deps import AuthorizedSessionDep

router = APIRouter(prefix="/v1/sessions", tags=["control"])


class InterruptedBody(BaseModel):
    """The interrupt took effect: queued audio and unplayed frames are gone."""

    type: Literal["interrupted"] = "interrupted"
    played_ms: int
    """How much of the interrupted utterance was played, in milliseconds (0: none playing)."""


@router.post("/{session_id}/interrupt", response_model=InterruptedBody)
async def interrupt(managed: AuthorizedSessionDep) -> InterruptedBody:
    """Drop queued audio and unplayed frames; the output is idle within 200 ms.

    409 when the session has ended. Works for push and mic sessions alike.
    """
    event = managed.media.interrupt()
    return InterruptedBody(played_ms=event.played_ms)

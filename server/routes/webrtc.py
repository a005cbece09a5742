"""``/v1/sessions/{id}/offer``: the WebRTC signalling of a session (one offer, one answer).

Owns the offer and answer bodies. ICE is gathered completely before answering (no trickle),
so the answer carries every server candidate. The offer needs the session's unexpired token.
Knows nothing about media.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from server.deps import RegistryDep, StartingSessionDep

router = APIRouter(prefix="/v1/sessions", tags=["webrtc"])

MAX_SDP_CHARS = 100_000
"""Longest offer SDP accepted, in characters (real offers are a few kB)."""


class Offer(BaseModel):
    """The client's ``RTCSessionDescription`` (``pc.localDescription`` after gathering)."""

    model_config = ConfigDict(extra="forbid")

    sdp: str = Field(max_length=MAX_SDP_CHARS)
    type: Literal["offer"]


class Answer(BaseModel):
    """The server's answer; pass it to ``pc.setRemoteDescription``."""

    sdp: str
    type: Literal["answer"] = "answer"


@router.post("/{session_id}/offer", response_model=Answer)
async def post_offer(offer: Offer, managed: StartingSessionDep, registry: RegistryDep) -> Answer:
    """Answer the offer: 400 malformed SDP, 409 if the session already has a connection,
    401 once the token has expired. The session counts as connected from the answer on."""
    return Answer(sdp=await registry.offer(managed, offer.sdp))

"""``/v1/sessions/{id}/offer``: the WebRTC signalling of a session (one offer, one answer).

Owns the offer and answer bodies. ICE is gathered completely before answering (no trickle),
so the answer carries every server candidate. The offer needs the session's unexpired token,
checked before its JSON body is read (``server.request_body``). Knows nothing about media.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from headcast.server.deps import RegistryDep, SettingsDep, StartingSessionDep
from headcast.server.request_body import json_request_body, read_json

router = APIRouter(prefix="/v1/sessions", tags=["webrtc"])

MAX_SDP_CHARS = 100_000
"""Longest offer SDP accepted, in characters (real offers are a few kB)."""

OFFER_PATH = re.compile(r"/v1/sessions/[^/]+/offer")
"""Path of the offer route: its body has its own size limit (``max_offer_bytes``)."""


class Offer(BaseModel):
    """The client's ``RTCSessionDescription`` (``pc.localDescription`` after gathering)."""

    model_config = ConfigDict(extra="forbid")

    sdp: str = Field(max_length=MAX_SDP_CHARS)
    type: Literal["offer"]


class Answer(BaseModel):
    """The server's answer; pass it to ``pc.setRemoteDescription``."""

    sdp: str
    type: Literal["answer"] = "answer"


async def offer_body(
    request: Request, _session: StartingSessionDep, settings: SettingsDep
) -> Offer:
    """The offer's JSON body, read only once the session's token passed."""
    offer = await read_json(request, Offer, timeout_s=settings.http_body_timeout_s)
    assert offer is not None  # not optional: an empty body is a 422
    return offer


OfferDep = Annotated[Offer, Depends(offer_body)]


@router.post("/{session_id}/offer", response_model=Answer, openapi_extra=json_request_body(Offer))
async def post_offer(offer: OfferDep, managed: StartingSessionDep, registry: RegistryDep) -> Answer:
    """Answer the offer: 400 malformed SDP, 409 if the session already has a connection,
    401 once the token has expired. The session counts as connected from the answer on."""
    return Answer(sdp=await registry.offer(managed, offer.sdp))

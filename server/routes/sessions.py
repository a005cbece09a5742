"""``/v1/sessions``: create a session (a slot, an id and a token), keep it alive, delete it.

Owns the request and response bodies of session creation and the routes. Creating needs an
API key when keys are configured, checked before the JSON body is read
(``server.request_body``); the other routes need the session's token (``server.deps``).
Knows nothing about WebRTC (``webrtc.py``) or how sessions run (``server.registry``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from headcast.pipeline.avatar_art import DEFAULT_AVATAR_NAME
from headcast.pipeline.media import SAMPLE_RATE_HZ
from headcast.server.deps import ApiKeyDep, AuthorizedSessionDep, RegistryDep, SettingsDep
from headcast.server.request_body import json_request_body, read_json
from headcast.server.routes.audio_ws import PushFormatDep
from headcast.streaming.push import PushSampleRateHz
from headcast.streaming.session_config import AudioSource

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


class SessionRequest(BaseModel):
    """What a client asks for."""

    model_config = ConfigDict(extra="forbid")

    avatar: str = Field(DEFAULT_AVATAR_NAME, min_length=1, max_length=100)
    """Name of the avatar to animate."""

    audio_source: AudioSource = AudioSource.MIC
    """Where speech comes from: ``mic`` (the WebRTC microphone track) or ``push`` (PCM16
    pushed over ``WS /v1/sessions/{id}/audio``: chatbot mode)."""

    sample_rate: PushSampleRateHz = SAMPLE_RATE_HZ
    """Sample rate of pushed audio, in Hz (push sessions; 24 and 48 kHz are resampled)."""


class IceServerBody(BaseModel):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class SessionCreated(BaseModel):
    """A new session: send the WebRTC offer to ``/v1/sessions/{id}/offer`` with the token."""

    id: str
    token: str
    """Send as ``Authorization: Bearer <token>`` on this session's requests (``?token=`` on
    its WebSocket). Scoped to this session only."""

    expires_at: datetime
    """The token starts the session (offer or WebSocket) until this (ISO 8601, UTC); a session
    not connected by then is released. Once connected, the token keeps controlling it."""

    ice_servers: list[IceServerBody]
    """STUN/TURN servers for the client's RTCPeerConnection."""

    audio_source: AudioSource
    """``mic`` or ``push``, as requested."""

    sample_rate: int
    """Sample rate the audio WebSocket expects, in Hz (push sessions)."""

    audio_path: str | None
    """Path of the audio WebSocket (``?token=<token>`` appended); ``None`` for mic sessions."""


async def session_request(
    http_request: Request, _api_key: ApiKeyDep, settings: SettingsDep
) -> SessionRequest:
    """The creation request's JSON body, read only once the API key passed (an empty JSON
    body asks for the defaults)."""
    body = await read_json(
        http_request, SessionRequest, timeout_s=settings.http_body_timeout_s, optional=True
    )
    return body or SessionRequest()


SessionRequestDep = Annotated[SessionRequest, Depends(session_request)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionCreated,
    openapi_extra=json_request_body(SessionRequest, required=False),
)
async def create_session(
    request: SessionRequestDep, registry: RegistryDep, push: PushFormatDep
) -> SessionCreated:
    """Take a session slot for ``avatar``; 429 with Retry-After when every slot is taken.

    With API keys configured, needs ``Authorization: Bearer <API key>`` (401 otherwise),
    checked before the body is read. The body is JSON (``Content-Type: application/json``,
    415 otherwise, so a page on another origin cannot create sessions without passing CORS).
    """
    managed = await registry.create(
        request.avatar,
        audio_source=request.audio_source,
        push_format=(
            replace(push, sample_rate=request.sample_rate)
            if request.audio_source is AudioSource.PUSH
            else None
        ),
    )
    return SessionCreated(
        id=managed.id,
        token=managed.token,
        expires_at=managed.expires_at,
        audio_source=request.audio_source,
        sample_rate=request.sample_rate,
        audio_path=(
            f"{router.prefix}/{managed.id}/audio"
            if request.audio_source is AudioSource.PUSH
            else None
        ),
        ice_servers=[
            IceServerBody(
                urls=[server.urls] if isinstance(server.urls, str) else list(server.urls),
                username=server.username,
                credential=server.credential,
            )
            for server in managed.peer_config.ice_servers
        ],
    )


@router.post("/{session_id}/keepalive", status_code=status.HTTP_204_NO_CONTENT)
async def keep_alive(managed: AuthorizedSessionDep, registry: RegistryDep) -> Response:
    """Client activity without media: the session's idle timeout counts from now."""
    registry.keep_alive(managed.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_session(managed: AuthorizedSessionDep, registry: RegistryDep) -> Response:
    """End the session: its peer connection, tasks and engine state are released."""
    await registry.delete(managed)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

"""WHEP egress: ``/v1/sessions/{id}/whep``, the standard way for receive-only players to watch.

Owns the WHEP endpoint and resource of a session (WebRTC-HTTP Egress Protocol,
draft-ietf-wish-whep, which follows WHIP, RFC 9725, for everything HTTP):

- ``POST /v1/sessions/{id}/whep`` with ``Content-Type: application/sdp``, the SDP offer as the
  body and ``Authorization: Bearer <session token>``: ``201 Created``, the SDP answer as an
  ``application/sdp`` body, ``Location`` of the WHEP resource and one ``Link: <url>;
  rel="ice-server"`` header per STUN/TURN URL (with ``username``, ``credential`` and
  ``credential-type`` for TURN). The token is checked before the body is read; another
  content type is 415, a body over ``MAX_SDP_BYTES`` 413, a malformed offer 400, a second
  connection 409 (problem details, as everywhere in the API).
- ``OPTIONS`` on the endpoint: ``Accept-Post: application/sdp``.
- ``DELETE`` on the resource (the ``Location``) with the token: ends the session, ``200 OK``.
- ``PATCH`` on the resource: ``405 Method Not Allowed`` with ``Allow: DELETE`` -- the server
  supports neither trickle ICE nor ICE restarts (it answers with every candidate; candidates
  an offer lacks are learnt from the player's connectivity checks, peer-reflexive).

A WHEP session is an ordinary headcast session watched by a player that sends nothing: it
pairs with push sessions (the application pushes the speech over the audio WebSocket). Knows
nothing about media; the registry answers the offer as it does for ``/offer``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiortc import RTCIceServer
from fastapi import APIRouter, Request, Response, status

from headcast.server.deps import AuthorizedSessionDep, RegistryDep, StartingSessionDep
from headcast.server.errors import Problem
from headcast.server.routes.webrtc import MAX_SDP_CHARS

router = APIRouter(prefix="/v1/sessions", tags=["whep"])

SDP_MEDIA_TYPE = "application/sdp"
"""The media type of WHEP offers and answers."""

MAX_SDP_BYTES = MAX_SDP_CHARS
"""Longest offer accepted, in bytes (SDP is ASCII; real offers are a few kB)."""

ENDPOINT_PATH = "/{session_id}/whep"
RESOURCE_NAME = "peer"
"""Last path segment of the WHEP resource: one player per session."""

RESOURCE_PATH = f"{ENDPOINT_PATH}/{RESOURCE_NAME}"

WHEP_PATH = re.compile(r"/v1/sessions/[^/]+/whep")
"""Path of the WHEP endpoint: its SDP body has the offer's size limit (``max_offer_bytes``)."""
RESOURCE_METHODS = "DELETE"
"""What the WHEP resource answers besides 405 (no PATCH: no trickle ICE, no ICE restart)."""

ICE_SERVER_REL = "ice-server"
TURN_SCHEMES = ("turn:", "turns:")


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def ice_server_links(servers: Iterable[RTCIceServer]) -> list[str]:
    """One ``Link`` field value per STUN/TURN URL (RFC 9725 section 4.6 attributes)."""
    links: list[str] = []
    for server in servers:
        urls = [server.urls] if isinstance(server.urls, str) else list(server.urls)
        for url in urls:
            link = f'<{url}>; rel="{ICE_SERVER_REL}"'
            if url.startswith(TURN_SCHEMES) and server.username is not None:
                link += f"; username={_quoted(server.username)}"
                if server.credential is not None:
                    link += f'; credential={_quoted(server.credential)}; credential-type="password"'
            links.append(link)
    return links


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_offer(request: Request) -> str:
    """The request body as SDP text, refused beyond ``MAX_SDP_BYTES`` without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_SDP_BYTES:
        raise _too_large()
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_SDP_BYTES:
            raise _too_large()
    try:
        return body.decode("ascii")
    except UnicodeDecodeError:
        raise Problem(
            400, "bad-offer", "the SDP offer is not ASCII text", title="Bad offer"
        ) from None


def _too_large() -> Problem:
    return Problem(
        413,
        "offer-too-large",
        f"the SDP offer is larger than {MAX_SDP_BYTES} bytes; send the localDescription.sdp "
        "of a recvonly audio + video offer",
    )


@router.options(ENDPOINT_PATH, status_code=status.HTTP_204_NO_CONTENT)
async def whep_options() -> Response:
    """What the WHEP endpoint takes: ``POST`` of an ``application/sdp`` offer."""
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={"Accept-Post": SDP_MEDIA_TYPE, "Allow": "OPTIONS, POST"},
    )


@router.post(
    ENDPOINT_PATH,
    status_code=status.HTTP_201_CREATED,
    response_class=Response,
    responses={201: {"content": {SDP_MEDIA_TYPE: {}}, "description": "The SDP answer"}},
)
async def whep_offer(
    request: Request, managed: StartingSessionDep, registry: RegistryDep
) -> Response:
    """Answer a WHEP player's SDP offer (recvonly audio and video): 201 with the SDP answer.

    Needs the session's unexpired token. 415 unless ``Content-Type: application/sdp``; 400
    for a malformed offer; 409 if the session already has a connection.
    """
    if _media_type(request) != SDP_MEDIA_TYPE:
        raise Problem(
            415,
            "unsupported-media-type",
            f"a WHEP offer is sent with 'Content-Type: {SDP_MEDIA_TYPE}' and the SDP as the "
            "body (JSON offers go to /v1/sessions/{id}/offer)",
            headers={"Accept-Post": SDP_MEDIA_TYPE},
        )
    answer = await registry.offer(managed, await _read_offer(request))
    response = Response(
        content=answer,
        status_code=status.HTTP_201_CREATED,
        media_type=SDP_MEDIA_TYPE,
        headers={"Location": f"{router.prefix}/{managed.id}/whep/{RESOURCE_NAME}"},
    )
    for link in ice_server_links(managed.peer_config.ice_servers):  # its TURN credentials too
        response.headers.append("Link", link)
    return response


@router.delete(RESOURCE_PATH, status_code=status.HTTP_200_OK, response_class=Response)
async def whep_delete(managed: AuthorizedSessionDep, registry: RegistryDep) -> Response:
    """End the WHEP session: the peer connection and the headcast session are released."""
    await registry.delete(managed, "ended by its WHEP player (DELETE)")
    return Response(status_code=status.HTTP_200_OK)


@router.patch(RESOURCE_PATH, status_code=status.HTTP_405_METHOD_NOT_ALLOWED)
async def whep_patch(session_id: str) -> Response:
    """No trickle ICE and no ICE restart: 405 with ``Allow: DELETE``."""
    raise Problem(
        405,
        "method-not-allowed",
        f"WHEP session {session_id!r} takes no PATCH: the server supports neither trickle ICE "
        "nor ICE restarts. Its answer carries every server candidate, and candidates your offer "
        "lacks are learnt from your connectivity checks; to reconnect, DELETE and start anew",
        headers={"Allow": RESOURCE_METHODS},
    )

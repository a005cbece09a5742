"""Why a TURN server gave no relay candidate: one allocation attempt, its failure in words.

aioice gathers relay candidates and drops the reason when an allocation fails, so a peer
connection told to use relay candidates only is left with none and no explanation. When
that happens, ``explain_turn_failure(server)`` makes one TURN allocation with the same
credentials and says what went wrong: the credential was refused (401), and whether its
TURN REST expiry (``<unix time>:<name>`` user names) had passed; another STUN error; or no
answer from the server at all.

Owns ``explain_turn_failure`` and ``relay_candidates``; knows nothing about sessions or
which side (server or client) asks.
"""

from __future__ import annotations

import asyncio
import time

from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri

TURN_URL_SCHEMES = ("turn:", "turns:")
"""How a TURN server's URL starts (RFC 7065); anything else in ``ice_servers`` is STUN."""

TURN_CHECK_TIMEOUT_S = 5.0
"""Longest wait for the TURN server to answer one allocation, in seconds."""

HTTP_UNAUTHORIZED = 401
"""STUN error code of a refused credential (RFC 8489 section 14.8)."""

REST_USERNAME_SEPARATOR = ":"
"""Separates the expiry from the name in a TURN REST API user name."""


def relay_candidates(sdp: str) -> int:
    """How many relay candidates ``sdp`` offers."""
    return sum(
        1 for line in sdp.splitlines() if line.startswith("a=candidate") and " typ relay" in line
    )


def turn_urls(servers: list[RTCIceServer]) -> list[tuple[str, RTCIceServer]]:
    """Every ``turn:``/``turns:`` URL of ``servers`` with the server it belongs to."""
    found: list[tuple[str, RTCIceServer]] = []
    for server in servers:
        urls = [server.urls] if isinstance(server.urls, str) else server.urls
        found.extend((url, server) for url in urls if url.startswith(TURN_URL_SCHEMES))
    return found


def rest_expiry(username: str | None) -> int | None:
    """The expiry (unix time) of a TURN REST API user name ``<expiry>:<name>``, if it is one."""
    if not username:
        return None
    head, separator, _ = username.partition(REST_USERNAME_SEPARATOR)
    return int(head) if separator and head.isdigit() else None


def _refused(url: str, username: str | None, code: int, reason: str) -> str:
    expiry = rest_expiry(username)
    if code == HTTP_UNAUTHORIZED and expiry is not None and expiry <= time.time():
        return (
            f"the TURN server {url} refused the credential ({code} {reason}): it expired "
            f"{time.time() - expiry:.0f} s ago; create a new session for fresh credentials"
        )
    if code == HTTP_UNAUTHORIZED:
        return (
            f"the TURN server {url} refused the credential ({code} {reason}): the user name or "
            "password is wrong; with per-session credentials the server's turn_secret must equal "
            "the TURN server's static-auth-secret"
        )
    return f"the TURN server {url} refused the allocation ({code} {reason})"


async def explain_turn_failure(servers: list[RTCIceServer]) -> str:
    """Try one allocation on each TURN URL of ``servers``; say why none gave a relay.

    Returns a sentence per URL, or a note that there is no TURN server at all. Takes at most
    ``TURN_CHECK_TIMEOUT_S`` per URL.
    """
    reasons: list[str] = []
    for url, server in turn_urls(servers):
        try:
            parsed = parse_stun_turn_uri(url)
        except ValueError as exc:
            reasons.append(f"{url} is not a TURN URL aiortc understands ({exc})")
            continue
        try:
            async with asyncio.timeout(TURN_CHECK_TIMEOUT_S):
                transport, _ = await create_turn_endpoint(
                    asyncio.DatagramProtocol,
                    server_addr=(parsed["host"], parsed["port"]),
                    username=server.username,
                    password=server.credential,
                    ssl=parsed["scheme"] == "turns",
                    transport=parsed["transport"] or "udp",
                )
        except stun.TransactionFailed as exc:
            code, reason = exc.response.attributes.get("ERROR-CODE", (0, "no error code"))
            reasons.append(_refused(url, server.username, code, reason))
            continue
        except (stun.TransactionTimeout, TimeoutError):
            reasons.append(
                f"the TURN server {url} did not answer within {TURN_CHECK_TIMEOUT_S:.0f} s; check "
                "that it runs and that its port is open (UDP and TCP 3478, TLS 5349)"
            )
            continue
        except (OSError, ConnectionError) as exc:
            reasons.append(f"the TURN server {url} cannot be reached: {exc}")
            continue
        transport.close()  # deletes the allocation on a task of its own
        reasons.append(
            f"the TURN server {url} granted an allocation just now, so the failure was "
            "transient or the relay ports are blocked"
        )
    if not reasons:
        return "no TURN server is configured (add a turn: URL to the ICE servers)"
    return "; ".join(reasons)

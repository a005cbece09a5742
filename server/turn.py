"""Per-session TURN credentials by the TURN REST API convention (coturn's ``use-auth-secret``).

A TURN server configured with ``use-auth-secret`` and ``static-auth-secret=S`` accepts any
user name ``<expiry unix time>:<anything>`` whose password is
``base64(HMAC-SHA1(S, user name))``, until the expiry passes. The server shares ``S`` with
it (``turn_secret``) and mints such a pair for every session: the name is the session id,
the expiry the end of the session's longest life (``max_duration_s``), so a credential is
worth nothing after its session.

Owns ``TurnMinter`` and ``mint_credential``; knows nothing about sessions beyond their id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from dataclasses import dataclass, field

from aiortc import RTCIceServer

USERNAME_SEPARATOR = ":"
"""Separates the expiry from the session id in a TURN REST user name."""


@dataclass(frozen=True)
class TurnCredential:
    """A TURN user name and password, valid until ``expires_at`` (unix time, seconds)."""

    username: str
    password: str = field(repr=False)
    expires_at: int


def mint_credential(secret: str, name: str, expires_at: float) -> TurnCredential:
    """The TURN REST credential for ``name`` that expires at ``expires_at`` (unix seconds,
    rounded up to the whole second)."""
    expiry = math.ceil(expires_at)
    username = f"{expiry}{USERNAME_SEPARATOR}{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expiry)


@dataclass(frozen=True)
class TurnMinter:
    """Mints each session's TURN server entry from the shared secret."""

    urls: tuple[str, ...]
    """``turn:host:port?transport=udp`` / ``turns:host:5349?transport=tcp`` URLs."""

    secret: str = field(repr=False)
    """The TURN server's ``static-auth-secret``."""

    lifetime_s: float
    """How long a credential is valid from its minting: the session's longest life."""

    def ice_server(self, session_id: str, now: float | None = None) -> RTCIceServer:
        """The TURN entry of session ``session_id``, valid for ``lifetime_s`` from ``now``
        (unix time; default: the current time)."""
        start = time.time() if now is None else now
        credential = mint_credential(self.secret, session_id, start + self.lifetime_s)
        return RTCIceServer(
            urls=list(self.urls), username=credential.username, credential=credential.password
        )

"""Who may do what: API keys for creating sessions, and per-session tokens for using them.

Owns the one place credentials are checked:

- ``ApiKeys``: the configured API keys (``HEADCAST_API_KEYS``); ``check`` compares a
  presented key with every configured key in constant time. No keys: open local-demo mode.
- ``SessionTokens``: issues and verifies the short-lived token scoped to one session. A token
  is ``<session id>.<expiry, unix ms>.<HMAC-SHA256 signature>``, signed with a random key
  made when the app is built (tokens die with the process, as sessions do). Verification
  tells a forged or garbled token (401), another session's token (403) and an expired one
  (401) apart.
- ``TokenUse``: what a token is presented for. ``START`` (the offer, the WebSocket connect)
  needs an unexpired token; ``CONTROL`` (delete, interrupt, keep-alive) also accepts an
  expired one once the session is connected, so a session lives until its lifecycle ends.
- ``bearer_credential``: the credential in an ``Authorization: Bearer ...`` header.
- ``TokenRedactor``: a logging filter that blanks ``token`` query values, however the name
  is spelled or percent-encoded (WebSocket URLs carry the session token; uvicorn logs request
  paths).
- The typed ``AuthError`` family, which ``server.errors`` maps to 401 / 403 problems.

Never logs or echoes a key or a token. Knows nothing about HTTP routes, the registry or
metrics: the FastAPI dependencies in ``server.deps`` call it.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from headcast.pipeline.media import MS_PER_S

BEARER_SCHEME = "bearer"
"""The ``Authorization`` scheme (case-insensitive, RFC 6750)."""

SIGNING_KEY_BYTES = 32
"""Random bytes of the per-process key that signs session tokens."""

TOKEN_SEPARATOR = "."
"""Separates the parts of a token; session ids (URL-safe base64) never contain it."""

MAX_TOKEN_CHARS = 200
"""Longest token looked at (issued tokens are about 70 characters); longer is invalid."""

TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}\.[0-9]{1,16}\.[A-Za-z0-9_-]{1,64}", re.ASCII)
"""What an issued token looks like: URL-safe base64 session id, ASCII-digit expiry (unix ms),
URL-safe base64 signature. Anything else (non-ASCII, Unicode digits, ...) is refused unread."""

QUERY_PARAMETER = re.compile(r"(?P<name>[^?&;=\s\"']+)=(?P<value>[^&;\s\"']*)")
"""A ``name=value`` query parameter in a logged URL (the name possibly percent-encoded)."""

TOKEN_PARAMETER = "token"
"""Query parameters whose name ends with this are redacted, however the name is spelled
(``token``, ``TOKEN``, ``tok%65n`` all reach the route as ``token``)."""

REDACTED = "[redacted]"


class AuthError(Exception):
    """A request's credentials do not allow what it asks; the message says what to do."""


class MissingCredentials(AuthError):
    """No ``Authorization: Bearer ...`` header (or ``token`` parameter) was sent."""


class InvalidApiKey(AuthError):
    """The API key is not one of the configured keys."""


class InvalidToken(AuthError):
    """The session token is garbled or was not issued by this server."""


class TokenExpired(AuthError):
    """The session token is past its lifetime for what it was presented for."""


class TokenForAnotherSession(AuthError):
    """A valid token, but for a different session than the one addressed."""


class TokenUse(enum.Enum):
    """What a session token is presented for."""

    START = "start"
    """Starting the session: the WebRTC offer or the WebSocket connect. Needs an unexpired
    token."""

    CONTROL = "control"
    """Controlling a session: delete, interrupt, keep-alive. An expired token still works
    once the session is connected."""


def bearer_credential(authorization: str | None, what: str) -> str:
    """The credential of an ``Authorization: Bearer <credential>`` header value.

    ``what`` names the credential in the error (``"API key"``, ``"session token"``).
    """
    if authorization is None or not authorization.strip():
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise MissingCredentials(
            f"this request needs {article} {what}: send 'Authorization: Bearer <{what}>'"
        )
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != BEARER_SCHEME or not credential.strip():
        raise MissingCredentials(
            f"the Authorization header must be 'Bearer <{what}>' (another scheme or an empty "
            "credential was sent)"
        )
    return credential.strip()


def _digest(value: str) -> bytes:
    # Equal-length digests, so compare_digest leaks neither content nor length.
    return hashlib.sha256(value.encode("utf-8")).digest()


class ApiKeys:
    """The configured API keys; empty means open local-demo mode."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)

    @property
    def required(self) -> bool:
        """True when session creation needs an API key."""
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> None:
        """Accept the request if keys are off or its bearer credential is a configured key."""
        if not self._digests:
            return
        presented = _digest(bearer_credential(authorization, "API key"))
        matched = False
        for key in self._digests:  # no early exit: the time does not say which key matched
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise InvalidApiKey(
                "the API key is not valid: send one of the keys configured in HEADCAST_API_KEYS "
                "as 'Authorization: Bearer <API key>'"
            )


@dataclass(frozen=True)
class IssuedToken:
    """A session token and when it stops starting the session."""

    value: str = field(repr=False)
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SessionTokens:
    """Issues and verifies session tokens (HMAC-signed session id and expiry)."""

    def __init__(self, ttl_s: float, *, signing_key: bytes | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"the token lifetime must be positive, got {ttl_s} s")
        self.ttl_s = ttl_s
        self._key = (
            signing_key if signing_key is not None else secrets.token_bytes(SIGNING_KEY_BYTES)
        )

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, session_id: str, *, now_s: float | None = None) -> IssuedToken:
        """A token for ``session_id`` that starts it until ``ttl_s`` from ``now_s`` (unix s)."""
        if TOKEN_SEPARATOR in session_id:
            raise ValueError(f"session ids must not contain {TOKEN_SEPARATOR!r}")
        issued = time.time() if now_s is None else now_s
        expires_ms = round((issued + self.ttl_s) * MS_PER_S)
        payload = f"{session_id}{TOKEN_SEPARATOR}{expires_ms}"
        return IssuedToken(
            value=f"{payload}{TOKEN_SEPARATOR}{self._sign(payload)}",
            expires_at=datetime.fromtimestamp(expires_ms / MS_PER_S, UTC),
        )

    def verify(
        self,
        token: str,
        session_id: str,
        use: TokenUse,
        *,
        connected: bool,
        now_s: float | None = None,
    ) -> None:
        """Accept ``token`` for ``use`` on ``session_id`` or raise the ``AuthError`` saying why.

        ``connected``: the session already has its connection (offer answered or socket
        open); then a ``CONTROL`` use accepts an expired token.
        """
        if len(token) > MAX_TOKEN_CHARS or not TOKEN_SHAPE.fullmatch(token):
            raise InvalidToken(
                "the session token is not valid: send the token POST /v1/sessions returned, "
                "unchanged"
            )
        token_session, expires_ms, signature = token.split(TOKEN_SEPARATOR)
        expected = self._sign(f"{token_session}{TOKEN_SEPARATOR}{expires_ms}")
        if not hmac.compare_digest(_digest(signature), _digest(expected)):
            raise InvalidToken(
                "the session token is not valid (not issued by this server, or the server "
                "restarted): create a new session"
            )
        if not hmac.compare_digest(_digest(token_session), _digest(session_id)):
            raise TokenForAnotherSession(
                "this token belongs to another session: use the token returned with this "
                "session's id"
            )
        now = time.time() if now_s is None else now_s
        expired = now * MS_PER_S >= int(expires_ms)
        if expired and not (use is TokenUse.CONTROL and connected):
            raise TokenExpired(
                f"the session token expired (tokens start a session for {self.ttl_s:g} s after "
                "it is created): create a new session and connect within that time"
            )


def _redact_parameter(match: re.Match[str]) -> str:
    if not unquote_plus(match["name"]).lower().endswith(TOKEN_PARAMETER):
        return match[0]
    return f"{match['name']}={REDACTED}"


def redact_tokens(text: str) -> str:
    """``text`` with the value of every ``*token`` query parameter replaced by ``[redacted]``,
    whatever the spelling of its name (``tok%65n=`` is ``token=``)."""
    return QUERY_PARAMETER.sub(_redact_parameter, text)


class TokenRedactor(logging.Filter):
    """Blanks ``token=...`` in a log record's message and string arguments (never drops it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_tokens(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True

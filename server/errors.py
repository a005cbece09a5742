"""Errors as RFC 9457 problem details: every 4xx/5xx answer is ``application/problem+json``.

Owns ``Problem`` (an HTTP error with type, title, status, detail and optional headers and
extension members), the mapping from the domain's typed exceptions (sessions, avatars and
their photos, offers, the engine, credentials: 401 for missing, invalid or expired ones, 403 for
another session's token) to problems, and ``install_problem_handlers`` which makes FastAPI answer
every error -- including request validation errors and unknown routes -- in that format.

Knows nothing about how sessions or engines work, only which of their errors mean what.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from headcast.pipeline.avatar_photo import PhotoTooLarge, UnsupportedPhoto
from headcast.pipeline.engine import EngineNotReady
from headcast.server.auth import (
    AuthError,
    InvalidApiKey,
    InvalidToken,
    MissingCredentials,
    TokenExpired,
    TokenForAnotherSession,
)
from headcast.server.avatars import (
    AvatarFailed,
    AvatarInUse,
    AvatarNotReady,
    DefaultAvatarKept,
    TooManyAvatars,
    UnknownAvatar,
)
from headcast.server.registry import CapacityReached, UnknownSession
from headcast.streaming.peer import NoIceCandidates, OfferError
from headcast.streaming.session_config import AlreadyConnected, PrepareFailed, SessionEnded

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:headcast:problem:"
"""Problem ``type`` URIs are this prefix plus a slug, e.g. ``urn:headcast:problem:capacity``."""

ENGINE_LOADING_RETRY_AFTER_S = 5
"""Retry-After sent while the engine loads, in seconds."""

CAPACITY_RETRY_AFTER_S = 10
"""Retry-After sent when every session slot is taken, in seconds."""

AVATAR_RETRY_AFTER_S = 2
"""Retry-After sent while an avatar is being prepared, in seconds."""


class Problem(Exception):
    """An HTTP error answered as problem details."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        body = {
            "type": PROBLEM_TYPE_PREFIX + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        return JSONResponse(
            jsonable_encoder(body),
            status_code=self.status,
            headers=self.headers,
            media_type=PROBLEM_CONTENT_TYPE,
        )


BEARER_CHALLENGE = "Bearer"
"""``WWW-Authenticate`` of a request that sent no credentials (RFC 6750)."""

INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'
"""``WWW-Authenticate`` of a request whose credentials were refused (RFC 6750)."""


def unauthorized(
    detail: str, *, slug: str = "unauthorized", challenge: str = BEARER_CHALLENGE
) -> Problem:
    return Problem(401, slug, detail, headers={"WWW-Authenticate": challenge})


def forbidden(detail: str) -> Problem:
    return Problem(403, "forbidden", detail)


def problem_for(error: Exception) -> Problem | None:
    """The problem a domain error means, or ``None`` if it is not a known domain error."""
    match error:
        case MissingCredentials():
            return unauthorized(str(error))
        case InvalidApiKey() | InvalidToken():
            return unauthorized(str(error), challenge=INVALID_TOKEN_CHALLENGE)
        case TokenExpired():
            return unauthorized(str(error), slug="token-expired", challenge=INVALID_TOKEN_CHALLENGE)
        case TokenForAnotherSession():
            return forbidden(str(error))
        case UnknownSession():
            return Problem(404, "unknown-session", str(error), title="Unknown session")
        case UnknownAvatar():
            return Problem(404, "unknown-avatar", str(error), title="Unknown avatar")
        case AvatarNotReady():
            return Problem(
                409,
                "avatar-not-ready",
                str(error),
                title="The avatar is still being prepared",
                headers={"Retry-After": str(AVATAR_RETRY_AFTER_S)},
            )
        case AvatarFailed():
            return Problem(409, "avatar-failed", str(error), title="The avatar failed to prepare")
        case AvatarInUse():
            return Problem(409, "avatar-in-use", str(error), title="A session uses the avatar")
        case DefaultAvatarKept():
            return Problem(409, "avatar-default", str(error), title="The default avatar stays")
        case TooManyAvatars():
            return Problem(409, "avatar-count", str(error), title="Too many avatars")
        case UnsupportedPhoto():
            return Problem(415, "unsupported-image", str(error), title="Unsupported image")
        case PhotoTooLarge():
            return Problem(413, "image-too-large", str(error), title="Image too large")
        case CapacityReached():
            return Problem(
                429,
                "capacity",
                str(error),
                title="Every session slot is taken",
                headers={"Retry-After": str(CAPACITY_RETRY_AFTER_S)},
            )
        case EngineNotReady():
            return Problem(
                503,
                "engine-not-ready",
                f"{error}; retry in {ENGINE_LOADING_RETRY_AFTER_S} s",
                title="The engine is not ready",
                headers={"Retry-After": str(ENGINE_LOADING_RETRY_AFTER_S)},
            )
        case OfferError():
            return Problem(400, "bad-offer", str(error), title="The offer cannot be answered")
        case AlreadyConnected():
            return Problem(
                409,
                "already-connected",
                f"{error}; create a new session for a new connection",
                title="The session already has a connection",
            )
        case SessionEnded():
            return Problem(
                409, "session-ended", f"{error}; create a new session", title="Session ended"
            )
        case PrepareFailed():
            return Problem(
                500, "engine-error", str(error), title="The engine could not prepare the avatar"
            )
        case NoIceCandidates():
            return Problem(500, "no-ice-candidates", str(error), title="No ICE candidates")
    return None


def install_problem_handlers(app: FastAPI) -> None:
    """Answer problems, domain errors, HTTP errors and validation errors as problem details."""

    async def on_problem(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, Problem)
        return error.response()

    async def on_domain_error(_request: Request, error: Exception) -> JSONResponse:
        problem = problem_for(error)
        if problem is None:  # pragma: no cover - registered only for mapped types
            raise error
        if problem.status >= 500:
            logger.error("%s: %s", type(error).__name__, error)
        return problem.response()

    async def on_http_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        slug = HTTPStatus(error.status_code).phrase.lower().replace(" ", "-")
        return Problem(
            error.status_code, slug, str(error.detail), headers=dict(error.headers or {})
        ).response()

    async def on_validation_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        errors = [
            {
                "loc": list(item.get("loc", ())),
                "msg": item.get("msg", ""),
                "type": item.get("type", ""),
            }
            for item in error.errors()
        ]
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return Problem(
            422,
            "invalid-request",
            f"the request does not match the API: {summary}",
            title="Invalid request",
            extra={"errors": errors},
        ).response()

    async def on_unexpected(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=error)
        return Problem(  # the exception's text stays in the log: it may quote the request
            500,
            "internal-error",
            "the server failed on this request; its log says why",
            title="Internal server error",
        ).response()

    app.add_exception_handler(Problem, on_problem)
    for domain_error in (
        AuthError,
        UnknownSession,
        UnknownAvatar,
        AvatarNotReady,
        AvatarFailed,
        AvatarInUse,
        DefaultAvatarKept,
        TooManyAvatars,
        UnsupportedPhoto,
        PhotoTooLarge,
        CapacityReached,
        EngineNotReady,
        OfferError,
        AlreadyConnected,
        SessionEnded,
        PrepareFailed,
        NoIceCandidates,
    ):
        app.add_exception_handler(domain_error, on_domain_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)

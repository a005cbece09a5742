"""The FastAPI app factory.

Owns ``create_app(settings)``: builds the app (no app exists at import time), its per-app
``Metrics``, the credentials it checks (API keys; open local-demo mode without them, which
the startup log says), the request-body bounds and the CORS allow-list middleware, the
``Runtime`` whose lifespan starts
the engine thread (the engine loads on it while the server already answers) and, on exit,
closes every session and then the engine; the problem-details error handlers and the
routers.

Knows nothing about how sessions, engines or WebRTC work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from headcast.pipeline.engine import Engine
from headcast.server.auth import ApiKeys, TokenRedactor
from headcast.server.errors import install_problem_handlers
from headcast.server.metrics import Metrics
from headcast.server.request_body import BodyLimitMiddleware, BodyLimits
from headcast.server.routes import audio_ws, avatars, control, health, sessions, webrtc, whep
from headcast.server.routes.web import mount_static, web_router
from headcast.server.runtime import Runtime
from headcast.server.settings import Settings

logger = logging.getLogger(__name__)

API_VERSION = "0.1.0"

CORS_METHODS = ("GET", "POST", "DELETE", "PATCH")
"""PATCH: a WHEP player on another origin must see the resource's 405 (no trickle ICE)."""

CORS_REQUEST_HEADERS = ("Authorization", "Content-Type")
CORS_EXPOSED_HEADERS = ("Retry-After", "WWW-Authenticate", "Location", "Link")
"""Response headers a cross-origin page may read (backing off on 429 / 503, why a 401, the
WHEP resource and its ICE servers)."""

CORS_PREFLIGHT_MAX_AGE_S = 600
"""How long a browser may cache a preflight answer, in seconds."""

URL_LOGGERS = ("uvicorn.access", "uvicorn.error")
"""Loggers that write request URLs (WebSocket URLs carry ``?token=``): tokens are redacted."""


def log_access_policy(settings: Settings, api_keys: ApiKeys) -> None:
    """Say in the log who may create sessions and which other sites may call the API."""
    if api_keys.required:
        logger.info(
            "API keys required: POST /v1/sessions needs 'Authorization: Bearer <API key>' "
            "(%d key(s) configured)",
            len(api_keys),
        )
    else:
        logger.warning(
            "OPEN MODE: no API keys are configured (HEADCAST_API_KEYS), so anyone who can "
            "reach %s:%d can create sessions; fine for a local demo, set API keys before "
            "exposing the server",
            settings.host,
            settings.port,
        )
    if settings.cors_allow_origins:
        logger.info(
            "CORS: cross-origin calls allowed from %s", ", ".join(settings.cors_allow_origins)
        )


def create_app(
    settings: Settings, engine: Engine | None = None, *, freeze_startup_heap: bool = False
) -> FastAPI:
    """Build the app for ``settings``; ``engine`` replaces the configured one (tests).

    ``freeze_startup_heap`` (``headcast serve``, one app per process): once started, the
    objects alive are frozen out of the garbage collector's scans (``server.garbage``).
    """
    metrics = Metrics()
    api_keys = ApiKeys(key.get_secret_value() for key in settings.api_keys)
    runtime = Runtime(settings, metrics, engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log_access_policy(settings, api_keys)
        redactor = TokenRedactor()
        for name in URL_LOGGERS:
            logging.getLogger(name).addFilter(redactor)
        try:
            try:
                await runtime.start()
            except BaseException:
                await runtime.stop()  # release whatever started (threads) before failing
                raise
            if freeze_startup_heap:
                runtime.garbage.freeze_startup_heap()
            try:
                yield
            finally:
                await runtime.stop()
        finally:
            for name in URL_LOGGERS:
                logging.getLogger(name).removeFilter(redactor)

    app = FastAPI(
        title="headcast",
        version=API_VERSION,
        summary="Real-time streaming talking-head server",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime
    app.state.api_keys = api_keys
    # Inside CORS (added first = nearer the routes), so a 413 carries the CORS headers too.
    app.add_middleware(
        BodyLimitMiddleware,
        limits=BodyLimits(
            default_bytes=settings.max_request_bytes,
            routes=(
                (webrtc.OFFER_PATH, settings.max_offer_bytes),
                (whep.WHEP_PATH, settings.max_offer_bytes),
                (avatars.AVATARS_PATH, settings.avatar_max_bytes),
            ),
        ),
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=CORS_PREFLIGHT_MAX_AGE_S,
        )
    install_problem_handlers(app)
    app.include_router(sessions.router)
    app.include_router(avatars.router)
    app.include_router(webrtc.router)
    app.include_router(whep.router)
    app.include_router(control.router)
    app.include_router(audio_ws.router)
    app.include_router(health.router)
    app.include_router(web_router())
    mount_static(app)
    return app

"""The FastAPI app factory.

Owns ``create_app(settings)``: builds the app (no app exists at import time), its per-app
``Metrics``, the ``Runtime`` whose lifespan starts the engine thread (the engine loads on it
while the server already answers) and, on exit, closes every session and then the engine;
the problem-details error handlers and the routers.

Knows nothing about how sessions, engines or WebRTC work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from pipeline.engine import Engine
from server.engines import create_engine
from server.errors import install_problem_handlers
from server.metrics import Metrics
from server.routes import health, sessions, webrtc
from server.routes.web import mount_static, web_router
from server.runtime import Runtime
from server.settings import Settings

logger = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the app for ``settings``; ``engine`` replaces the configured one (tests)."""
    metrics = Metrics()
    runtime = Runtime(settings, engine if engine is not None else create_engine(settings), metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await runtime.start()
        except BaseException:
            await runtime.stop()  # release whatever started (threads) before failing
            raise
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="headcast",
        version=API_VERSION,
        summary="Real-time streaming talking-head server",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime
    install_problem_handlers(app)
    app.include_router(sessions.router)
    app.include_router(webrtc.router)
    app.include_router(health.router)
    app.include_router(web_router())
    mount_static(app)
    return app

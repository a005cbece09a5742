"""The app's long-lived services and their start and stop order.

Owns ``Runtime``: the media executor (installed as the loop's default executor, so aiortc's
encoders use its pre-started threads), the ``EngineWorker`` (the engine loads on its own
thread; the server answers meanwhile), the avatars, the session tokens' signer, the
``SessionRegistry`` (with its capacity and lifecycle policies), and ``readiness`` for
``/readyz`` (which also settles the capacity once the engine is warm). ``start`` and
``stop`` are called by the app's lifespan; ``stop`` closes every session before it stops
the engine thread.

Knows nothing about routes or HTTP.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiortc import RTCIceServer

from pipeline.engine import Engine, EngineWorker
from server.auth import SessionTokens
from server.capacity import CapacityPolicy
from server.engines import load_avatars
from server.lifecycle import LifecyclePolicy
from server.metrics import Metrics
from server.registry import SessionRegistry
from server.settings import Settings
from server.turn import TurnMinter
from streaming.codecs import VideoCodec
from streaming.executor import start_media_executor
from streaming.ice import HostCandidatePolicy
from streaming.peer import PeerConfig
from streaming.session_config import SessionConfig

logger = logging.getLogger(__name__)


class ReadyState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class Readiness:
    """Whether the engine can take sessions, and why not."""

    state: ReadyState
    engine: str
    description: str
    detail: str
    load_seconds: float | None = None


def peer_config(settings: Settings) -> PeerConfig:
    """The WebRTC side of ``settings``."""
    return PeerConfig(
        ice_servers=tuple(
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in settings.ice_servers
        ),
        relay_only=settings.ice_relay_only,
        host_candidates=HostCandidatePolicy(
            include_loopback=settings.offers_loopback, loopback_only=settings.ice_loopback_only
        ),
        video_codec=VideoCodec(settings.video_codec),
        connect_timeout_s=settings.connect_timeout_s,
        peer_timeout_s=settings.peer_timeout_s,
    )


def turn_minter(settings: Settings) -> TurnMinter | None:
    """Per-session TURN credentials of ``settings``, valid for a session's longest life."""
    if not settings.turn_urls or settings.turn_secret is None:
        return None
    return TurnMinter(
        tuple(settings.turn_urls),
        settings.turn_secret.get_secret_value(),
        lifetime_s=settings.max_duration_s,
    )


def session_config(settings: Settings) -> SessionConfig:
    """The media timing side of ``settings``."""
    return SessionConfig(
        height=settings.height, width=settings.width, latency_budget_s=settings.latency_budget_s
    )


def lifecycle_policy(settings: Settings) -> LifecyclePolicy:
    """The session timeouts of ``settings``."""
    return LifecyclePolicy(
        no_show_timeout_s=settings.no_show_timeout_s,
        idle_timeout_s=settings.idle_timeout_s,
        max_duration_s=settings.max_duration_s,
    )


def capacity_policy(settings: Settings) -> CapacityPolicy:
    """Where the session limit of ``settings`` comes from."""
    return CapacityPolicy(
        max_sessions=settings.max_sessions, fallback=settings.max_sessions_fallback
    )


class Runtime:
    """The services one app runs; built by ``create_app``, started by its lifespan."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.worker = EngineWorker(engine)
        self.tokens = SessionTokens(settings.session_token_ttl_s)
        self.executor: ThreadPoolExecutor | None = None
        self._registry: SessionRegistry | None = None

    @property
    def registry(self) -> SessionRegistry:
        if self._registry is None:
            raise RuntimeError("the runtime is not started")
        return self._registry

    async def start(self) -> None:
        """Start the media threads and the engine thread, load the avatars."""
        loop = asyncio.get_running_loop()
        self.executor = start_media_executor(self.settings.media_threads)
        loop.set_default_executor(self.executor)
        self.metrics.bind_loop(loop)
        self.worker.start()  # the engine loads on its thread from here on
        avatars = await loop.run_in_executor(self.executor, load_avatars, self.settings)
        self._registry = SessionRegistry(
            worker=self.worker,
            avatars=avatars,
            session_config=session_config(self.settings),
            peer_config=peer_config(self.settings),
            turn=turn_minter(self.settings),
            capacity=capacity_policy(self.settings),
            lifecycle=lifecycle_policy(self.settings),
            tokens=self.tokens,
            metrics=self.metrics,
            executor=self.executor,
        )

    async def stop(self) -> None:
        """Close every session, then stop the engine thread and the media threads."""
        if self._registry is not None:
            await self._registry.close_all("the server is shutting down")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.worker.shutdown)  # no-op if never started
        self.metrics.bind_loop(None)
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        logger.info("runtime stopped")

    @property
    def readiness(self) -> Readiness:
        engine = self.engine
        if self.worker.load_error is not None:
            return Readiness(
                ReadyState.FAILED,
                engine.name,
                engine.description,
                f"engine {engine.name!r} failed to load: {self.worker.load_error}; "
                "see the server log, fix the cause and restart",
            )
        if not self.worker.is_ready or self._registry is None or self._registry.capacity is None:
            return Readiness(
                ReadyState.LOADING,
                engine.name,
                engine.description,
                f"engine {engine.name!r} is loading and warming up",
            )
        return Readiness(
            ReadyState.READY,
            engine.name,
            engine.description,
            f"engine {engine.name!r} is ready",
            self.worker.load_seconds,
        )

"""The app's long-lived services and their start and stop order.

Owns ``Runtime``: the media executor (installed as the loop's default executor, so aiortc's
encoders use its pre-started threads), the ``EngineGroups`` (planned from ``gpus`` and
``gpus_per_session``; each group's engine loads on its own thread or worker processes while
the server answers), the ``AvatarCatalog`` (``default`` and the stored avatars, prepared in
the background), the session tokens' signer, the ``SessionRegistry`` (with its lifecycle
policy), the engine groups' gauges, and ``readiness`` for ``/readyz`` (every group's state;
the server is ready while one group is). ``start`` and ``stop`` are called by the app's
lifespan; ``stop`` closes every session and stops preparing avatars before it stops the
engine groups.

Knows nothing about routes or HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiortc import RTCIceServer

from headcast.pipeline.engine import Engine
from headcast.server.auth import SessionTokens
from headcast.server.avatar_store import AvatarStore
from headcast.server.avatars import AvatarCatalog, CatalogLimits
from headcast.server.capacity import CapacityPolicy
from headcast.server.engine_groups import EngineGroups, GroupState, GroupStatus
from headcast.server.engines import avatar_assets_key, engine_options, load_default_avatar
from headcast.server.garbage import GarbagePolicy
from headcast.server.group_plan import CPU_DEVICE, GroupPlan, plan_groups, visible_cuda_devices
from headcast.server.lifecycle import LifecyclePolicy
from headcast.server.metrics import Metrics
from headcast.server.registry import SessionRegistry
from headcast.server.settings import Settings
from headcast.server.turn import TurnMinter
from headcast.streaming.codecs import VideoCodec
from headcast.streaming.executor import start_media_executor
from headcast.streaming.generation_gate import IdleMode
from headcast.streaming.ice import HostCandidatePolicy
from headcast.streaming.peer import PeerConfig
from headcast.streaming.session_config import SessionConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    """Whether the engine can take sessions, and why not."""

    state: GroupState
    """The server's: ready once a group is, failed once every group is, else loading."""
    engine: str
    description: str
    detail: str
    load_seconds: float | None = None
    groups: tuple[GroupStatus, ...] = ()
    """Every engine group's state (the server is ready while one group is)."""


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
        height=settings.height,
        width=settings.width,
        latency_budget_s=settings.latency_budget_s,
        idle_mode=IdleMode(settings.idle_mode),
        speech_wait_max_s=settings.speech_wait_max_s,
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
        max_sessions=settings.max_sessions,
        fallback=settings.max_sessions_fallback,
        generation_slots=settings.generation_slots,
        loop=IdleMode(settings.idle_mode) is IdleMode.LOOP,
    )


class Runtime:
    """The services one app runs; built by ``create_app``, started by its lifespan."""

    def __init__(self, settings: Settings, metrics: Metrics, engine: Engine | None = None) -> None:
        """``engine`` replaces the configured engine groups by one in-process group (tests)."""
        self.settings = settings
        self.metrics = metrics
        self.garbage = GarbagePolicy()
        """Collects the reference cycles a session leaves once it ends (``server.garbage``)."""
        self.plans: list[GroupPlan] = (
            [GroupPlan(0, (CPU_DEVICE,), in_process=True)]
            if engine is not None
            else plan_groups(settings, visible_cuda_devices(settings.engine))
        )
        self.groups = EngineGroups(
            self.plans,
            engine_name=settings.engine,
            options=engine_options(settings),
            policy=capacity_policy(settings),
            restarts=settings.group_restarts,
            engine=engine,
            on_failure=self._count_failure,
            log_level=settings.log_level.upper(),
        )
        self.tokens = SessionTokens(settings.session_token_ttl_s)
        self.executor: ThreadPoolExecutor | None = None
        self._registry: SessionRegistry | None = None
        self._avatars: AvatarCatalog | None = None

    @property
    def engine(self) -> Engine:
        """The engine of the first group (what the server runs)."""
        return self.groups.engine

    @property
    def registry(self) -> SessionRegistry:
        if self._registry is None:
            raise RuntimeError("the runtime is not started")
        return self._registry

    @property
    def avatars(self) -> AvatarCatalog:
        if self._avatars is None:
            raise RuntimeError("the runtime is not started")
        return self._avatars

    async def start(self) -> None:
        """Start the media threads and the engine groups, load the avatars."""
        loop = asyncio.get_running_loop()
        self.executor = start_media_executor(self.settings.media_threads)
        loop.set_default_executor(self.executor)
        self.metrics.bind_loop(loop)
        self._export_groups()
        self.groups.start()  # the engines load on their threads / processes from here on
        default = await loop.run_in_executor(self.executor, load_default_avatar, self.settings)
        avatars = AvatarCatalog(
            store=AvatarStore(self.settings.avatar_store_dir),
            default=default,
            limits=CatalogLimits(
                height=self.settings.height,
                width=self.settings.width,
                max_pixels=self.settings.avatar_max_pixels,
                max_count=self.settings.avatar_max_count,
            ),
            engines=self.groups,
            assets_key=avatar_assets_key(self.settings),
            metrics=self.metrics,
            executor=self.executor,
        )
        await avatars.start()
        self._avatars = avatars
        self._registry = SessionRegistry(
            engines=self.groups,
            avatars=avatars,
            session_config=session_config(self.settings),
            peer_config=peer_config(self.settings),
            turn=turn_minter(self.settings),
            garbage=self.garbage,
            lifecycle=lifecycle_policy(self.settings),
            tokens=self.tokens,
            metrics=self.metrics,
            executor=self.executor,
        )

    async def stop(self) -> None:
        """Close every session, then stop the engine groups and the media threads."""
        if self._registry is not None:
            await self._registry.close_all("the server is shutting down")
        if self._avatars is not None:
            await self._avatars.stop()
        await self.groups.stop()  # no-op for groups never started
        self.garbage.cancel()
        self.metrics.bind_loop(None)
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        logger.info("runtime stopped")

    @property
    def readiness(self) -> Readiness:
        engine = self.engine
        statuses = tuple(self.groups.statuses())
        states = [status.state for status in statuses]
        ready = states.count(GroupState.READY)
        of_groups = f": {ready} of {len(states)} engine groups ready" if len(states) > 1 else ""
        if ready and self._registry is not None:
            return Readiness(
                GroupState.READY,
                engine.name,
                engine.description,
                f"engine {engine.name!r} is ready{of_groups}",
                max(s.load_seconds or 0.0 for s in statuses if s.state is GroupState.READY),
                statuses,
            )
        if states and all(state is GroupState.FAILED for state in states):
            return Readiness(
                GroupState.FAILED,
                engine.name,
                engine.description,
                f"engine {engine.name!r}: {self.groups.not_ready_reason()}",
                groups=statuses,
            )
        return Readiness(
            GroupState.LOADING,
            engine.name,
            engine.description,
            f"engine {engine.name!r} is loading and warming up{of_groups}",
            groups=statuses,
        )

    # -- metrics of the groups -------------------------------------------------------------------

    def _export_groups(self) -> None:
        """Every group's series from the start; its gauges read the groups at scrape time."""
        metrics = self.metrics
        metrics.sessions_capacity.set_function(lambda: float(self.groups.capacity or 0))
        metrics.bind_avatar_evictions(self.groups.avatar_cache_evictions)
        for plan in self.plans:
            self._export_group(plan.index)

    def _export_group(self, index: int) -> None:
        """Group ``index``'s series; its gauges read its status at scrape time."""
        metrics = self.metrics
        label = str(index)
        metrics.add_group(label)

        def status() -> GroupStatus:
            return self.groups.status(index)

        metrics.group_ready.labels(group=label).set_function(
            lambda: float(status().state is GroupState.READY)
        )
        metrics.group_sessions.labels(group=label).set_function(lambda: float(status().sessions))
        metrics.group_capacity.labels(group=label).set_function(lambda: float(status().capacity))
        metrics.generation_slots.labels(group=label).set_function(
            lambda: float(status().generation_slots)
        )
        metrics.generation_slots_busy.labels(group=label).set_function(
            lambda: float(status().generation_busy)
        )

    def _count_failure(self, index: int) -> None:
        self.metrics.group_failures.labels(group=str(index)).inc()

"""The server's live sessions: slots, ids, tokens, lifecycle, and the streaming session behind each.

Owns ``SessionRegistry`` (create within the capacity of the engine groups -- each session
placed on a group by ``EngineGroups.acquire`` -- issue each session its token, look up,
record the client's connection with ``mark_connected``, forward the offer, delete, close all at
shutdown; every session is released when its lifecycle ends: no-show, idle, maximum duration) and
``ManagedSession`` (what the HTTP side knows about one session). Every exit path goes through
``AvatarSession.close``, which releases the peer connection, tasks, mailbox and engine state;
its ``on_closed`` callback frees the slot and stops the session's timers. A session whose
engine group dies gets an ``engine_failed`` error event and is closed.

Knows nothing about HTTP status codes: it raises typed errors that ``server.errors`` maps.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from headcast.pipeline.engine import EngineNotReady
from headcast.pipeline.media import Avatar
from headcast.server.auth import SessionTokens
from headcast.server.avatars import UnknownAvatar
from headcast.server.engine_groups import CapacityReached, EngineGroups, Lease
from headcast.server.garbage import GarbagePolicy
from headcast.server.lifecycle import LifecycleObserver, LifecyclePolicy, SessionLifecycle
from headcast.server.metrics import Metrics, RejectReason
from headcast.server.turn import TurnMinter
from headcast.streaming.events import ErrorCode, ErrorEvent
from headcast.streaming.peer import PeerConfig
from headcast.streaming.push import PushFormat
from headcast.streaming.session import AvatarSession
from headcast.streaming.session_config import AudioSource, PrepareFailed, SessionConfig

logger = logging.getLogger(__name__)

SESSION_ID_BYTES = 9
"""Random bytes in a session id (12 URL-safe characters)."""


class UnknownSession(LookupError):
    """No live session has this id (never created, deleted, or expired)."""


class SessionAvatars(Protocol):
    """Where sessions get their avatar (``server.avatars.AvatarCatalog``)."""

    async def avatar_for_session(self, avatar_id: str) -> Avatar:
        """The avatar to animate; raises ``UnknownAvatar``, or an error saying why it cannot
        be used yet."""
        ...


__all__ = [
    "CapacityReached",
    "ManagedSession",
    "SessionRegistry",
    "UnknownAvatar",
    "UnknownSession",
]

GROUP_LOST_GRACE_S = 0.25
"""Time the ``engine_failed`` error event of a session whose engine group died gets to leave
on the data channel before the peer connection closes (closing aborts SCTP, dropping unsent
messages), in seconds."""


@dataclass
class ManagedSession:
    """One session as the HTTP side sees it."""

    id: str
    token: str = field(repr=False)
    """The session's token (``server.auth.SessionTokens``); never logged."""

    avatar: str
    created_at: datetime
    expires_at: datetime
    """The token starts the session (offer / WebSocket) until this; an unconnected session
    is released by then."""

    media: AvatarSession
    lifecycle: SessionLifecycle = field(repr=False)
    lease: Lease = field(repr=False)
    """The session's slot on its engine group."""
    peer_config: PeerConfig = field(repr=False)
    """The session's WebRTC set-up: the static ICE servers plus its own TURN credentials."""

    audio_sockets: int = 0
    """Audio WebSockets open on this session now (bounded by ``max_audio_sockets``)."""

    @property
    def connected(self) -> bool:
        """True once the client connected (offer answered or audio WebSocket open)."""
        return self.lifecycle.connected


class SessionRegistry:
    """Every live session of one app."""

    def __init__(
        self,
        *,
        engines: EngineGroups,
        avatars: SessionAvatars,
        session_config: SessionConfig,
        peer_config: PeerConfig,
        lifecycle: LifecyclePolicy,
        tokens: SessionTokens,
        metrics: Metrics,
        executor: Executor | None = None,
        turn: TurnMinter | None = None,
        garbage: GarbagePolicy | None = None,
    ) -> None:
        self._engines = engines
        self._avatars = avatars
        self._session_config = session_config
        self.peer_config = peer_config
        self._turn = turn
        self._lifecycle_policy = lifecycle
        self.tokens = tokens
        self._metrics = metrics
        self._garbage = garbage
        self._executor = executor
        self._sessions: dict[str, ManagedSession] = {}
        self._seeds = 0
        self._ending: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    def avatar_in_use(self, avatar_id: str) -> bool:
        """True while a live session animates avatar ``avatar_id``."""
        return any(managed.avatar == avatar_id for managed in self._sessions.values())

    @property
    def capacity(self) -> int | None:
        """Session slots of the ready engine groups, or ``None`` while none is ready."""
        return self._engines.capacity

    async def create(
        self,
        avatar_name: str,
        *,
        audio_source: AudioSource = AudioSource.MIC,
        push_format: PushFormat | None = None,
    ) -> ManagedSession:
        """Open a session for ``avatar_name`` on the least-loaded engine group with a free
        slot and wait until the engine has prepared it.

        ``audio_source`` says where its speech comes from; ``push_format`` bounds a push
        session's audio (``None``: the defaults).
        """
        if self.capacity is None:
            self._metrics.rejected(RejectReason.NOT_READY)
            raise EngineNotReady(self._engines.not_ready_reason())
        avatar = await self._avatars.avatar_for_session(avatar_name)
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        try:
            lease = self._engines.acquire(lambda reason: self._group_lost(session_id, reason))
        except CapacityReached:
            self._metrics.rejected(RejectReason.CAPACITY)
            raise
        token = self.tokens.issue(session_id)  # re-issued once prepared (below)
        lifecycle = SessionLifecycle(
            self._lifecycle_policy,
            lambda reason: self._end(session_id, reason),
            no_show_s=self.tokens.ttl_s,  # an unconnected session with an expired token is dead
        )
        self._seeds += 1
        try:
            media = AvatarSession(
                lease.worker,
                avatar,
                self._session_config,
                audio_source=audio_source,
                push_format=push_format,
                observer=LifecycleObserver(self._metrics.for_group(lease.group), lifecycle),
                slot=lease.slot,
                executor=self._executor,
                seed=self._seeds,
                on_closed=lambda _media, reason: self._forget(session_id, reason),
                label=f"session {session_id}",
            )
        except BaseException:
            lease.release()
            raise
        managed = ManagedSession(
            id=session_id,
            token=token.value,
            avatar=avatar_name,
            created_at=datetime.now(UTC),
            expires_at=token.expires_at,
            media=media,
            lifecycle=lifecycle,
            lease=lease,
            peer_config=self.peer_config,  # its own TURN credentials once prepared (below)
        )
        self._sessions[session_id] = managed  # the slot is taken from here on
        self._metrics.sessions_active.set(len(self._sessions))
        try:
            await media.wait_prepared()
        except (PrepareFailed, asyncio.CancelledError):
            await media.close("the engine could not prepare the avatar")
            raise
        # The client's clocks start now, when it gets the session: however long the engine
        # took to prepare, the token's start window and the no-show limit are whole.
        token = self.tokens.issue(session_id)
        managed.token, managed.expires_at = token.value, token.expires_at
        managed.peer_config = self._session_peer_config(session_id)
        lifecycle.start()
        logger.info(
            "session %s created for avatar %r on engine group %s", session_id, avatar_name,
            lease.group,
        )  # fmt: skip
        return managed

    def _session_peer_config(self, session_id: str) -> PeerConfig:
        """The static ICE servers, plus TURN credentials minted for ``session_id`` (valid
        for the session's longest life) when a TURN secret is configured."""
        if self._turn is None:
            return self.peer_config
        servers = (*self.peer_config.ice_servers, self._turn.ice_server(session_id))
        return replace(self.peer_config, ice_servers=servers)

    def get(self, session_id: str) -> ManagedSession:
        """The live session ``session_id``; raises ``UnknownSession``."""
        managed = self._sessions.get(session_id)
        if managed is None:
            raise UnknownSession(f"no live session {session_id!r}; it may have ended or expired")
        return managed

    def mark_connected(self, session_id: str) -> ManagedSession:
        """The client of ``session_id`` connected (WebRTC answered, or audio WebSocket open).

        Stops the no-show timer and starts the idle timer; idempotent. Called by the offer
        route (through ``offer``) and by the audio WebSocket route. Raises ``UnknownSession``.
        """
        managed = self.get(session_id)
        if not managed.connected:
            managed.lifecycle.mark_connected()
            logger.info("session %s connected", session_id)
        return managed

    def keep_alive(self, session_id: str) -> None:
        """Client activity outside the media (an HTTP keep-alive): re-arms the idle timer."""
        self.get(session_id).lifecycle.activity()

    async def offer(self, managed: ManagedSession, sdp: str) -> str:
        """Answer the session's WebRTC offer and mark it connected; returns the answer SDP."""
        answer = await managed.media.accept_offer(sdp, managed.peer_config)
        self.mark_connected(managed.id)
        return answer

    async def delete(self, managed: ManagedSession, reason: str = "deleted by the client") -> None:
        """Close the session and free its slot."""
        await managed.media.close(reason)

    async def close_all(self, reason: str) -> None:
        """Close every session (server shutdown)."""
        sessions = list(self._sessions.values())
        await asyncio.gather(*(m.media.close(reason) for m in sessions), return_exceptions=False)

    def _end(self, session_id: str, reason: str) -> None:
        """A lifecycle limit was reached: close the session (on a task; timers are sync)."""
        managed = self._sessions.get(session_id)
        if managed is None or managed.media.closed:
            return
        logger.info("session %s: %s; releasing it", session_id, reason)
        task = asyncio.get_running_loop().create_task(
            managed.media.close(reason), name=f"session {session_id}-end"
        )
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        task.add_done_callback(_log_failure)

    def _group_lost(self, session_id: str, reason: str) -> None:
        """The session's engine group died: tell the client (an ``engine_failed`` error
        event on every transport), then close the session."""
        managed = self._sessions.get(session_id)
        if managed is None or managed.media.closed:
            return
        managed.media.events.publish(
            ErrorEvent(
                code=ErrorCode.ENGINE_FAILED,
                message=f"the engine serving this session failed ({reason}); the session "
                "ends: create a new session",
            )
        )
        task = asyncio.get_running_loop().create_task(
            self._close_after(managed, GROUP_LOST_GRACE_S, f"its engine group failed: {reason}"),
            name=f"session {session_id}-group-lost",
        )
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        task.add_done_callback(_log_failure)

    @staticmethod
    async def _close_after(managed: ManagedSession, delay_s: float, reason: str) -> None:
        await asyncio.sleep(delay_s)
        await managed.media.close(reason)

    def _forget(self, session_id: str, reason: str) -> None:
        managed = self._sessions.pop(session_id, None)
        if managed is None:
            return
        managed.lease.release()
        managed.lifecycle.cancel()
        self._metrics.sessions_active.set(len(self._sessions))
        logger.info("session %s released (%s); %d active", session_id, reason, len(self._sessions))
        if self._garbage is not None:
            self._garbage.session_ended()  # its aiortc objects sit in reference cycles


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "releasing a session at the end of its lifecycle failed", exc_info=task.exception()
        )

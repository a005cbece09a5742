"""The server's live sessions: slots, ids, tokens, expiry, and the streaming session behind each.

Owns ``SessionRegistry`` (create within ``max_sessions``, look up, authenticate with a
constant-time token comparison, forward the offer, delete, close all at shutdown; a session
that gets no offer before its token expires is released) and ``ManagedSession`` (what the
HTTP side knows about one session). The media itself is ``streaming.session.AvatarSession``.

Knows nothing about HTTP status codes: it raises typed errors that ``server.errors`` maps.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pipeline.engine import EngineNotReady, EngineWorker
from pipeline.media import Avatar
from server.metrics import Metrics
from streaming.peer import PeerConfig
from streaming.session import AvatarSession, PrepareFailed, SessionConfig

logger = logging.getLogger(__name__)

SESSION_ID_BYTES = 9
"""Random bytes in a session id (12 URL-safe characters)."""

TOKEN_BYTES = 32
"""Random bytes in a session token (43 URL-safe characters)."""


class UnknownSession(LookupError):
    """No live session has this id (never created, deleted, or expired)."""


class UnknownAvatar(LookupError):
    """No avatar has this name."""


class CapacityReached(RuntimeError):
    """Every session slot is taken."""


@dataclass
class ManagedSession:
    """One session as the HTTP side sees it."""

    id: str
    token: str = field(repr=False)
    avatar: str
    created_at: datetime
    expires_at: datetime
    """The offer must arrive before this; later the session is released."""

    media: AvatarSession
    offered: bool = False
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    def token_matches(self, candidate: str) -> bool:
        """Constant-time comparison of ``candidate`` with this session's token."""
        return hmac.compare_digest(candidate.encode(), self.token.encode())


class SessionRegistry:
    """Every live session of one app."""

    def __init__(
        self,
        *,
        worker: EngineWorker,
        avatars: Mapping[str, Avatar],
        session_config: SessionConfig,
        peer_config: PeerConfig,
        max_sessions: int,
        token_ttl_s: float,
        metrics: Metrics,
        executor: Executor | None = None,
    ) -> None:
        self._worker = worker
        self._avatars = dict(avatars)
        self._session_config = session_config
        self.peer_config = peer_config
        self.max_sessions = max_sessions
        self._token_ttl = timedelta(seconds=token_ttl_s)
        self._metrics = metrics
        self._executor = executor
        self._sessions: dict[str, ManagedSession] = {}
        self._seeds = 0
        self._expiring: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def avatar_names(self) -> list[str]:
        return sorted(self._avatars)

    async def create(self, avatar_name: str) -> ManagedSession:
        """Open a session for ``avatar_name`` and wait until the engine has prepared it."""
        if not self._worker.is_ready:
            reason = self._worker.load_error
            raise EngineNotReady(
                f"the engine failed to load ({reason})" if reason else "the engine is still loading"
            )
        avatar = self._avatars.get(avatar_name)
        if avatar is None:
            raise UnknownAvatar(
                f"no avatar named {avatar_name!r}; available: {', '.join(self.avatar_names)}"
            )
        if len(self._sessions) >= self.max_sessions:
            raise CapacityReached(
                f"all {self.max_sessions} session slots are in use; retry later or raise "
                "max_sessions (HEADCAST_MAX_SESSIONS) if the engine keeps up"
            )
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        self._seeds += 1
        media = AvatarSession(
            self._worker,
            avatar,
            self._session_config,
            observer=self._metrics,
            executor=self._executor,
            seed=self._seeds,
            on_closed=lambda _media, reason: self._forget(session_id, reason),
            label=f"session {session_id}",
        )
        now = datetime.now(UTC)
        managed = ManagedSession(
            id=session_id,
            token=secrets.token_urlsafe(TOKEN_BYTES),
            avatar=avatar_name,
            created_at=now,
            expires_at=now + self._token_ttl,
            media=media,
        )
        self._sessions[session_id] = managed  # the slot is taken from here on
        self._metrics.sessions_active.set(len(self._sessions))
        managed.expiry = asyncio.get_running_loop().call_later(
            self._token_ttl.total_seconds(), self._expire, managed
        )
        try:
            await media.wait_prepared()
        except (PrepareFailed, asyncio.CancelledError):
            await media.close("the engine could not prepare the avatar")
            raise
        logger.info("session %s created for avatar %r", session_id, avatar_name)
        return managed

    def get(self, session_id: str) -> ManagedSession:
        """The live session ``session_id``; raises ``UnknownSession``."""
        managed = self._sessions.get(session_id)
        if managed is None:
            raise UnknownSession(f"no live session {session_id!r}; it may have ended or expired")
        return managed

    async def offer(self, managed: ManagedSession, sdp: str) -> str:
        """Answer the session's WebRTC offer; returns the answer SDP."""
        answer = await managed.media.accept_offer(sdp, self.peer_config)
        managed.offered = True
        if managed.expiry is not None:
            managed.expiry.cancel()
            managed.expiry = None
        return answer

    async def delete(self, managed: ManagedSession, reason: str = "deleted by the client") -> None:
        """Close the session and free its slot."""
        await managed.media.close(reason)

    async def close_all(self, reason: str) -> None:
        """Close every session (server shutdown)."""
        sessions = list(self._sessions.values())
        await asyncio.gather(*(m.media.close(reason) for m in sessions), return_exceptions=False)

    def _expire(self, managed: ManagedSession) -> None:
        managed.expiry = None
        if managed.offered or managed.media.closed:
            return
        logger.info("session %s got no offer within its token lifetime; releasing it", managed.id)
        task = asyncio.get_running_loop().create_task(
            managed.media.close("no offer before the token expired"),
            name=f"session {managed.id}-expire",
        )
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)
        task.add_done_callback(_log_failure)

    def _forget(self, session_id: str, reason: str) -> None:
        managed = self._sessions.pop(session_id, None)
        if managed is None:
            return
        if managed.expiry is not None:
            managed.expiry.cancel()
        self._metrics.sessions_active.set(len(self._sessions))
        logger.info("session %s released (%s); %d active", session_id, reason, len(self._sessions))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("releasing an expired session failed", exc_info=task.exception())

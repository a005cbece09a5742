"""``WS /v1/sessions/{id}/audio?token=...``: chatbot mode -- pushed audio in, session events out.

Owns the audio WebSocket of a push session: the token check at connect (a refused socket
gets an ``error`` event and close code 4000 + the HTTP status; 4409 also when the session
already has ``max_audio_sockets`` sockets open), then one reader (binary frames -> the
session's push intake, answered with ``audio.queued`` or an ``error``; text frames -> the
session's commands) and one writer (the session's events and those replies, in order,
through a bounded queue; a client that lets it overflow is dropped, with one warning).
When the session ends the socket gets ``error {session_ended}`` and is closed. Also owns
``PushFormatDep``: the push bounds from the settings, for session creation.

Knows nothing about how audio becomes frames (``streaming.session``) or how tokens are made
(``server.deps`` / ``server.auth``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from headcast.pipeline.media import MS_PER_S
from headcast.server.auth import AuthError, TokenUse
from headcast.server.deps import registry_of, session_for_token
from headcast.server.errors import Problem, problem_for
from headcast.server.registry import ManagedSession, UnknownSession
from headcast.server.runtime import Runtime
from headcast.server.settings import Settings
from headcast.streaming.events import AudioQueued, ErrorCode, ErrorEvent, Event, ProtocolError
from headcast.streaming.push import PushFormat
from headcast.streaming.session import AvatarSession
from headcast.streaming.session_config import AudioSource, SessionEnded

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/sessions", tags=["audio"])


MAX_PENDING_MESSAGES = 512
"""Messages waiting to be written to one socket; a client that does not read its socket
for that long is dropped (its input is no longer read, nothing more is queued for it, one
warning says so) instead of growing the queue."""

CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
"""WebSocket close codes (RFC 6455): normal closure; server error."""

WRITER_DRAIN_TIMEOUT_S = 5.0
"""Longest wait for queued messages and the close frame to go out when the server closes."""

CLOSE_REASON_MAX_CHARS = 120
"""Close reasons are limited to 123 bytes by RFC 6455 (ours are ASCII)."""


class NotPushSession(RuntimeError):
    """The audio WebSocket was opened for a session whose audio source is the microphone."""


class TooManySockets(RuntimeError):
    """The push session already has as many audio WebSockets open as it may have."""


async def push_format(request: Request) -> PushFormat:
    """The push bounds from the settings, at the default sample rate."""
    settings: Settings = request.app.state.settings
    return PushFormat(
        max_queued_s=settings.push_max_queued_ms / MS_PER_S,
        max_frame_bytes=settings.push_max_frame_bytes,
    )


PushFormatDep = Annotated[PushFormat, Depends(push_format)]


def authorize_socket(websocket: WebSocket, session_id: str, token: str | None) -> ManagedSession:
    """The push session this socket may use, or the domain error that says why not.

    The one place the socket's credentials are checked: the token must start the session
    (unexpired) unless the session is already connected (a pusher reconnecting).
    """
    runtime: Runtime = websocket.app.state.runtime
    registry = registry_of(runtime)
    use = TokenUse.CONTROL if registry.get(session_id).connected else TokenUse.START
    managed = session_for_token(registry, runtime.metrics, session_id, token, use)
    if managed.media.audio_source is not AudioSource.PUSH:
        raise NotPushSession(
            f"session {session_id} takes its audio from the WebRTC microphone; create the "
            'session with "audio_source": "push" to push audio over this socket'
        )
    limit: int = websocket.app.state.settings.max_audio_sockets
    if managed.audio_sockets >= limit:
        raise TooManySockets(
            f"session {session_id} already has {managed.audio_sockets} audio socket(s) open, "
            f"the most it may have ({limit}); close one (or let it time out) before opening "
            "another"
        )
    registry.mark_connected(session_id)
    return managed


REFUSAL_CODES: dict[int, ErrorCode] = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.UNKNOWN_SESSION,
    409: ErrorCode.NOT_PUSH_SESSION,
    503: ErrorCode.SERVER_STARTING,
}
"""The ``error`` code of a refused socket, by the HTTP status the same refusal has elsewhere."""

CLOSE_CODE_HTTP_OFFSET = 4000
"""A refused socket is closed with 4000 + the HTTP status (4401, 4403, 4404, 4409, 4503)."""


def _refusal(error: Exception) -> tuple[int, ErrorCode, str]:
    """(HTTP status, ``error`` code, what to do) for a refused socket."""
    if isinstance(error, NotPushSession):
        return 409, ErrorCode.NOT_PUSH_SESSION, str(error)
    if isinstance(error, TooManySockets):
        return 409, ErrorCode.TOO_MANY_SOCKETS, str(error)
    problem = error if isinstance(error, Problem) else problem_for(error)
    if problem is None or problem.status not in REFUSAL_CODES:
        raise error
    return problem.status, REFUSAL_CODES[problem.status], problem.detail


@router.websocket("/{session_id}/audio")
async def audio_socket(
    websocket: WebSocket,
    session_id: str,
    token: Annotated[str | None, Query()] = None,
) -> None:
    """Push PCM16 audio and commands; receive the session's events (docs/protocol.md).

    A refused connection is accepted, told why in an ``error`` event and closed with
    4000 + the HTTP status: browsers cannot read an HTTP refusal, but they see close codes.
    """
    try:
        managed = authorize_socket(websocket, session_id, token)
    except (AuthError, UnknownSession, NotPushSession, TooManySockets, Problem) as exc:
        status, code, detail = _refusal(exc)
        logger.info("audio socket for session %s refused (%d): %s", session_id, status, detail)
        await websocket.accept()
        event = ErrorEvent(code=code, message=detail)
        try:
            await websocket.send_text(event.to_json())
            await websocket.close(CLOSE_CODE_HTTP_OFFSET + status, code.value)
        except (WebSocketDisconnect, OSError) as gone:
            logger.debug("a refused audio socket left first: %s", gone)
        return
    managed.audio_sockets += 1  # counted from here, so a concurrent connect sees it
    try:
        await websocket.accept()
        await PushSocket(websocket, managed.media).run()
    finally:
        managed.audio_sockets -= 1


class PushSocket:
    """One accepted audio socket of one push session, until either side ends it."""

    def __init__(self, websocket: WebSocket, media: AvatarSession) -> None:
        self._websocket = websocket
        self._media = media
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue(MAX_PENDING_MESSAGES)
        self._close_code = CLOSE_NORMAL
        self._close_reason = ""
        self._stalled = asyncio.Event()
        """Set once the outbox overflowed: the client does not read; the socket is dropped."""

    async def run(self) -> None:
        """Serve the socket; returns once it is closed."""
        unsubscribe = self._media.subscribe_events(self._enqueue)
        writer = asyncio.create_task(self._write(), name="audio-socket-writer")
        reader = asyncio.create_task(self._read(), name="audio-socket-reader")
        ended = asyncio.create_task(self._media.wait_closed(), name="audio-socket-session")
        stalled = asyncio.create_task(self._stalled.wait(), name="audio-socket-stalled")
        tasks = (reader, ended, writer, stalled)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            server_closes = True
            if stalled.done():  # the writer is stuck on a client that does not read
                server_closes = False
            elif reader.done() and not reader.cancelled() and reader.exception() is not None:
                logger.error("audio socket reader failed", exc_info=reader.exception())
                self._enqueue(
                    ErrorEvent(
                        code=ErrorCode.INTERNAL_ERROR,
                        message="the server failed on this socket's input; see its log",
                    )
                )
                self._finish(CLOSE_INTERNAL_ERROR, "internal error")
            elif ended.done() and not reader.done():
                self._enqueue(
                    ErrorEvent(
                        code=ErrorCode.SESSION_ENDED,
                        message=f"the session ended ({self._media.close_reason}); "
                        "create a new session",
                    )
                )
                self._finish(CLOSE_NORMAL, "session ended")
            else:  # the client left, or the writer closed a socket that does not read
                server_closes = False
            if server_closes:  # flush what is queued, then the close frame (bounded wait)
                await asyncio.wait({writer}, timeout=WRITER_DRAIN_TIMEOUT_S)
        finally:
            unsubscribe()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _enqueue(self, event: Event) -> None:
        self._send(event.to_json())

    def _send(self, text: str) -> None:
        if self._stalled.is_set():
            return  # the socket is being dropped: nothing more is queued, nothing logged
        try:
            self._outbox.put_nowait(text)
        except asyncio.QueueFull:
            logger.warning(
                "an audio socket has not read its last %d messages; dropping it",
                MAX_PENDING_MESSAGES,
            )
            self._stalled.set()

    def _finish(self, code: int, reason: str) -> None:
        """Ask the writer to close the socket after what is queued."""
        self._close_code, self._close_reason = code, reason[:CLOSE_REASON_MAX_CHARS]
        while True:
            try:
                self._outbox.put_nowait(None)
                return
            except asyncio.QueueFull:  # make room: the close matters more than an event
                self._outbox.get_nowait()

    async def _write(self) -> None:
        websocket = self._websocket
        try:
            while (text := await self._outbox.get()) is not None:
                await websocket.send_text(text)
            if (
                websocket.application_state is WebSocketState.CONNECTED
                and websocket.client_state is WebSocketState.CONNECTED
            ):
                await websocket.close(self._close_code, self._close_reason)
        except (WebSocketDisconnect, OSError) as exc:
            logger.debug("audio socket writer stopped: %s", exc)  # the client went away

    async def _read(self) -> None:
        websocket = self._websocket
        while not self._stalled.is_set():
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            text = message.get("text")
            try:
                if data is not None:
                    queued_ms = self._media.push_pcm16(data)
                    self._enqueue(AudioQueued(queued_ms=queued_ms))
                elif text is not None:
                    self._media.handle_text(text)
            except ProtocolError as exc:
                self._enqueue(exc.event())
            except SessionEnded as exc:  # the session task closes the socket
                self._enqueue(ErrorEvent(code=ErrorCode.SESSION_ENDED, message=str(exc)))

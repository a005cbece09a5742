"""The session's event and command vocabulary, shared by the audio WebSocket and the ``events``
data channel.

Owns the event types a session publishes (``session.ready``, ``speech.started``,
``speech.ended``, ``interrupted``, ``chunk.stats``, ``audio.queued``, ``error``) and their JSON
encoding, the stable ``ErrorCode`` enum, the client commands (``audio.end``, ``interrupt``,
``keep_alive``) and their parsing into typed values or a ``ProtocolError`` that names what
the client should change, and ``EventBus``, the fan-out from one session to its listeners.

Knows nothing about sockets, data channels, sessions or the server: transports hand text in
and take text out.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

logger = logging.getLogger(__name__)

MAX_COMMAND_CHARS = 1024
"""Longest text command accepted, in characters (real commands are under 40)."""


class EventType(enum.StrEnum):
    """The ``type`` of every event a session sends."""

    SESSION_READY = "session.ready"
    SPEECH_STARTED = "speech.started"
    SPEECH_ENDED = "speech.ended"
    INTERRUPTED = "interrupted"
    CHUNK_STATS = "chunk.stats"
    AUDIO_QUEUED = "audio.queued"
    ERROR = "error"


class ErrorCode(enum.StrEnum):
    """Stable codes of ``error`` events (listed in docs/protocol.md; never renamed)."""

    BAD_JSON = "bad_json"
    """A text frame is not a JSON object."""

    BAD_COMMAND = "bad_command"
    """A JSON command has no string ``type`` or is too long."""

    UNKNOWN_COMMAND = "unknown_command"
    """A command's ``type`` is not ``audio.end``, ``interrupt`` or ``keep_alive``."""

    BAD_AUDIO_FRAME = "bad_audio_frame"
    """A binary frame is not whole PCM16 samples (empty, or an odd number of bytes)."""

    FRAME_TOO_LARGE = "frame_too_large"
    """A binary frame is longer than the server's bound; split it."""

    AUDIO_BUFFER_FULL = "audio_buffer_full"
    """Accepting the frame would queue more audio than the bound; it was dropped whole."""

    NOT_PUSH_SESSION = "not_push_session"
    """Pushed audio or ``audio.end`` for a session whose audio source is the microphone (on
    the audio WebSocket: refused at connect, close code 4409)."""

    TOO_MANY_SOCKETS = "too_many_sockets"
    """The push session already has as many audio WebSockets open as it may have
    (``max_audio_sockets``; close code 4409)."""

    UNAUTHORIZED = "unauthorized"
    """The audio WebSocket's ``?token=`` is missing, invalid or expired (close code 4401)."""

    FORBIDDEN = "forbidden"
    """The token belongs to another session (close code 4403)."""

    UNKNOWN_SESSION = "unknown_session"
    """No live session has this id: it ended, expired or never existed (close code 4404)."""

    SERVER_STARTING = "server_starting"
    """The server is still starting; retry in a few seconds (close code 4503)."""

    SESSION_ENDED = "session_ended"
    """The session closed; the reason is in the message."""

    INTERNAL_ERROR = "internal_error"
    """The server failed; see its log."""

    ENGINE_FAILED = "engine_failed"
    """The engine group serving the session failed (a worker process died); the session
    ends right after this event: create a new session (other groups keep serving)."""

    SPEECH_WAIT_TIMEOUT = "speech_wait_timeout"
    """``idle_mode: loop``: the speech waited ``speech_wait_max_s`` for a generation slot
    (every slot of the session's engine group was busy with other sessions' speech) and was
    dropped: the audio queued then is gone, the session goes on; send the next utterance."""


class CommandType(enum.StrEnum):
    """The commands a client may send as ``{"type": ...}``."""

    AUDIO_END = "audio.end"
    """End of the utterance: the partial chunk is padded with silence and played."""

    INTERRUPT = "interrupt"
    """Drop queued audio and unplayed frames; back to idle within 200 ms."""

    KEEP_ALIVE = "keep_alive"
    """Nothing but proof of life (resets the idle timeout)."""


class ProtocolError(ValueError):
    """A client message broke the protocol; ``code`` is the ``error`` event's code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def event(self) -> ErrorEvent:
        """The ``error`` event that tells the client about it."""
        return ErrorEvent(code=self.code, message=self.message)


@dataclass(frozen=True)
class Event:
    """Base of all events: a frozen record whose fields are the JSON members."""

    type: ClassVar[EventType]

    def to_dict(self) -> dict[str, object]:
        """The JSON object: ``type`` first, then the fields."""
        body: dict[str, object] = {"type": self.type.value}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            body[name] = value.value if isinstance(value, enum.Enum) else value
        return body

    def to_json(self) -> str:
        """The event as one compact JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class SessionReady(Event):
    """The first video frame was sent: the avatar is live."""

    type: ClassVar[EventType] = EventType.SESSION_READY


@dataclass(frozen=True)
class SpeechStarted(Event):
    """The first sample of an utterance is being played (sent with its first frame)."""

    type: ClassVar[EventType] = EventType.SPEECH_STARTED
    wait_ms: int = 0
    """How long the utterance waited for a generation slot before the engine took it, in
    milliseconds (``idle_mode: loop``, every slot busy; 0 otherwise)."""


@dataclass(frozen=True)
class SpeechEnded(Event):
    """The last sample of an utterance was played."""

    type: ClassVar[EventType] = EventType.SPEECH_ENDED
    duration_ms: int
    """Media time from the utterance's first sample to its last, in milliseconds."""


@dataclass(frozen=True)
class Interrupted(Event):
    """An interrupt took effect: queued audio and unplayed frames are gone."""

    type: ClassVar[EventType] = EventType.INTERRUPTED
    played_ms: int
    """How much of the interrupted utterance was played before the cut, in milliseconds
    (0 when no utterance was playing)."""


@dataclass(frozen=True)
class ChunkStats(Event):
    """One chunk (1.12 s of media) went out to the tracks."""

    type: ClassVar[EventType] = EventType.CHUNK_STATS
    index: int
    """The chunk's media index (chunk k covers media time [1.12 k, 1.12 (k+1)) s)."""

    compute_ms: float | None
    """The engine's compute time for it, in ms; ``None`` when the chunk went out idle."""

    rtf: float | None
    """Compute time over 1.12 s (at most 1 keeps up); ``None`` when it went out idle."""

    queued_ms: int
    """Pushed audio waiting to be taken into a chunk, in milliseconds."""

    problem: str | None = None
    """Why the chunk went out idle (``late``, ``engine_error``, ``engine_busy``,
    ``bad_output``, ``interrupted``, or ``loop``: a silent session in ``idle_mode: loop``
    played its idle loop), or ``None`` for an engine chunk."""


@dataclass(frozen=True)
class AudioQueued(Event):
    """A pushed binary frame was accepted."""

    type: ClassVar[EventType] = EventType.AUDIO_QUEUED
    queued_ms: int
    """Pushed audio now waiting to be taken into a chunk, in milliseconds."""


@dataclass(frozen=True)
class ErrorEvent(Event):
    """Something the client sent was refused, or the session failed."""

    type: ClassVar[EventType] = EventType.ERROR
    code: ErrorCode
    message: str
    """What happened and what to do about it."""


def parse_command(text: str) -> CommandType:
    """Parse one text command; raises ``ProtocolError`` saying what is wrong with it.

    Members other than ``type`` are ignored (room for later additions).
    """
    if len(text) > MAX_COMMAND_CHARS:
        raise ProtocolError(
            ErrorCode.BAD_COMMAND,
            f"a command is at most {MAX_COMMAND_CHARS} characters, got {len(text)}; "
            'send e.g. {"type": "interrupt"}',
        )
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            ErrorCode.BAD_JSON,
            f'text frames must be JSON objects such as {{"type": "audio.end"}} ({exc.msg} '
            f"at character {exc.pos}); send audio as binary frames",
        ) from None
    if not isinstance(body, dict):
        raise ProtocolError(
            ErrorCode.BAD_JSON,
            f"a command must be a JSON object, got {type(body).__name__}; "
            'send e.g. {"type": "interrupt"}',
        )
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            ErrorCode.BAD_COMMAND,
            'a command needs a string "type" member: one of '
            + ", ".join(c.value for c in CommandType),
        )
    try:
        return CommandType(kind)
    except ValueError:
        raise ProtocolError(
            ErrorCode.UNKNOWN_COMMAND,
            f"unknown command {kind[:64]!r}; the commands are "
            + ", ".join(c.value for c in CommandType),
        ) from None


Listener = Callable[[Event], None]
"""Receives a session's events on the event loop; must not block (queue and return)."""


class EventBus:
    """Fans a session's events out to its listeners (a WebSocket, a data channel, tests).

    A listener that raises is logged and removed, so one broken transport cannot stop the
    others or the session that publishes.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; returns the function that removes it (idempotent)."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    @property
    def listeners(self) -> int:
        """How many listeners are subscribed."""
        return len(self._listeners)

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every listener."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("an event listener failed on %s; removing it", event.type.value)
                if listener in self._listeners:
                    self._listeners.remove(listener)

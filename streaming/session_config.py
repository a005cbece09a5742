"""A session's settings and errors: ``SessionConfig``, ``AudioSource`` and ``SessionError``.

Owns the timing and size settings of one live session (latency budget, intake jitter, emit
margin, audio buffer, engine mailbox, idle mode and the bound on speech waiting for a
generation slot), their defaults and checks, where a session's speech
comes from, and the errors a session raises. Shared by the session's parts and the server,
which builds a ``SessionConfig`` from its settings and maps the errors to HTTP problems.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from headcast.pipeline.engine import DEFAULT_MAILBOX_SIZE
from headcast.pipeline.media import CHUNK_SECONDS
from headcast.streaming.generation_gate import IdleMode

DEFAULT_INTAKE_JITTER_S = 0.060
"""How long after a chunk boundary its audio is taken, in seconds: room for network jitter,
so a packet arriving a little late is not replaced by silence."""

DEFAULT_EMIT_MARGIN_S = 0.150
"""How long before its playout time a chunk must be ready, in seconds: the time needed to
convert 28 frames and queue them."""

DEFAULT_MAX_BUFFERED_AUDIO_S = 2 * CHUNK_SECONDS
"""Most received audio the intake holds before dropping the oldest, in seconds."""

DEFAULT_SPEECH_WAIT_MAX_S = 5.0
"""Longest a session's speech waits for a generation slot (``idle_mode: loop``) before it
is dropped, in seconds."""

DEFAULT_PREPARE_TIMEOUT_S = 60.0
"""How long the engine may take to prepare a session's avatar, in seconds."""


class AudioSource(enum.StrEnum):
    """Where a session's speech comes from (chosen before media starts)."""

    MIC = "mic"
    """The caller's WebRTC audio track (persona mode)."""

    PUSH = "push"
    """Audio pushed by the application: PCM16 over the WebSocket, or ``push_audio``."""


class SessionError(RuntimeError):
    """Base class of session errors."""


class AlreadyConnected(SessionError):
    """The session already has (or is negotiating) a peer connection."""


class SessionEnded(SessionError):
    """The session is closed."""


class PrepareFailed(SessionError):
    """The engine could not prepare the session's avatar."""


@dataclass(frozen=True)
class SessionConfig:
    """Timing and sizes of one session."""

    height: int
    """Height of the outgoing video, in pixels."""

    width: int
    """Width of the outgoing video, in pixels."""

    latency_budget_s: float = CHUNK_SECONDS
    """Time from taking a chunk's audio to playing it out, in seconds: the engine's compute
    time plus jitter and margin must fit in it (about one chunk at RTF < 0.85)."""

    intake_jitter_s: float = DEFAULT_INTAKE_JITTER_S
    """Delay after each chunk boundary before its audio is taken, in seconds."""

    emit_margin_s: float = DEFAULT_EMIT_MARGIN_S
    """A chunk not ready this long before its playout goes out idle, in seconds."""

    max_buffered_audio_s: float = DEFAULT_MAX_BUFFERED_AUDIO_S
    """Most received audio held before the oldest is dropped, in seconds."""

    mailbox_size: int = DEFAULT_MAILBOX_SIZE
    """Chunks the session may have in flight in the engine at once."""

    idle_mode: IdleMode = IdleMode.GENERATE
    """``generate``: silent chunks go through the engine too; ``loop``: a silent session
    plays its idle loop and takes no engine time (``streaming.generation_gate``)."""

    speech_wait_max_s: float = DEFAULT_SPEECH_WAIT_MAX_S
    """Longest speech waits for a generation slot before it is dropped (``loop``), in s."""

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"video size must be positive, got {self.width}x{self.height}")
        if self.latency_budget_s <= self.intake_jitter_s + self.emit_margin_s:
            raise ValueError(
                f"latency_budget_s ({self.latency_budget_s}) must exceed intake jitter "
                f"({self.intake_jitter_s}) plus emit margin ({self.emit_margin_s}) to leave "
                "the engine any compute time"
            )
        if self.speech_wait_max_s <= 0:
            raise ValueError(f"speech_wait_max_s must be positive, got {self.speech_wait_max_s}")
        if self.max_buffered_audio_s < CHUNK_SECONDS:
            raise ValueError(
                f"max_buffered_audio_s must hold at least one chunk ({CHUNK_SECONDS} s)"
            )

    @property
    def mic_buffer_s(self) -> float:
        """Microphone audio the intake holds, in seconds: in ``loop`` mode also the speech
        that waits for a generation slot."""
        if self.idle_mode is IdleMode.LOOP:
            return self.max_buffered_audio_s + self.speech_wait_max_s
        return self.max_buffered_audio_s

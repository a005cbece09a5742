"""Chatbot mode for the Python client: push PCM16 over the session's audio WebSocket, read events.

Owns ``PushSocket`` (an open ``WS /v1/sessions/{id}/audio``: ``send_pcm16``, ``send_audio``
from a float signal, the commands ``end``, ``interrupt`` and ``keep_alive``, and the server's
JSON events through ``next_event`` / ``wait_for``), ``EventQueue`` (events from any transport,
the data channel included, with a bounded wait for a given type) and ``to_pcm16``.

Knows nothing about the server's internals; speaks docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from types import TracebackType
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

logger = logging.getLogger(__name__)

PCM16_FULL_SCALE = 32767
"""Peak value of PCM16 samples."""

DEFAULT_FRAME_MS = 100
"""Audio per binary frame ``send_audio`` sends, in milliseconds."""

DEFAULT_EVENT_TIMEOUT_S = 10.0
"""Default bound on waiting for one event, in seconds."""

MS_PER_S = 1000


class EventTimeout(TimeoutError):
    """The awaited event did not arrive in time; ``seen`` holds the events read meanwhile."""

    def __init__(self, message: str, seen: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.seen = seen


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] -> PCM16 mono little-endian bytes."""
    clipped = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0)
    return np.round(clipped * PCM16_FULL_SCALE).astype("<i2").tobytes()


class EventQueue:
    """The JSON events received on one transport, in order, each with its arrival time."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.history: list[tuple[float, dict[str, Any]]] = []
        """Every event taken so far, as (``time.monotonic()`` at arrival, event)."""

    def put_text(self, text: str) -> None:
        """Add one received JSON text (called by the transport)."""
        event = json.loads(text)
        if not isinstance(event, dict):
            raise ValueError(f"the server sent a non-object event: {text[:200]}")
        self._queue.put_nowait((time.monotonic(), event))

    def drain(self) -> list[dict[str, Any]]:
        """Take every event received so far without waiting (into ``history``)."""
        taken: list[dict[str, Any]] = []
        while not self._queue.empty():
            arrived, event = self._queue.get_nowait()
            self.history.append((arrived, event))
            taken.append(event)
        return taken

    async def next_event(self, timeout_s: float = DEFAULT_EVENT_TIMEOUT_S) -> dict[str, Any]:
        """The next event; ``TimeoutError`` after ``timeout_s``."""
        arrived, event = await asyncio.wait_for(self._queue.get(), timeout_s)
        self.history.append((arrived, event))
        return event

    async def wait_for(
        self, event_type: str, timeout_s: float = DEFAULT_EVENT_TIMEOUT_S
    ) -> dict[str, Any]:
        """Read events until one of ``event_type`` arrives; ``EventTimeout`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen: list[dict[str, Any]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                event = await self.next_event(left)
            except TimeoutError:
                break
            seen.append(event)
            if event.get("type") == event_type:
                return event
        raise EventTimeout(
            f"no {event_type!r} event within {timeout_s:.1f} s; saw "
            f"{[e.get('type') for e in seen]}",
            seen,
        )


class PushSocket:
    """An open audio WebSocket of a push session. Use ``HeadcastClient.push_socket``."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self.events = EventQueue()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="push-reader")

    @classmethod
    async def connect(cls, url: str, timeout_s: float) -> PushSocket:
        """Open ``url`` (``ws://.../v1/sessions/{id}/audio?token=...``)."""
        connection = await asyncio.wait_for(websockets.connect(url), timeout_s)
        return cls(connection)

    async def __aenter__(self) -> PushSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def close_code(self) -> int | None:
        """The close code once the socket closed (``None`` while open)."""
        return self._connection.close_code

    async def wait_closed(self, timeout_s: float = DEFAULT_EVENT_TIMEOUT_S) -> int | None:
        """Wait until the server closes the socket; returns the close code."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
        return self.close_code

    async def close(self) -> None:
        await self._connection.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for message in self._connection:
                if isinstance(message, str):
                    self.events.put_text(message)
                else:
                    logger.warning("the server sent %d binary bytes; events are text", len(message))
        except ConnectionClosed as closed:  # the code (``close_code``) and the error event say why
            logger.info("the audio socket closed: %s", closed)

    # -- sending --------------------------------------------------------------------------

    async def send_pcm16(self, data: bytes) -> None:
        """Send one binary frame as is (PCM16 mono little-endian at the session's rate)."""
        await self._connection.send(data)

    async def send_text(self, text: str) -> None:
        """Send one text frame as is (a JSON command, or anything, for tests)."""
        await self._connection.send(text)

    async def send_audio(
        self,
        samples: np.ndarray,
        sample_rate: int,
        *,
        frame_ms: int = DEFAULT_FRAME_MS,
        realtime: bool = False,
    ) -> int:
        """Send float ``samples`` as PCM16 frames of ``frame_ms``; returns the frames sent.

        ``realtime`` paces the frames to wall time (as a TTS stream would arrive); otherwise
        they go as fast as the socket takes them (mind the server's queue bound).
        """
        per_frame = sample_rate * frame_ms // MS_PER_S
        started = time.monotonic()
        frames = 0
        for begin in range(0, samples.size, per_frame):
            if realtime:
                delay = started + frames * frame_ms / MS_PER_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send_pcm16(to_pcm16(samples[begin : begin + per_frame]))
            frames += 1
        return frames

    async def command(self, command_type: str) -> None:
        """Send ``{"type": command_type}``."""
        await self.send_text(json.dumps({"type": command_type}))

    async def end(self) -> None:
        """``audio.end``: the utterance is complete."""
        await self.command("audio.end")

    async def interrupt(self) -> None:
        """``interrupt``: drop queued audio and unplayed frames."""
        await self.command("interrupt")

    async def keep_alive(self) -> None:
        """``keep_alive``: proof of life without audio."""
        await self.command("keep_alive")

"""uvicorn's HTTP/1.1 protocol with a time limit on a request's head.

uvicorn times out a kept-alive connection only after a response; a connection that never
sends a request, or sends half of its request line and headers (slowloris), is held open
for ever and costs a file descriptor each. Owns ``HeadTimeoutProtocol``: uvicorn's h11
protocol that closes such a connection ``header_timeout_s`` after it connected, or after it
started sending on a kept-alive connection (a trickle does not re-arm the timer), unless a
whole request head arrived by then; and that stops dropping the rest of a body answered
early (a 401 or a 413 before it was read) ``drain_timeout_s`` after the answer. Bodies the
app reads are bounded in time by ``server.request_body``; WebSocket connections are left to
uvicorn's pings.

Knows nothing about the app; ``header_timeout_protocol`` makes the class uvicorn's
``http=`` option takes. docs/deployment.md says what a reverse proxy in front should add.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


class HeadTimeoutProtocol(H11Protocol):
    """``H11Protocol`` that closes a connection whose request head is late (see module doc)."""

    header_timeout_s: float = 10.0
    drain_timeout_s: float = 10.0
    """After an answer given before the request's body was read (a 401, a 413), the rest of
    the body is read and dropped for at most this long; then the connection is closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._upgraded = False

    def _answered(self) -> bool:
        """True when no request is being served (none yet, or its answer is sent)."""
        return not self._upgraded and (self.cycle is None or self.cycle.response_complete)

    def _waiting_for_head(self) -> bool:
        """True when the next bytes are (part of) a request head."""
        return self._answered() and self.conn.their_state is h11.IDLE

    def _draining(self) -> bool:
        """True when an answered request's body is still arriving (it is dropped)."""
        return self._answered() and self.conn.their_state is h11.SEND_BODY

    def _arm(self) -> None:
        if self._head_timer is None:
            timeout = self.drain_timeout_s if self._draining() else self.header_timeout_s
            self._head_timer = self.loop.call_later(timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_head() or self._draining():
            self._arm()  # a no-op when armed: a trickle does not push the limit back
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()
        if self._draining():  # answered early: the rest of the body has a time limit too
            self._arm()
        # else idle: uvicorn's keep-alive timer runs; ours starts with the next bytes

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._upgraded = True
        self._disarm()
        super().handle_websocket_upgrade(event)

    def _head_late(self) -> None:
        self._head_timer = None
        waiting, draining = self._waiting_for_head(), self._draining()
        if not (waiting or draining) or self.transport.is_closing():
            return
        logger.info(
            "closing an HTTP connection from %s: %s",
            f"{self.client[0]}:{self.client[1]}" if self.client else "?",
            f"no whole request head within {self.header_timeout_s:g} s"
            if waiting
            else f"still sending a refused body after {self.drain_timeout_s:g} s",
        )
        self.transport.close()


def header_timeout_protocol(
    header_timeout_s: float, drain_timeout_s: float
) -> type[HeadTimeoutProtocol]:
    """A ``HeadTimeoutProtocol`` class with these timeouts (uvicorn builds one per connection
    from the class it is given)."""
    if header_timeout_s <= 0 or drain_timeout_s <= 0:
        raise ValueError(
            f"timeouts must be positive, got {header_timeout_s} s and {drain_timeout_s} s"
        )
    return type(
        "HeadTimeoutProtocol",
        (HeadTimeoutProtocol,),
        {"header_timeout_s": header_timeout_s, "drain_timeout_s": drain_timeout_s},
    )

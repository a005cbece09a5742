"""Fuzzed command streams on the audio WebSocket of a live push session (hypothesis).

One push session on the shared puppet server streams to a loopback WebRTC client for the
whole test. Each example opens the session's audio socket, sends a random stream of valid
commands, junk text, junk JSON, PCM frames (even, odd, oversized), then an ``interrupt`` as
a sentinel, and checks the server answered every message as the protocol says: one
``audio.queued`` per acceptable PCM frame, one ``error`` per bad message, one
``interrupted`` per interrupt, and nothing else addressed to it. Afterwards the session still
streams video, the server answers ``/healthz``, and a new push session is served.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headcast_client import HeadcastClient, SessionInfo, WebRTCConnection, to_pcm16
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer

pytestmark = pytest.mark.slow

T = TypeVar("T")

COMMANDS = ("audio.end", "interrupt", "keep_alive")
MAX_FRAME_BYTES = 192_000
"""The server's default ``push_max_frame_bytes``."""

MAX_EXAMPLES = 30
EXAMPLE_DEADLINE = timedelta(seconds=10)
REPLY_TIMEOUT_S = 10.0
SURPLUS_WAIT_S = 0.05
STEP_TIMEOUT_S = 30.0
MIN_FRAMES_DURING_FUZZ = 25
"""Video frames the client must receive while the fuzz runs (it takes several seconds)."""


@dataclass
class Live:
    """A push session streaming to a client, on an event loop running in its own thread
    (so the WebRTC connection stays alive between hypothesis examples)."""

    loop: asyncio.AbstractEventLoop
    client: HeadcastClient
    session: SessionInfo
    connection: WebRTCConnection
    frames: list[int]
    drains: list[asyncio.Future[None]]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the session's loop and wait for it (bounded)."""
        return run_on(self.loop, coroutine)


def run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, STEP_TIMEOUT_S), loop)
    return future.result(STEP_TIMEOUT_S + 1)


async def _drain(track: Any, counter: list[int]) -> None:
    while True:
        await track.recv()
        counter[0] += 1


@pytest.fixture(scope="module")
def live(headcast_server: RunningServer) -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-client-loop", daemon=True)
    thread.start()
    frames = [0]

    async def start() -> Live:
        client = HeadcastClient(headcast_server.url, host_candidates=LOOPBACK_ONLY)
        session = await client.create_session(audio_source="push")
        connection = await client.connect_webrtc(session)
        drains = [
            asyncio.ensure_future(_drain(connection.video, frames)),
            asyncio.ensure_future(_drain(connection.audio, [0])),
        ]
        return Live(loop, client, session, connection, frames, drains)

    async def stop(state: Live) -> None:
        for drain in state.drains:
            drain.cancel()
        await asyncio.gather(*state.drains, return_exceptions=True)
        await state.client.delete_session(state.session)
        await state.connection.close()
        await state.client.aclose()

    try:
        state = run_on(loop, start())
        try:
            yield state
        finally:
            run_on(loop, stop(state))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STEP_TIMEOUT_S)
        loop.close()


def _command(kind: str) -> str:
    return json.dumps({"type": kind})


@dataclass(frozen=True)
class LargeFrame:
    """A PCM frame of ``size`` bytes near the bound (a short repr for hypothesis reports)."""

    size: int

    def data(self) -> bytes:
        return to_pcm16(np.full(self.size // 2, 0.05, np.float32)) + b"\x00" * (self.size % 2)


Message = str | bytes | LargeFrame

junk_type = st.one_of(
    st.text(max_size=16), st.integers(), st.none(), st.lists(st.integers(), max_size=3)
)
texts = st.one_of(
    st.sampled_from(COMMANDS).map(_command),
    st.fixed_dictionaries({"type": junk_type}, optional={"data": st.integers()}).map(json.dumps),
    st.text(max_size=120),
    st.sampled_from(["", "{", "[]", "null", '"interrupt"', '{"type": "interrupt"']),
)
frames = st.one_of(
    st.binary(max_size=3200),
    st.sampled_from([MAX_FRAME_BYTES - 1, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 2]).map(LargeFrame),
)
streams = st.lists(st.one_of(texts, frames), max_size=12)


def _expected(message: Message) -> str | None:
    """What the protocol promises for ``message``: ``pcm`` (``audio.queued``, or the error
    ``audio_buffer_full`` once the queue is at its bound), ``error``, ``interrupted``, or
    nothing."""
    if isinstance(message, LargeFrame | bytes):
        size = message.size if isinstance(message, LargeFrame) else len(message)
        return "error" if size > MAX_FRAME_BYTES or size % 2 or size == 0 else "pcm"
    try:
        body = json.loads(message)
    except ValueError:
        return "error"
    if not isinstance(body, dict) or body.get("type") not in COMMANDS:
        return "error"
    return "interrupted" if body["type"] == "interrupt" else None


def _reply_kind(event: dict[str, Any]) -> str | None:
    match event:
        case {"type": "audio.queued"} | {"type": "error", "code": "audio_buffer_full"}:
            return "pcm"
        case {"type": "error"}:
            return "error"
        case {"type": "interrupted"}:
            return "interrupted"
    return None  # session-wide events (chunk.stats, speech.*) are not replies


async def _exchange(live: Live, stream: list[Message]) -> tuple[dict[str, int], dict[str, int]]:
    expected = {"pcm": 0, "error": 0, "interrupted": 1}  # 1: the sentinel
    for message in stream:
        reply = _expected(message)
        if reply is not None:
            expected[reply] += 1
    seen = dict.fromkeys(expected, 0)
    async with await live.client.push_socket(live.session) as socket:
        for message in stream:
            if isinstance(message, LargeFrame):
                await socket.send_pcm16(message.data())
            elif isinstance(message, bytes):
                await socket.send_pcm16(message)
            else:
                await socket.send_text(message)
        await socket.interrupt()
        while seen["interrupted"] < expected["interrupted"]:
            kind = _reply_kind(await socket.events.next_event(REPLY_TIMEOUT_S))
            if kind is not None:
                seen[kind] += 1
        await asyncio.sleep(SURPLUS_WAIT_S)  # anything still arriving would be a surplus reply
        for event in socket.events.drain():
            if (kind := _reply_kind(event)) is not None:
                seen[kind] += 1
    return expected, seen


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=EXAMPLE_DEADLINE,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=streams)
# The client's loop thread (aiortc) draws from ``random`` while hypothesis generates data.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_fuzzed_command_streams_are_answered_as_the_protocol_says(
    live: Live, stream: list[Message]
) -> None:
    expected, seen = live.run(_exchange(live, stream))
    assert seen == expected


def test_server_still_serves_after_the_fuzz(live: Live, headcast_server: RunningServer) -> None:
    async def check() -> None:
        frames_before = live.frames[0]
        await asyncio.sleep(0.5)
        assert live.frames[0] > frames_before, "the fuzzed session stopped streaming"
        assert live.frames[0] >= MIN_FRAMES_DURING_FUZZ
        async with httpx.AsyncClient(base_url=headcast_server.url) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
        fresh = await live.client.create_session(audio_source="push")
        try:
            async with await live.client.push_socket(fresh) as socket:
                await socket.send_pcm16(to_pcm16(np.zeros(1600, np.float32)))
                assert await socket.events.wait_for("audio.queued") == {
                    "type": "audio.queued",
                    "queued_ms": 100,
                }
        finally:
            await live.client.delete_session(fresh)

    live.run(check())

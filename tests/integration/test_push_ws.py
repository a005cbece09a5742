"""Chatbot mode end to end: the audio WebSocket of a push session on the shared puppet server.

- happy path: a WAV file (24 kHz, resampled by the server) pushed over the socket after the
  WebRTC connection is up; the socket hears ``session.ready``, ``audio.queued`` per frame,
  ``chunk.stats``, ``speech.started`` and ``speech.ended`` whose ``duration_ms`` is within
  40 ms of the file's duration, and the two speech events arrive that far apart in wall time;
- protocol errors, each answered with its stable code while the socket stays usable:
  malformed JSON, a non-object, a command without a type, an unknown command, odd-length
  PCM, an oversized frame, and the queue bound (``audio_buffer_full`` exactly at the bound),
  all sent before the session has any media (no WebRTC yet);
- refused sockets (an ``error`` event, then close code 4000 + the HTTP status): no token
  4401, another session's token 4403, unknown session 4404, a mic session 4409; and session
  creation refusing a sample rate of 44.1 kHz and an unknown audio source.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headcast_client import HeadcastClient, HeadcastError, PushSocket, SessionInfo, to_pcm16
from tests.integration.conftest import LOOPBACK_ONLY, RunningServer
from tests.integration.test_loopback_webrtc import speech_like_signal

pytestmark = pytest.mark.slow

WAV_RATE_HZ = 24_000
WAV_SECONDS = 2.5
FRAME_MS = 100
DURATION_TOLERANCE_MS = 40
WALL_TOLERANCE_S = 0.25
"""How closely the wall time between speech.started and speech.ended follows the audio
(event delivery over loopback plus one 40 ms frame of firing granularity each)."""

EVENT_TIMEOUT_S = 15.0
DEFAULT_MAX_QUEUED_MS = 10_000
DEFAULT_MAX_FRAME_BYTES = 192_000


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(to_pcm16(samples))


def _read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.readframes(wav.getnframes()), wav.getframerate()


@pytest.fixture
async def client(headcast_server: RunningServer) -> AsyncIterator[HeadcastClient]:
    async with HeadcastClient(headcast_server.url, host_candidates=LOOPBACK_ONLY) as http:
        yield http


async def _drain(track: Any, stop: asyncio.Event) -> None:
    """Read a received track so the client's decoder does not pile frames up."""
    while not stop.is_set():
        await track.recv()


async def test_pushed_wav_plays_with_speech_events_matching_its_duration(
    client: HeadcastClient, tmp_path: Path
) -> None:
    wav_path = tmp_path / "utterance.wav"
    _write_wav(wav_path, speech_like_signal(WAV_SECONDS, WAV_RATE_HZ), WAV_RATE_HZ)
    pcm, rate = _read_wav(wav_path)
    session = await client.create_session(audio_source="push", sample_rate=rate)
    assert (session.audio_source, session.sample_rate) == ("push", rate)
    assert session.audio_path == f"/v1/sessions/{session.id}/audio"
    connection = await client.connect_webrtc(session)
    stop = asyncio.Event()
    drains = [asyncio.ensure_future(_drain(t, stop)) for t in (connection.video, connection.audio)]
    try:
        async with await client.push_socket(session) as socket:
            await socket.events.wait_for("session.ready", EVENT_TIMEOUT_S)
            frame_bytes = rate * FRAME_MS // 1000 * 2
            frames = [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
            for frame in frames:
                await socket.send_pcm16(frame)
            await socket.end()
            started = await socket.events.wait_for("speech.started", EVENT_TIMEOUT_S)
            started_at = socket.events.history[-1][0]
            ended = await socket.events.wait_for("speech.ended", EVENT_TIMEOUT_S)
            ended_at = socket.events.history[-1][0]
            seen = [event for _at, event in socket.events.history]
    finally:
        stop.set()
        await client.delete_session(session)
        await connection.close()
        for drain in drains:
            drain.cancel()
        await asyncio.gather(*drains, return_exceptions=True)

    assert started == {"type": "speech.started", "wait_ms": 0}
    queued = [e for e in seen if e["type"] == "audio.queued"]
    assert len(queued) == len(frames), f"one audio.queued per frame; saw {queued}"
    assert all(isinstance(e["queued_ms"], int) and e["queued_ms"] >= 0 for e in queued)
    assert max(e["queued_ms"] for e in queued) >= FRAME_MS
    stats = [e for e in seen if e["type"] == "chunk.stats"]
    assert stats, f"no chunk.stats among {seen}"
    assert set(stats[0]) == {"type", "index", "compute_ms", "rtf", "queued_ms", "problem"}
    assert [e for e in seen if e["type"] == "error"] == []
    audio_ms = len(pcm) / 2 / rate * 1000
    assert abs(ended["duration_ms"] - audio_ms) <= DURATION_TOLERANCE_MS, (ended, audio_ms)
    assert abs((ended_at - started_at) - audio_ms / 1000) <= WALL_TOLERANCE_S, (
        f"speech events {ended_at - started_at:.3f} s apart for {audio_ms:.0f} ms of audio"
    )


async def _expect_error(socket: PushSocket, code: str) -> dict[str, Any]:
    event = await socket.events.wait_for("error", EVENT_TIMEOUT_S)
    assert event["code"] == code, event
    assert isinstance(event["message"], str) and len(event["message"]) > 20, event
    return event


async def test_protocol_errors_have_stable_codes_and_leave_the_socket_usable(
    client: HeadcastClient,
) -> None:
    session = await client.create_session(audio_source="push")
    try:
        async with await client.push_socket(session) as socket:
            # No WebRTC yet: the session has no media; commands and audio are still served.
            await socket.send_text("{not json")
            await _expect_error(socket, "bad_json")
            await socket.send_text("[1, 2]")
            await _expect_error(socket, "bad_json")
            await socket.send_text(json.dumps({"kind": "interrupt"}))
            await _expect_error(socket, "bad_command")
            await socket.send_text(json.dumps({"type": "dance"}))
            event = await _expect_error(socket, "unknown_command")
            assert "audio.end" in event["message"] and "interrupt" in event["message"]
            await socket.send_pcm16(b"\x00" * 321)
            await _expect_error(socket, "bad_audio_frame")
            await socket.send_pcm16(b"\x00" * (DEFAULT_MAX_FRAME_BYTES + 2))
            await _expect_error(socket, "frame_too_large")
            await socket.keep_alive()

            frame = to_pcm16(np.full(1600, 0.1, dtype=np.float32))  # 100 ms at 16 kHz
            await socket.send_pcm16(frame)
            assert await socket.events.wait_for("audio.queued") == {
                "type": "audio.queued",
                "queued_ms": 100,
            }
            # Fill to the bound: every frame is accepted until the next would pass it.
            for expected_ms in range(200, DEFAULT_MAX_QUEUED_MS + 1, 100):
                await socket.send_pcm16(frame)
                event = await socket.events.wait_for("audio.queued")
                assert event["queued_ms"] == expected_ms
            await socket.send_pcm16(frame)
            full = await _expect_error(socket, "audio_buffer_full")
            assert str(DEFAULT_MAX_QUEUED_MS) in full["message"]

            await socket.interrupt()
            assert await socket.events.wait_for("interrupted") == {
                "type": "interrupted",
                "played_ms": 0,
            }
            await socket.send_pcm16(frame)
            assert (await socket.events.wait_for("audio.queued"))["queued_ms"] == 100
            await socket.end()
            await socket.keep_alive()
            await socket.send_text(json.dumps({"type": "interrupt", "extra": [1]}))
            await socket.events.wait_for("interrupted")
            errors = [e for _at, e in socket.events.history if e["type"] == "error"]
            assert len(errors) == 7, errors
    finally:
        await client.delete_session(session)


async def _refusal(url: str) -> tuple[int | None, dict[str, Any]]:
    """Connect to ``url``; the server must send one ``error`` event and close the socket."""
    async with await PushSocket.connect(url, EVENT_TIMEOUT_S) as socket:
        error = await socket.events.wait_for("error", EVENT_TIMEOUT_S)
        code = await socket.wait_closed(EVENT_TIMEOUT_S)
    return code, error


async def test_socket_refusals_say_why_and_close_with_4000_plus_the_http_status(
    client: HeadcastClient,
) -> None:
    push = await client.create_session(audio_source="push")
    mic = await client.create_session()
    try:
        url = client.audio_socket_url(push)
        code, error = await _refusal(url.split("?")[0])
        assert (code, error["code"]) == (4401, "unauthorized") and "token" in error["message"]
        other = client.audio_socket_url(
            SessionInfo(push.id, mic.token, push.expires_at, [], audio_path=push.audio_path)
        )
        code, error = await _refusal(other)
        assert (code, error["code"]) == (4403, "forbidden"), error
        code, error = await _refusal(url.replace(push.id, "no-such-session"))
        assert (code, error["code"]) == (4404, "unknown_session"), error
        code, error = await _refusal(client.audio_socket_url(mic))
        assert (code, error["code"]) == (4409, "not_push_session"), error
        assert '"audio_source": "push"' in error["message"], error
        # The refused sockets left the session usable.
        async with await client.push_socket(push) as socket:
            await socket.keep_alive()
            await socket.send_pcm16(to_pcm16(np.zeros(160, np.float32)))
            assert (await socket.events.wait_for("audio.queued"))["queued_ms"] == 10
    finally:
        await client.delete_session(push)
        await client.delete_session(mic)


async def test_session_creation_refuses_other_sample_rates_and_sources(
    client: HeadcastClient,
) -> None:
    with pytest.raises(HeadcastError) as refused:
        await client.create_session(audio_source="push", sample_rate=44_100)
    assert refused.value.status == 422
    assert "16000" in refused.value.problem["detail"], refused.value.problem
    with pytest.raises(HeadcastError) as refused:
        await client.create_session(audio_source="tts", sample_rate=16_000)
    assert refused.value.status == 422
    assert "push" in refused.value.problem["detail"], refused.value.problem


async def test_speech_events_time_is_the_played_time_not_the_push_time(
    client: HeadcastClient,
) -> None:
    """Audio pushed all at once plays in real time: speech.ended comes a duration later."""
    session = await client.create_session(audio_source="push")
    connection = await client.connect_webrtc(session, events=True)
    stop = asyncio.Event()
    drains = [asyncio.ensure_future(_drain(t, stop)) for t in (connection.video, connection.audio)]
    try:
        await connection.events.wait_for("session.ready", EVENT_TIMEOUT_S)
        async with await client.push_socket(session) as socket:
            pushed_at = time.monotonic()
            await socket.send_audio(speech_like_signal(1.5, 16_000), 16_000)
            await socket.end()
            # The data channel hears the same events as the socket.
            ended = await connection.events.wait_for("speech.ended", EVENT_TIMEOUT_S)
            ended_at = connection.events.history[-1][0]
    finally:
        stop.set()
        await client.delete_session(session)
        await connection.close()
        for drain in drains:
            drain.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
    assert abs(ended["duration_ms"] - 1500) <= DURATION_TOLERANCE_MS, ended
    assert ended_at - pushed_at >= 1.5, "speech.ended came before the audio could have played"

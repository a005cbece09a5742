"""The event and command vocabulary: JSON encoding, command parsing and its error codes, fan-out."""

from __future__ import annotations

import json

import pytest

from headcast.streaming.events import (
    MAX_COMMAND_CHARS,
    AudioQueued,
    ChunkStats,
    CommandType,
    ErrorCode,
    ErrorEvent,
    Event,
    EventBus,
    Interrupted,
    ProtocolError,
    SessionReady,
    SpeechEnded,
    SpeechStarted,
    parse_command,
)


def test_events_encode_as_compact_json_with_the_type_first() -> None:
    assert SessionReady().to_json() == '{"type":"session.ready"}'
    assert SpeechStarted().to_dict() == {"type": "speech.started", "wait_ms": 0}
    assert SpeechStarted(wait_ms=1120).to_dict() == {"type": "speech.started", "wait_ms": 1120}
    assert SpeechEnded(duration_ms=2500).to_dict() == {"type": "speech.ended", "duration_ms": 2500}
    assert Interrupted(played_ms=320).to_dict() == {"type": "interrupted", "played_ms": 320}
    assert AudioQueued(queued_ms=100).to_dict() == {"type": "audio.queued", "queued_ms": 100}
    stats = ChunkStats(index=3, compute_ms=None, rtf=None, queued_ms=0, problem="late")
    assert json.loads(stats.to_json()) == {
        "type": "chunk.stats",
        "index": 3,
        "compute_ms": None,
        "rtf": None,
        "queued_ms": 0,
        "problem": "late",
    }
    assert next(iter(json.loads(stats.to_json()))) == "type"
    error = ErrorEvent(code=ErrorCode.AUDIO_BUFFER_FULL, message="wait")
    assert error.to_json() == '{"type":"error","code":"audio_buffer_full","message":"wait"}'


def test_error_codes_are_the_documented_stable_strings() -> None:
    assert {code.value for code in ErrorCode} == {
        "bad_json",
        "bad_command",
        "unknown_command",
        "bad_audio_frame",
        "frame_too_large",
        "audio_buffer_full",
        "not_push_session",
        "too_many_sockets",
        "unauthorized",
        "forbidden",
        "unknown_session",
        "server_starting",
        "session_ended",
        "internal_error",
        "engine_failed",
        "speech_wait_timeout",
    }


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ('{"type": "audio.end"}', CommandType.AUDIO_END),
        ('{"type":"interrupt"}', CommandType.INTERRUPT),
        ('{"type": "keep_alive", "sent_at": 12}', CommandType.KEEP_ALIVE),
    ],
)
def test_commands_parse_and_ignore_extra_members(text: str, command: CommandType) -> None:
    assert parse_command(text) is command


@pytest.mark.parametrize(
    ("text", "code", "hint"),
    [
        ("{not json", ErrorCode.BAD_JSON, "binary frames"),
        ("", ErrorCode.BAD_JSON, "JSON"),
        ("[1, 2]", ErrorCode.BAD_JSON, "object"),
        ('"interrupt"', ErrorCode.BAD_JSON, "object"),
        ('{"kind": "interrupt"}', ErrorCode.BAD_COMMAND, "audio.end, interrupt, keep_alive"),
        ('{"type": 5}', ErrorCode.BAD_COMMAND, '"type"'),
        ('{"type": "dance"}', ErrorCode.UNKNOWN_COMMAND, "audio.end, interrupt, keep_alive"),
        ('{"type": "INTERRUPT"}', ErrorCode.UNKNOWN_COMMAND, "'INTERRUPT'"),
        ('{"type": "' + "x" * MAX_COMMAND_CHARS + '"}', ErrorCode.BAD_COMMAND, "at most"),
    ],
)
def test_bad_commands_name_their_code_and_what_to_send(
    text: str, code: ErrorCode, hint: str
) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_command(text)
    assert refused.value.code is code
    assert hint in refused.value.message
    assert refused.value.event().to_dict() == {
        "type": "error",
        "code": code.value,
        "message": refused.value.message,
    }


def test_the_bus_fans_out_and_drops_a_listener_that_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    first: list[Event] = []
    second: list[Event] = []

    def broken(_event: Event) -> None:
        raise ConnectionError("socket gone")

    unsubscribe_first = bus.subscribe(first.append)
    bus.subscribe(broken)
    bus.subscribe(second.append)
    bus.publish(SessionReady())
    assert bus.listeners == 2, "the listener that raised is removed"
    assert "removing it" in caplog.text
    unsubscribe_first()
    unsubscribe_first()  # idempotent
    bus.publish(SpeechStarted())
    assert first == [SessionReady()]
    assert second == [SessionReady(), SpeechStarted()]

"""``SpeechInput`` alone: either source, chunks taken, utterances announced as they play,
and what an interrupt's cut reports heard."""

from __future__ import annotations

import numpy as np
import pytest

from headcast.pipeline.media import CHUNK_SAMPLES, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from headcast.streaming.events import ErrorCode, Event, EventBus, ProtocolError
from headcast.streaming.observer import NullObserver
from headcast.streaming.push import PushFormat
from headcast.streaming.session_config import AudioSource, SessionConfig
from headcast.streaming.speech_input import SpeechInput
from tests.unit.streaming.conftest import ScriptedAudioTrack

CONFIG = SessionConfig(height=96, width=64)
VOICE = 0.2
MIC_FRAMES = 30
"""Frames of 20 ms the scripted microphone sends (0.6 s)."""


def _tone(samples: int) -> np.ndarray:
    t = np.arange(samples) / SAMPLE_RATE_HZ
    return (VOICE * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def _input(
    source: AudioSource, push_format: PushFormat | None = None
) -> tuple[SpeechInput, list[dict[str, object]]]:
    events = EventBus()
    heard: list[dict[str, object]] = []

    def listen(event: Event) -> None:
        heard.append(event.to_dict())

    events.subscribe(listen)
    speech = SpeechInput(
        CONFIG, events, NullObserver(), audio_source=source, push_format=push_format
    )
    return speech, heard


def test_a_mics_utterance_is_announced_when_its_media_time_is_played() -> None:
    speech, heard = _input(AudioSource.MIC)
    quiet = 10 * SAMPLES_PER_FRAME
    voiced = 15 * SAMPLES_PER_FRAME
    speech.push_audio(np.concatenate([np.zeros(quiet, np.float32), _tone(voiced)]))
    audio, received = speech.take(0)
    assert audio.shape == (CHUNK_SAMPLES,) and received == quiet + voiced
    speech.take(1)  # silence: the utterance ends in the hangover
    assert heard == [], "nothing is announced before it plays"
    speech.played_until(quiet)
    assert heard == []
    speech.played_until(quiet + SAMPLES_PER_FRAME)
    assert heard == [{"type": "speech.started", "wait_ms": 0}]
    speech.played_until(2 * CHUNK_SAMPLES)
    assert heard[1:] == [{"type": "speech.ended", "duration_ms": 15 * 40}]


def test_a_cut_announces_what_played_before_it_and_reports_the_time_heard() -> None:
    speech, heard = _input(AudioSource.PUSH)
    speech.push_audio(_tone(CHUNK_SAMPLES + 8_000))
    speech.end_of_speech()
    speech.take(0)  # the start, at media sample 0
    speech.take(1)  # the end, at CHUNK_SAMPLES + 8,000
    played_ms = speech.cut(SAMPLE_RATE_HZ)  # one second in
    assert played_ms == 1_000
    assert heard == [{"type": "speech.started", "wait_ms": 0}]
    speech.played_until(4 * CHUNK_SAMPLES)
    assert heard == [{"type": "speech.started", "wait_ms": 0}], "the cut utterance never ends"
    assert speech.cut(4 * CHUNK_SAMPLES) == 0, "nothing is playing after the cut"


def test_clear_drops_the_queue_and_the_open_utterance() -> None:
    speech, _heard = _input(AudioSource.PUSH)
    speech.push_audio(_tone(CHUNK_SAMPLES // 2))
    assert speech.queued_ms == 560
    audio, received = speech.take(0)
    assert received == 0 and not np.any(audio), "an open utterance waits for a whole chunk"
    speech.clear()
    assert speech.queued_ms == 0
    speech.push_audio(_tone(CHUNK_SAMPLES))
    audio, received = speech.take(1)
    assert received == CHUNK_SAMPLES and np.any(audio)


def test_the_source_is_fixed_at_creation() -> None:
    mic, _ = _input(AudioSource.MIC)
    with pytest.raises(ProtocolError) as refused:
        mic.push_pcm16(b"\x00\x00")
    assert refused.value.code is ErrorCode.NOT_PUSH_SESSION
    push, _ = _input(AudioSource.PUSH)
    assert push.push_format == PushFormat(), "a push session without a format gets the defaults"
    bounded, _ = _input(AudioSource.PUSH, PushFormat(max_queued_s=1.5))
    with pytest.raises(ProtocolError) as full:
        bounded.push_pcm16(b"\x00\x00" * 25_000)  # 1.5625 s
    assert full.value.code is ErrorCode.AUDIO_BUFFER_FULL and bounded.queued_ms == 0
    with pytest.raises(ValueError, match="push sessions"):
        SpeechInput(CONFIG, EventBus(), NullObserver(), push_format=PushFormat())


@pytest.mark.parametrize(("source", "fed"), [(AudioSource.MIC, True), (AudioSource.PUSH, False)])
async def test_a_webrtc_microphone_feeds_a_mic_session_and_is_drained_in_a_push_session(
    source: AudioSource, fed: bool
) -> None:
    speech, _ = _input(source)
    track = ScriptedAudioTrack(MIC_FRAMES)
    await speech.read_track(track)  # type: ignore[arg-type]
    assert track.received == MIC_FRAMES, "read to its end either way"
    assert (speech.intake.buffered > 0) is fed

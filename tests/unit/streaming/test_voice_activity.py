"""``VoiceActivity``: utterances found in a microphone's audio, as media-timeline marks."""

from __future__ import annotations

import numpy as np

from headcast.pipeline.media import (
    CHUNK_SAMPLES,
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    frame_levels_dbfs,
)
from headcast.streaming.push import SpeechMark
from headcast.streaming.voice_activity import HANGOVER_FRAMES, START_FRAMES, VoiceActivity

VOICE = 0.1  # a -23 dBFS sine: a voice
NOISE = 0.001  # about -63 dBFS: a quiet room


def _sine(frames: int, amplitude: float) -> np.ndarray:
    t = np.arange(frames * SAMPLES_PER_FRAME) / SAMPLE_RATE_HZ
    return (amplitude * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def _chunks(audio: np.ndarray) -> list[np.ndarray]:
    padded = np.zeros(-(-audio.size // CHUNK_SAMPLES) * CHUNK_SAMPLES, dtype=np.float32)
    padded[: audio.size] = audio
    return list(padded.reshape(-1, CHUNK_SAMPLES))


def _marks(audio: np.ndarray, voice: VoiceActivity | None = None) -> list[SpeechMark]:
    voice = voice or VoiceActivity()
    marks: list[SpeechMark] = []
    for index, chunk in enumerate(_chunks(audio)):
        marks.extend(voice.on_take(index * CHUNK_SAMPLES, chunk))
    return marks


def test_levels_are_per_40_ms_frame() -> None:
    levels = frame_levels_dbfs(np.concatenate([_sine(3, VOICE), _sine(2, 0.0)]))
    assert levels.shape == (5,)
    assert np.allclose(levels[:3], 20 * np.log10(VOICE / np.sqrt(2)), atol=0.1)
    assert np.all(levels[3:] < -150)


def test_an_utterance_with_pauses_is_one_start_and_one_end_at_its_sample_bounds() -> None:
    # 10 frames of quiet, 30 of voice across the chunk boundary (28 frames), a 5-frame pause
    # between words, 20 more of voice, then quiet.
    audio = np.concatenate([
        _sine(10, NOISE), _sine(30, VOICE), _sine(5, NOISE), _sine(20, VOICE), _sine(40, NOISE)
    ])  # fmt: skip
    marks = _marks(audio)

    assert [m.started for m in marks] == [True, False]
    start, end = marks
    assert start.media_sample == 10 * SAMPLES_PER_FRAME
    assert end.media_sample == (10 + 30 + 5 + 20) * SAMPLES_PER_FRAME
    assert end.duration_ms == (30 + 5 + 20) * 40


def test_a_click_does_not_start_speech_and_a_long_pause_ends_it() -> None:
    click = np.concatenate([_sine(5, NOISE), _sine(START_FRAMES - 1, VOICE), _sine(30, NOISE)])
    assert _marks(click) == []

    pause = HANGOVER_FRAMES + 1
    two = np.concatenate([_sine(8, VOICE), _sine(pause, NOISE), _sine(8, VOICE), _sine(30, NOISE)])
    marks = _marks(two)
    assert [m.started for m in marks] == [True, False, True, False]
    assert marks[1].duration_ms == 8 * 40 and marks[3].duration_ms == 8 * 40


def test_speech_still_open_at_the_end_has_no_end_mark_until_it_ends() -> None:
    voice = VoiceActivity()
    frames = 2 * CHUNK_SAMPLES // SAMPLES_PER_FRAME  # two whole chunks of voice
    marks = _marks(_sine(frames, VOICE), voice)
    assert [m.started for m in marks] == [True] and voice.speaking
    later = voice.on_take(2 * CHUNK_SAMPLES, np.zeros(CHUNK_SAMPLES, dtype=np.float32))
    assert [m.started for m in later] == [False]
    assert later[0].media_sample == 2 * CHUNK_SAMPLES and not voice.speaking


def test_reset_forgets_the_open_utterance() -> None:
    voice = VoiceActivity()
    _marks(_sine(20, VOICE), voice)
    voice.reset()
    assert not voice.speaking
    assert voice.on_take(CHUNK_SAMPLES, np.zeros(CHUNK_SAMPLES, dtype=np.float32)) == []

"""``SendTiming``: per-chunk A/V skew and interrupt latency from the tracks' send reports."""

from __future__ import annotations

import logging

import pytest

from headcast.pipeline.media import CHUNK_FRAMES
from headcast.streaming.clock import CHUNK_AUDIO_PACKETS
from headcast.streaming.observer import NullObserver
from headcast.streaming.send_timing import SKEW_HISTORY, SendTiming


class RecordingObserver(NullObserver):
    """Keeps what ``SendTiming`` reports."""

    def __init__(self) -> None:
        self.skews: list[float] = []
        self.interrupts: list[float] = []

    def on_av_skew(self, skew_s: float) -> None:
        self.skews.append(skew_s)

    def on_interrupt(self, latency_s: float) -> None:
        self.interrupts.append(latency_s)


def test_skew_is_audio_minus_video_of_each_chunks_first_frame_and_packet() -> None:
    observer = RecordingObserver()
    timing = SendTiming(observer, "s")
    timing.video_sent(0, 10.000, 10.000)
    timing.audio_sent(0, 10.000, 10.030)  # chunk 0: audio 30 ms after video
    timing.audio_sent(CHUNK_AUDIO_PACKETS, 11.120, 11.100)  # chunk 1: audio 20 ms early
    timing.video_sent(1, 10.040, 10.040)  # not a chunk's first frame: no measurement
    timing.video_sent(CHUNK_FRAMES, 11.120, 11.120)

    assert observer.skews == pytest.approx([0.030, -0.020])
    assert list(timing.av_skews) == pytest.approx([0.030, -0.020])


def test_a_skewed_chunk_is_logged_with_how_late_each_half_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timing = SendTiming(NullObserver(), "s")
    with caplog.at_level(logging.INFO, logger="headcast.streaming.send_timing"):
        timing.video_sent(0, 10.000, 10.004)
        timing.audio_sent(0, 10.000, 10.019)  # 15 ms apart: not logged
        timing.video_sent(CHUNK_FRAMES, 11.120, 11.200)
        timing.audio_sent(CHUNK_AUDIO_PACKETS, 11.120, 11.130)
    assert [r.getMessage() for r in caplog.records] == [
        "s: chunk 1 audio sent -70 ms from video (video 80 ms, audio 10 ms after due)"
    ]


def test_a_chunk_whose_other_half_was_cut_is_forgotten() -> None:
    observer = RecordingObserver()
    timing = SendTiming(observer, "s")
    timing.video_sent(0, 1.0, 1.0)  # chunk 0's audio never comes (cut by an interrupt)
    for chunk in range(1, 4):
        timing.video_sent(chunk * CHUNK_FRAMES, 1.0 + chunk, 1.0 + chunk)
        timing.audio_sent(chunk * CHUNK_AUDIO_PACKETS, 1.0 + chunk, 1.0 + chunk)
    timing.audio_sent(0, 9.0, 9.0)  # far too late to pair with chunk 0's frame

    assert observer.skews == [0.0, 0.0, 0.0]
    assert len(timing.av_skews) == 3


def test_skew_history_is_bounded() -> None:
    timing = SendTiming(NullObserver(), "s")
    for chunk in range(SKEW_HISTORY + 10):
        timing.video_sent(chunk * CHUNK_FRAMES, float(chunk), float(chunk))
        timing.audio_sent(chunk * CHUNK_AUDIO_PACKETS, float(chunk), float(chunk))
    assert len(timing.av_skews) == SKEW_HISTORY


def test_interrupt_latency_waits_for_both_the_first_idle_frame_and_packet() -> None:
    observer = RecordingObserver()
    timing = SendTiming(observer, "s")
    timing.interrupted(commanded_at=5.0, video_cut=40, audio_cut=80)
    timing.video_sent(39, 5.01, 5.01)  # before the cut: not idle yet
    timing.audio_sent(80, 5.05, 5.05)
    assert observer.interrupts == []
    timing.video_sent(40, 5.09, 5.09)

    assert observer.interrupts == pytest.approx([0.09])
    assert timing.interrupt_latencies == pytest.approx([0.09])
    timing.video_sent(41, 5.2, 5.2)
    timing.audio_sent(81, 5.2, 5.2)
    assert len(timing.interrupt_latencies) == 1  # settled once


def test_a_second_interrupt_replaces_an_unsettled_one() -> None:
    observer = RecordingObserver()
    timing = SendTiming(observer, "s")
    timing.interrupted(commanded_at=1.0, video_cut=10, audio_cut=20)
    timing.video_sent(10, 1.05, 1.05)
    timing.interrupted(commanded_at=2.0, video_cut=30, audio_cut=60)
    timing.audio_sent(60, 2.04, 2.04)
    timing.video_sent(30, 2.08, 2.08)

    assert observer.interrupts == pytest.approx([0.08])

"""The audio intake: FIFO order, silence padding, and the bound on buffered audio."""

from __future__ import annotations

import numpy as np
import pytest

from headcast.streaming.audio_in import AudioIntake
from tests.unit.streaming.conftest import ScriptedAudioTrack


def test_take_returns_samples_in_order_and_pads_with_silence() -> None:
    intake = AudioIntake(max_samples=10_000)
    intake.push(np.arange(1, 6, dtype=np.float32))
    intake.push(np.arange(6, 9, dtype=np.float32))
    out, received = intake.take(6)
    np.testing.assert_array_equal(out, [1, 2, 3, 4, 5, 6])
    assert received == 6
    out, received = intake.take(5)
    np.testing.assert_array_equal(out, [7, 8, 0, 0, 0])
    assert received == 2
    out, received = intake.take(4)
    np.testing.assert_array_equal(out, np.zeros(4))
    assert received == 0 and out.dtype == np.float32


def test_overflow_drops_the_oldest_samples() -> None:
    intake = AudioIntake(max_samples=5)
    intake.push(np.arange(4, dtype=np.float32))
    intake.push(np.arange(4, 8, dtype=np.float32))
    assert intake.buffered == 5
    assert intake.dropped_samples == 3
    out, _ = intake.take(5)
    np.testing.assert_array_equal(out, [3, 4, 5, 6, 7])


def test_rejects_non_mono_input() -> None:
    with pytest.raises(ValueError, match="mono"):
        AudioIntake(max_samples=10).push(np.zeros((2, 3), dtype=np.float32))


async def test_receiving_a_microphone_reports_activity_about_once_a_second() -> None:
    from headcast.streaming.audio_in import ACTIVITY_EVERY_FRAMES, receive_track

    reports: list[int] = []
    intake = AudioIntake(max_samples=100_000)
    frames = 2 * ACTIVITY_EVERY_FRAMES + 1
    await receive_track(ScriptedAudioTrack(frames), intake, on_activity=lambda: reports.append(1))  # type: ignore[arg-type]
    assert len(reports) == 3  # the first frame, then one per ACTIVITY_EVERY_FRAMES
    assert intake.buffered == pytest.approx(frames * 320, abs=320)  # 20 ms at 16 kHz each

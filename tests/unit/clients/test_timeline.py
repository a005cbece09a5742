"""``MediaTimeline``: the avatar's two tracks merged into one media-time order."""

from __future__ import annotations

from headcast_pipecat.timeline import MediaTimeline

VIDEO_HZ, AUDIO_HZ = 90_000, 48_000
FRAME_TICKS, PACKET_TICKS = 3_600, 960  # 40 ms of video, 20 ms of audio


def _timeline(max_hold_s: float = 0.25) -> MediaTimeline[str]:
    return MediaTimeline({"video": VIDEO_HZ, "audio": AUDIO_HZ}, max_hold_s)


def test_items_come_out_in_media_time_order_once_both_tracks_reached_it() -> None:
    timeline = _timeline()
    origin_v, origin_a = 123_456, 987  # random RTP origins: times count from each first pts
    for k in range(3):
        timeline.add("video", origin_v + k * FRAME_TICKS, f"v{k}", arrived=0.0)
    assert timeline.take(now=0.01) == [], "video waits for the audio of its media time"
    for k in range(4):
        timeline.add("audio", origin_a + k * PACKET_TICKS, f"a{k}", arrived=0.03)
    taken = [(kind, round(at, 3), item) for kind, at, item in timeline.take(now=0.04)]
    assert taken == [
        ("video", 0.0, "v0"),
        ("audio", 0.0, "a0"),
        ("audio", 0.02, "a1"),
        ("video", 0.04, "v1"),
        ("audio", 0.04, "a2"),
        ("audio", 0.06, "a3"),
    ]
    assert len(timeline) == 1  # v2 (80 ms) waits for audio that reaches 80 ms


def test_a_stalled_track_holds_the_other_back_only_for_max_hold() -> None:
    timeline = _timeline(max_hold_s=0.1)
    timeline.add("audio", 0, "a0", arrived=0.0)
    timeline.add("video", 0, "v0", arrived=0.0)
    timeline.add("video", FRAME_TICKS, "v1", arrived=0.0)
    assert [item for _k, _t, item in timeline.take(now=0.05)] == ["a0", "v0"]
    assert [item for _k, _t, item in timeline.take(now=0.11)] == ["v1"]

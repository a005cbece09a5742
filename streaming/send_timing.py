"""When a session's media reached the encoder: per-chunk A/V skew and interrupt latency.

Owns ``SendTiming``. The two outgoing tracks report every frame and packet they hand to the
encoder; from those reports ``SendTiming`` measures

- the audio-minus-video send-time skew of each chunk's first frame and first packet
  (``av_skews``, ``SessionObserver.on_av_skew``; beyond ``SKEW_LOG_S`` logged with how late
  each half was), and
- the time from an interrupt command until both the first idle frame and the first idle
  packet after the cut were sent (``interrupt_latencies``, ``SessionObserver.on_interrupt``).

Runs on the event loop; knows nothing about how the media was made.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from headcast.pipeline.media import CHUNK_FRAMES, MS_PER_S
from headcast.streaming.clock import CHUNK_AUDIO_PACKETS
from headcast.streaming.observer import SessionObserver

logger = logging.getLogger(__name__)

SKEW_HISTORY = 64
"""Per-chunk A/V skew measurements kept for inspection (``av_skews``)."""

SKEW_LOG_S = 0.020
"""A chunk whose audio and video went out further apart than this is logged (with how late
each half was)."""

VIDEO = 0
AUDIO = 1
"""Index of the video / audio half in the send-time pairs (``_chunk_starts``, probes)."""


@dataclass
class _InterruptProbe:
    """An interrupt waiting for its first idle frame and packet to be sent."""

    commanded_at: float
    cuts: tuple[int, int]
    """Index of the first video frame and of the first audio packet after the cut."""

    sent_at: list[float | None] = field(default_factory=lambda: [None, None])
    """When the first video frame / audio packet after the cut was sent."""


class SendTiming:
    """Send-time measurements of one session's two tracks (``label`` names it in the log)."""

    def __init__(self, observer: SessionObserver, label: str) -> None:
        self._observer = observer
        self._label = label
        self._probe: _InterruptProbe | None = None
        self._chunk_starts: dict[int, list[tuple[float, float] | None]] = {}
        """chunk index -> [video, audio] (due, sent at) of its first frame and packet."""
        self.av_skews: deque[float] = deque(maxlen=SKEW_HISTORY)
        """Recent per-chunk audio-minus-video send-time skews, in seconds."""
        self.interrupt_latencies: list[float] = []
        """Command-to-idle latency of every interrupt that took effect on media, in seconds."""

    def interrupted(self, commanded_at: float, video_cut: int, audio_cut: int) -> None:
        """An interrupt at ``commanded_at`` cut the media before frame ``video_cut`` and
        packet ``audio_cut``: time how long until both are sent (a later one replaces it)."""
        self._probe = _InterruptProbe(commanded_at, (video_cut, audio_cut))

    def video_sent(self, frame_index: int, due: float, sent_at: float) -> None:
        """Video frame ``frame_index``, due at ``due``, went to the encoder at ``sent_at``."""
        self._sent(VIDEO, frame_index, CHUNK_FRAMES, due, sent_at)

    def audio_sent(self, packet_index: int, due: float, sent_at: float) -> None:
        """Audio packet ``packet_index``, due at ``due``, went to the encoder at ``sent_at``."""
        self._sent(AUDIO, packet_index, CHUNK_AUDIO_PACKETS, due, sent_at)

    def _sent(self, kind: int, index: int, per_chunk: int, due: float, sent_at: float) -> None:
        probe = self._probe
        if probe is not None and probe.sent_at[kind] is None and index >= probe.cuts[kind]:
            probe.sent_at[kind] = sent_at
            self._settle(probe)
        if index % per_chunk == 0:
            self._chunk_start_sent(index // per_chunk, kind, due, sent_at)

    def _chunk_start_sent(self, index: int, kind: int, due: float, sent_at: float) -> None:
        """Record when chunk ``index``'s first frame (``VIDEO``) or packet (``AUDIO``) was sent."""
        times = self._chunk_starts.setdefault(index, [None, None])
        times[kind] = (due, sent_at)
        video, audio = times
        if video is not None and audio is not None:
            del self._chunk_starts[index]
            skew = audio[1] - video[1]
            self.av_skews.append(skew)
            self._observer.on_av_skew(skew)
            if abs(skew) > SKEW_LOG_S:
                logger.info(
                    "%s: chunk %d audio sent %+.0f ms from video (video %.0f ms, audio %.0f ms "
                    "after due)",
                    self._label,
                    index,
                    skew * MS_PER_S,
                    (video[1] - video[0]) * MS_PER_S,
                    (audio[1] - audio[0]) * MS_PER_S,
                )
        for stale in [k for k in self._chunk_starts if k < index - 1]:
            del self._chunk_starts[stale]  # its other half was cut by an interrupt

    def _settle(self, probe: _InterruptProbe) -> None:
        video_at, audio_at = probe.sent_at
        if video_at is None or audio_at is None:
            return
        latency = max(video_at, audio_at) - probe.commanded_at
        self.interrupt_latencies.append(latency)
        self._observer.on_interrupt(latency)
        self._probe = None
        logger.info("%s: idle %.0f ms after the interrupt", self._label, latency * MS_PER_S)

"""Chatbot-mode audio intake: pushed PCM16 frames, their bound, and where each utterance lands.

Owns ``PushFormat`` (the session's push sample rate and bounds), ``PushDecoder`` (PCM16 mono
little-endian bytes at 16, 24 or 48 kHz -> 16 kHz float32, refusing odd-length and oversized
frames with a ``ProtocolError``), and ``UtteranceLedger``: it counts pushed and taken samples,
says how much of the queue the next chunk takes (an utterance still being pushed goes out in
whole chunks only, so no silence lands inside it), and, when the scheduler takes a chunk,
at which media sample an utterance's first sample and last sample landed
(``speech.started`` / ``speech.ended`` are sent when those media times are played).

Knows nothing about sockets, tracks, engines or the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, get_args

import av
import numpy as np

from headcast.pipeline.media import CHUNK_SAMPLES, MS_PER_S, SAMPLE_RATE_HZ
from headcast.streaming.events import ErrorCode, ProtocolError
from headcast.streaming.resample import Downsampler

logger = logging.getLogger(__name__)

PushSampleRateHz = Literal[16000, 24000, 48000]
"""Sample rates pushed audio may have (chosen per session); 24 and 48 kHz are resampled."""

PUSH_SAMPLE_RATES_HZ: tuple[int, ...] = get_args(PushSampleRateHz)
"""The same, as numbers."""

PCM16_BYTES = 2
"""Bytes per PCM16 sample."""

PCM16_FULL_SCALE = 32768.0
"""Divisor that maps PCM16 samples to [-1, 1)."""

DEFAULT_PUSH_MAX_QUEUED_S = 10.0
"""Default bound on pushed audio waiting to be taken, in seconds."""

DEFAULT_PUSH_MAX_FRAME_BYTES = 192_000
"""Default bound on one binary frame, in bytes (2 s at 48 kHz, 6 s at 16 kHz)."""


@dataclass(frozen=True)
class PushFormat:
    """How a push session's audio arrives and how much of it may wait."""

    sample_rate: int = SAMPLE_RATE_HZ
    """Sample rate of the pushed PCM16, in Hz (one of ``PUSH_SAMPLE_RATES_HZ``)."""

    max_queued_s: float = DEFAULT_PUSH_MAX_QUEUED_S
    """Pushed audio allowed to wait before frames are refused (``audio_buffer_full``), in s."""

    max_frame_bytes: int = DEFAULT_PUSH_MAX_FRAME_BYTES
    """Longest binary frame accepted, in bytes."""

    def __post_init__(self) -> None:
        if self.sample_rate not in PUSH_SAMPLE_RATES_HZ:
            raise ValueError(
                f"pushed audio must be at one of {', '.join(map(str, PUSH_SAMPLE_RATES_HZ))} Hz, "
                f"got {self.sample_rate}"
            )
        if self.max_queued_s < CHUNK_SAMPLES / SAMPLE_RATE_HZ:
            raise ValueError(
                f"max_queued_s must allow at least one chunk ({CHUNK_SAMPLES / SAMPLE_RATE_HZ} s)"
                f", got {self.max_queued_s}"
            )
        if self.max_frame_bytes < PCM16_BYTES:
            raise ValueError(f"max_frame_bytes must be at least 2, got {self.max_frame_bytes}")

    @property
    def max_queued_samples(self) -> int:
        """The queue bound in 16 kHz samples."""
        return round(self.max_queued_s * SAMPLE_RATE_HZ)

    def samples_at_16k(self, frame_bytes: int) -> int:
        """16 kHz samples a frame of ``frame_bytes`` becomes (before resampler delay)."""
        return frame_bytes // PCM16_BYTES * SAMPLE_RATE_HZ // self.sample_rate


class PushDecoder:
    """PCM16 mono little-endian bytes at ``format.sample_rate`` -> 16 kHz float32 samples.

    Resampling (24 or 48 kHz) is streaming: libswresample holds about a millisecond of
    samples back, which ``flush`` returns at the end of an utterance.
    """

    def __init__(self, push_format: PushFormat) -> None:
        self.format = push_format
        self._resampler: Downsampler | None = None
        self._pts = 0

    def check(self, data: bytes) -> None:
        """Raise ``ProtocolError`` if ``data`` is not an acceptable frame."""
        if len(data) < PCM16_BYTES:
            raise ProtocolError(
                ErrorCode.BAD_AUDIO_FRAME,
                f"a binary frame must hold at least one PCM16 sample ({PCM16_BYTES} bytes), got "
                f"{len(data)}; send 16-bit little-endian mono samples",
            )
        if len(data) > self.format.max_frame_bytes:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"a binary frame is at most {self.format.max_frame_bytes} bytes, got {len(data)};"
                " split the audio into smaller frames (20-200 ms each is typical)",
            )
        if len(data) % PCM16_BYTES:
            raise ProtocolError(
                ErrorCode.BAD_AUDIO_FRAME,
                f"a binary frame must hold whole PCM16 samples (an even number of bytes), got "
                f"{len(data)} bytes; send 16-bit little-endian mono samples",
            )

    def decode(self, data: bytes) -> np.ndarray:
        """Decode one checked frame into ``[n]`` float32 samples at 16 kHz."""
        pcm = np.frombuffer(data, dtype="<i2")
        if self.format.sample_rate == SAMPLE_RATE_HZ:
            return pcm.astype(np.float32) / np.float32(PCM16_FULL_SCALE)
        if pcm.size == 0:
            return np.zeros(0, dtype=np.float32)
        if self._resampler is None:
            self._resampler = Downsampler()
        frame = av.AudioFrame.from_ndarray(pcm[None, :].copy(), format="s16", layout="mono")
        frame.sample_rate = self.format.sample_rate
        frame.pts = self._pts
        self._pts += pcm.size
        return self._resampler.process(frame)

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds (end of an utterance); resets it."""
        resampler, self._resampler = self._resampler, None
        self._pts = 0
        if resampler is None:
            return np.zeros(0, dtype=np.float32)
        return resampler.flush()

    def reset(self) -> None:
        """Forget held samples (interrupt)."""
        self._resampler = None
        self._pts = 0


@dataclass(frozen=True)
class SpeechMark:
    """An utterance boundary placed on the media timeline."""

    started: bool
    """True for the utterance's first sample, False for the end of its last."""

    media_sample: int
    """Media position of the boundary, in 16 kHz samples from media time 0."""

    start_sample: int
    """Media position of the utterance's first sample (equal to ``media_sample`` for a
    start), so an end mark knows the utterance's duration."""

    wait_ms: int = 0
    """For a start mark: how long the utterance waited for a generation slot, in ms."""

    @property
    def duration_ms(self) -> int:
        """For an end mark: the utterance's media duration, in milliseconds."""
        return round((self.media_sample - self.start_sample) * MS_PER_S / SAMPLE_RATE_HZ)


class UtteranceLedger:
    """Where pushed utterances land on the media timeline.

    Positions count 16 kHz samples through the intake: ``pushed`` went in, ``taken`` came
    out into chunks. An utterance opens with the first push after the previous one ended and
    closes at ``end`` (``audio.end``); ``on_take`` turns boundaries inside a taken chunk into
    ``SpeechMark``\\ s.
    """

    def __init__(self) -> None:
        self.pushed = 0
        self.taken = 0
        self._open_start: int | None = None
        """Intake position of the open utterance's first sample (None: none open)."""
        self._boundaries: list[tuple[bool, int]] = []
        """(is_start, intake position) not yet taken, in order."""
        self._start_media: int | None = None
        """Media position of the utterance whose start was taken and end was not."""
        self._last_taken_media_end = 0
        """Media position just after the last real (pushed) sample taken."""

    @property
    def in_utterance(self) -> bool:
        """True between an utterance's first push and its ``end``."""
        return self._open_start is not None

    def pushed_samples(self, count: int) -> None:
        """``count`` samples went into the intake; opens an utterance if none is open."""
        if count <= 0:
            return
        if self._open_start is None:
            self._open_start = self.pushed
            self._boundaries.append((True, self.pushed))
        self.pushed += count

    def end(self) -> bool:
        """Close the open utterance at the current push position; False if none was open."""
        if self._open_start is None:
            return False
        self._open_start = None
        self._boundaries.append((False, self.pushed))
        return True

    def take_limit(self, buffered: int) -> int:
        """How many buffered samples the next chunk should take (the rest is padding).

        An utterance still being pushed is taken only in whole chunks: a partial chunk waits
        for more audio (or for ``end``) instead of going out with silence in the middle of
        the speech; once the audio arrives at least as fast as it plays, every chunk is
        whole. An ended utterance is taken to its last sample, so the next one starts on a
        chunk boundary.
        """
        for is_start, position in self._boundaries:
            if not is_start:
                return min(CHUNK_SAMPLES, position - self.taken)
        if self._open_start is not None:
            return CHUNK_SAMPLES if buffered >= CHUNK_SAMPLES else 0
        return min(buffered, CHUNK_SAMPLES)

    def on_take(self, index: int, received: int) -> list[SpeechMark]:
        """Chunk ``index`` took ``received`` pushed samples: the boundaries it placed."""
        chunk_start = index * CHUNK_SAMPLES
        first, last = self.taken, self.taken + received
        marks: list[SpeechMark] = []
        while self._boundaries:
            is_start, position = self._boundaries[0]
            if is_start:
                if position >= last:  # its first sample is not in this chunk
                    break
                media = chunk_start + (position - first)
                self._start_media = media
                marks.append(SpeechMark(True, media, media))
            else:
                if position > last:  # its last sample is not in this chunk
                    break
                media = (
                    chunk_start + (position - first)
                    if position > first
                    else self._last_taken_media_end
                )
                start = self._start_media if self._start_media is not None else media
                marks.append(SpeechMark(False, media, start))
                self._start_media = None
            self._boundaries.pop(0)
        if received:
            self._last_taken_media_end = chunk_start + received
        self.taken = last
        return marks

    def clear(self) -> None:
        """Everything pushed and not taken was dropped (interrupt)."""
        self.pushed = self.taken
        self._open_start = None
        self._boundaries.clear()
        self._start_media = None

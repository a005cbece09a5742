"""OmniAvatar's audio features in stream mode: each segment's new rows from a context window.

The official code runs wav2vec2 once over the whole clip (normalised over the whole clip);
a stream has only the audio heard so far. In stream mode each segment's new feature rows
(``L - 1`` for the first segment, ``L - overlap`` for each later one) come from wav2vec2
over the last ``context_frames`` frames of audio ending at the segment's last new frame
(zero-mean/unit-variance over that window, silence before the start); the rows carried
over from the previous window stay as the official ``segment_audio`` carries them.

Owns ``StreamAudio``: ``rows`` (a context window -> its last rows, what the streaming
engine calls once per chunk on its session's ``AudioRing``) and ``encode`` (a whole clip
cut into the same windows: the clip's features exactly as a stream computes them, so an
offline render can show what the stream shows). Uses ``OmniAudioEncoder``'s model and
feature layout; knows nothing about the DiT, sessions or chunks' frames.
"""

from __future__ import annotations

import numpy as np
import torch

from headcast.pipeline.audio import zero_mean_unit_variance
from headcast.pipeline.media import SAMPLES_PER_FRAME, VIDEO_FPS
from headcast.pipeline.omniavatar.audio import FIRST_FIXED_FRAMES, OmniAudioEncoder

STREAM_CONTEXT_S = 8
"""Seconds of audio wav2vec2 sees for each segment's new rows (FlashTalk's stream window)."""

STREAM_CONTEXT_FRAMES = STREAM_CONTEXT_S * VIDEO_FPS  # 200 frames
"""Video frames of that context window."""


class StreamAudio:
    """Per-segment wav2vec2 windows for segments of ``segment_frames`` with ``overlap``."""

    def __init__(
        self,
        encoder: OmniAudioEncoder,
        *,
        segment_frames: int,
        overlap: int,
        context_frames: int = STREAM_CONTEXT_FRAMES,
    ) -> None:
        if not 0 < overlap < segment_frames:
            raise ValueError(f"overlap={overlap} must be in (0, segment_frames={segment_frames})")
        if context_frames < segment_frames:
            raise ValueError(
                f"context_frames={context_frames} must hold a whole segment ({segment_frames})"
            )
        self.encoder = encoder
        self.segment_frames = segment_frames
        self.overlap = overlap
        self.context_frames = context_frames

    @property
    def window_samples(self) -> int:
        """16 kHz samples of one context window (the session's audio ring capacity)."""
        return self.context_frames * SAMPLES_PER_FRAME

    def new_rows(self, first: bool) -> int:
        """Rows a segment adds to its window: ``L - 1`` for the first, ``L - overlap`` after."""
        return self.segment_frames - (FIRST_FIXED_FRAMES if first else self.overlap)

    @torch.no_grad()
    def rows(self, window: np.ndarray, count: int) -> torch.Tensor:
        """The last ``count`` feature rows of one context window ``[window_samples]`` (oldest
        sample first): ``[count, features]`` float32 on the encoder's device."""
        samples = np.asarray(window, dtype=np.float32)
        if samples.shape != (self.window_samples,):
            raise ValueError(
                f"expected a context window of {self.window_samples} samples, got {samples.shape}"
            )
        if self.encoder.normalize_input:
            samples = zero_mean_unit_variance(samples)
        values = torch.from_numpy(samples)[None]  # [1, window_samples]
        return self.encoder.features(values, self.context_frames)[-count:]  # [count, C]

    @torch.no_grad()
    def encode(self, samples: np.ndarray, frames: int) -> torch.Tensor:
        """A whole clip's ``[frames, features]`` as a stream computes it (``ClipFeatures``).

        ``frames`` must tile into segments (``audio.padded_frames``); samples beyond the clip
        are silence. Segment ``k``'s rows come from the window ending at its last new frame.
        """
        first = self.new_rows(first=True)
        later = self.new_rows(first=False)
        if frames < first or (frames - first) % later:
            raise ValueError(
                f"{frames} frames are not whole segments of {self.segment_frames} frames with "
                f"overlap {self.overlap}: pad them with audio.padded_frames()"
            )
        width = self.window_samples
        clip = np.zeros(width + frames * SAMPLES_PER_FRAME, dtype=np.float32)  # silence first
        speech = np.asarray(samples, dtype=np.float32)[: frames * SAMPLES_PER_FRAME]
        clip[width : width + speech.size] = speech
        pieces = []
        end, count = first, first
        while end <= frames:
            stop = width + end * SAMPLES_PER_FRAME
            pieces.append(self.rows(clip[stop - width : stop], count))  # [count, C]
            end, count = end + later, later
        return torch.cat(pieces, dim=0)  # [frames, C]

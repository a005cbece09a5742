"""Writing generated video and its audio to an MP4 file.

Owns ``Mp4Writer``: an MP4 container with one H.264 video stream (libx264, yuv420p, a fixed
frame rate, frame ``n`` at ``n / fps`` s) and one AAC audio stream (PyAV's native ``aac``
encoder; audio at a rate AAC cannot carry is resampled to ``AAC_FALLBACK_RATE_HZ``). Video
frames and audio blocks are written in the order the caller gives them, so a caller that
alternates them (chunk by chunk) gets an interleaved file.

Knows nothing about engines, chunks, sessions, audio files being read or the server.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Final

import av
import numpy as np

from headcast.pipeline.media import VIDEO_FPS

CONTAINER_FORMAT = "mp4"

H264_ENCODER: Final = "libx264"
"""``Final`` (as ``AAC_ENCODER``): PyAV's typed ``add_stream`` picks the stream type by name."""
VIDEO_PIXEL_FORMAT = "yuv420p"
"""Chroma-subsampled 8-bit output, the format every player decodes."""
INPUT_PIXEL_FORMAT = "rgb24"
"""Layout of the frames the writer takes: ``[H, W, 3]`` uint8 RGB."""
H264_CRF = 18
"""libx264 constant rate factor (lower is better quality; 18 is near visually lossless)."""
H264_PRESET = "veryfast"
"""libx264 speed/size trade-off; offline writing should not slow generation down."""

AAC_ENCODER: Final = "aac"
AAC_BIT_RATE_BPS = 128_000
"""Target AAC bit rate, in bits per second."""
AAC_FRAME_SAMPLES = 1024
"""Samples per channel in one AAC frame."""
AAC_SAMPLE_FORMAT = "fltp"
"""Sample format the AAC encoder takes: planar 32-bit float."""
AAC_FALLBACK_RATE_HZ = 48_000
"""Rate audio is resampled to when AAC cannot carry its own rate, in Hz."""
AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}
"""Channel layout by channel count of the audio blocks the writer takes."""


class Mp4Writer:
    """An MP4 file being written: H.264 video plus AAC audio. Use as a context manager.

    Args:
        path: file to create (overwritten if it exists).
        height, width: frame size in pixels; both even (yuv420p halves the chroma planes).
        audio_rate_hz: sample rate of the audio blocks given to ``write_audio``.
        audio_channels: 1 (mono) or 2 (stereo) channels per audio block.
        fps: video frame rate, in frames per second.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        height: int,
        width: int,
        audio_rate_hz: int,
        audio_channels: int,
        fps: int = VIDEO_FPS,
    ) -> None:
        if height <= 0 or width <= 0 or height % 2 or width % 2:
            raise ValueError(
                f"H.264 yuv420p needs a positive, even frame size; got {width}x{height}. "
                "Choose an even height and width."
            )
        if audio_channels not in AUDIO_LAYOUTS:
            raise ValueError(f"audio must be mono or stereo, got {audio_channels} channels")
        self.height = height
        self.width = width
        self.fps = fps
        self.audio_rate_hz = audio_rate_hz
        self.frames_written = 0
        self.audio_samples_written = 0
        self._closed = False
        self._container = av.open(str(path), mode="w", format=CONTAINER_FORMAT)
        try:
            self._video = self._add_video_stream()
            self._audio, self._resampler = self._add_audio_stream(audio_channels)
        except BaseException:
            self._container.close()
            raise

    # -- setup -------------------------------------------------------------------------------

    def _add_video_stream(self) -> av.VideoStream:
        stream = self._container.add_stream(H264_ENCODER, rate=self.fps)
        stream.height = self.height
        stream.width = self.width
        stream.pix_fmt = VIDEO_PIXEL_FORMAT
        stream.codec_context.time_base = Fraction(1, self.fps)
        stream.options = {"crf": str(H264_CRF), "preset": H264_PRESET}
        return stream

    def _add_audio_stream(self, channels: int) -> tuple[av.AudioStream, av.AudioResampler]:
        supported = av.codec.Codec(AAC_ENCODER, "w").audio_rates or ()
        rate = self.audio_rate_hz if self.audio_rate_hz in supported else AAC_FALLBACK_RATE_HZ
        layout = AUDIO_LAYOUTS[channels]
        stream = self._container.add_stream(AAC_ENCODER, rate=rate, layout=layout)
        stream.bit_rate = AAC_BIT_RATE_BPS
        stream.codec_context.time_base = Fraction(1, rate)
        resampler = av.AudioResampler(
            format=AAC_SAMPLE_FORMAT, layout=layout, rate=rate, frame_size=AAC_FRAME_SAMPLES
        )
        return stream, resampler

    # -- writing -----------------------------------------------------------------------------

    def write_video(self, frames: np.ndarray) -> None:
        """Encode ``[n, H, W, 3]`` uint8 RGB frames, following the frames written so far."""
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected frames [n, {self.height}, {self.width}, 3], got {frames.shape}"
            )
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB, got {frames.dtype}")
        for image in frames:  # [H, W, 3]
            frame = av.VideoFrame.from_ndarray(image, format=INPUT_PIXEL_FORMAT)
            frame.pts = self.frames_written
            frame.time_base = self._video.codec_context.time_base
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1

    def write_audio(self, samples: np.ndarray) -> None:
        """Encode ``[C, n]`` float32 samples at ``audio_rate_hz``, following those so far."""
        if samples.ndim != 2 or samples.shape[0] != self._audio.codec_context.channels:
            raise ValueError(
                f"expected audio [{self._audio.codec_context.channels}, n], got {samples.shape}"
            )
        if samples.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32),
            format=AAC_SAMPLE_FORMAT,
            layout=AUDIO_LAYOUTS[samples.shape[0]],
        )
        frame.sample_rate = self.audio_rate_hz
        frame.pts = self.audio_samples_written
        frame.time_base = Fraction(1, self.audio_rate_hz)
        self.audio_samples_written += samples.shape[1]
        self._encode_audio(self._resampler.resample(frame))

    def _encode_audio(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            self._container.mux(self._audio.encode(frame))

    def close(self) -> None:
        """Flush both encoders and finish the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._encode_audio(self._resampler.resample(None))
            self._container.mux(self._audio.encode(None))
            self._container.mux(self._video.encode(None))
        finally:
            self._container.close()

    def abort(self) -> None:
        """Close the container without flushing (after an error); the file is incomplete."""
        if not self._closed:
            self._closed = True
            self._container.close()

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

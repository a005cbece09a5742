"""Audio conditioning in stream mode: the 8 s sample ring and wav2vec2 chunk features.

Owns: the audio timing of one chunk (``AudioConfig``), the per-session ring of the last
8 s of 16 kHz samples (``AudioRing``), and ``Wav2VecStreamEncoder``, which turns one ring
window into the ``[1, 33, 5, layers, C]`` audio features the DiT consumes for a chunk:

    loudness norm (-23 LUFS) -> zero-mean/unit-variance -> wav2vec2 conv features
    -> linear resample to 25 fps (200 frames) -> feature projection -> transformer
    (every layer's output kept) -> the 33 chunk frames with a +-2 frame window each.

Must not know about sessions, transports or the DiT: the ring is plain per-session data
(it lives in the generator's StreamState), and the encoder holds only shared read-only
weights and config. Host-side steps (loudness, normalisation) run in numpy; the model runs
on the encoder's device under ``torch.no_grad``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2Model

from headcast.pipeline.checkpoint import CheckpointError, materialize
from headcast.pipeline.loudness import TARGET_LOUDNESS_LUFS, LoudnessNormalizer
from headcast.pipeline.media import SAMPLE_RATE_HZ, VIDEO_FPS

logger = logging.getLogger(__name__)

FEATURE_NORM_EPSILON = 1e-7
"""Added to the variance in the feature extractor's zero-mean/unit-variance step."""

WAV2VEC_CONFIG_FILE = "config.json"
WAV2VEC_PREPROCESSOR_FILE = "preprocessor_config.json"
WAV2VEC_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
"""Any one of these in the wav2vec2 directory holds its weights."""

TINY_WAV2VEC2_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": (16,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
    }
)
"""A 2-layer, 32-channel wav2vec2 (the golden's sizes) for tests and the ``tiny`` engine."""


@dataclass(frozen=True)
class AudioConfig:
    """Timing of the audio that conditions one chunk (official stream-mode recipe)."""

    sample_rate: int = SAMPLE_RATE_HZ
    """Audio sample rate in Hz (wav2vec2 is trained on 16 kHz)."""

    fps: int = VIDEO_FPS
    """Video frame rate; audio features are resampled to one per video frame."""

    window_seconds: int = 8
    """Length of the audio ring the encoder sees each chunk, in seconds."""

    chunk_frames: int = 33
    """Video frames the DiT generates per chunk (motion frames included)."""

    motion_frames: int = 5
    """Frames carried over from the previous chunk; the rest (28) are new."""

    audio_window: int = 5
    """Feature frames around each video frame (an odd count: offsets -2..+2)."""

    target_lufs: float = TARGET_LOUDNESS_LUFS
    """Integrated loudness the window is normalised to, in LUFS."""

    def __post_init__(self) -> None:
        problems = []
        if self.sample_rate <= 0 or self.fps <= 0 or self.sample_rate % self.fps:
            problems.append(
                f"sample_rate ({self.sample_rate}) must be a positive multiple of fps ({self.fps})"
            )
        if not 0 <= self.motion_frames < self.chunk_frames:
            problems.append(
                f"motion_frames ({self.motion_frames}) must be in "
                f"[0, chunk_frames={self.chunk_frames})"
            )
        if self.audio_window < 1 or self.audio_window % 2 == 0:
            problems.append(f"audio_window ({self.audio_window}) must be a positive odd number")
        if self.window_seconds <= 0 or self.window_seconds * self.fps < self.chunk_frames:
            problems.append(
                f"window_seconds ({self.window_seconds}) must hold at least chunk_frames "
                f"({self.chunk_frames}) frames at {self.fps} fps"
            )
        if problems:
            raise ValueError("invalid AudioConfig: " + "; ".join(problems))

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame (640 at 16 kHz / 25 fps)."""
        return self.sample_rate // self.fps

    @property
    def new_frames(self) -> int:
        """Frames a chunk adds to the stream (28)."""
        return self.chunk_frames - self.motion_frames

    @property
    def chunk_samples(self) -> int:
        """New audio samples per chunk (17,920 = 28 frames x 640 samples = 1.12 s)."""
        return self.new_frames * self.samples_per_frame

    @property
    def window_samples(self) -> int:
        """Samples in the ring window (128,000 = 8 s)."""
        return self.window_seconds * self.sample_rate

    @property
    def window_frames(self) -> int:
        """Feature frames the window is resampled to (200 = 8 s x 25 fps)."""
        return self.window_seconds * self.fps

    @property
    def chunk_first_frame(self) -> int:
        """Index of the chunk's first frame in the window (167: the last 33 of 200)."""
        return self.window_frames - self.chunk_frames

    @property
    def context_radius(self) -> int:
        """Frames on each side of a video frame in its audio window (2)."""
        return self.audio_window // 2


CHUNK_SAMPLES: int = AudioConfig().chunk_samples
"""New 16 kHz samples per chunk under the default config (17,920)."""


class AudioRing:
    """The last ``capacity`` audio samples of one session, float32, starting as silence.

    Per-session state: cheap to copy, never shared between sessions.
    """

    def __init__(self, capacity: int = AudioConfig().window_samples) -> None:
        if capacity <= 0:
            raise ValueError(f"ring capacity must be a positive number of samples, got {capacity}")
        self._buffer = np.zeros(capacity, dtype=np.float32)  # [capacity], circular
        self._end = 0  # index one past the newest sample (mod capacity)

    @property
    def capacity(self) -> int:
        """Samples the ring holds."""
        return int(self._buffer.shape[0])

    def push(self, samples: np.ndarray) -> None:
        """Append mono float samples, dropping the oldest ones beyond capacity."""
        new = np.asarray(samples)
        if new.ndim != 1:
            raise ValueError(f"expected mono samples of shape [N], got shape {new.shape}")
        if not np.issubdtype(new.dtype, np.floating):
            raise TypeError(
                f"expected float samples in [-1, 1], got {new.dtype}; convert PCM16 with "
                "samples.astype(np.float32) / 32768"
            )
        capacity = self.capacity
        if new.shape[0] >= capacity:
            self._buffer[:] = new[-capacity:]
            self._end = 0
            return
        count = new.shape[0]
        first = min(count, capacity - self._end)  # samples written before wrapping
        self._buffer[self._end : self._end + first] = new[:first]
        self._buffer[: count - first] = new[first:]
        self._end = (self._end + count) % capacity

    def window(self) -> np.ndarray:
        """A new array with the ring's samples, oldest first: float32 [capacity]."""
        return np.concatenate([self._buffer[self._end :], self._buffer[: self._end]])

    def reset(self) -> None:
        """Back to silence (e.g. after an interrupt)."""
        self._buffer.fill(0.0)
        self._end = 0

    def copy(self) -> AudioRing:
        """An independent ring with the same samples."""
        twin = AudioRing.__new__(AudioRing)
        twin._buffer = self._buffer.copy()
        twin._end = self._end
        return twin


def _read_do_normalize(directory: Path) -> bool:
    """``do_normalize`` from the directory's preprocessor config (True when absent)."""
    path = directory / WAV2VEC_PREPROCESSOR_FILE
    if not path.is_file():
        return True
    try:
        return bool(json.loads(path.read_text()).get("do_normalize", True))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read wav2vec2 preprocessor config {path}: {exc}") from exc


def _check_wav2vec_dir(directory: Path) -> None:
    """Raise a CheckpointError naming what is missing from a wav2vec2 directory."""
    hint = f"Check it with `headcast doctor --wav2vec-dir {directory}`."
    if not directory.is_dir():
        raise CheckpointError(f"wav2vec2 directory not found: {directory}. {hint}")
    if not (directory / WAV2VEC_CONFIG_FILE).is_file():
        raise CheckpointError(
            f"wav2vec2 config not found: {directory / WAV2VEC_CONFIG_FILE}. {hint}"
        )
    if not any((directory / name).is_file() for name in WAV2VEC_WEIGHT_FILES):
        raise CheckpointError(
            f"wav2vec2 weights not found in {directory} (expected one of "
            f"{', '.join(WAV2VEC_WEIGHT_FILES)}). {hint}"
        )


class Wav2VecStreamEncoder:
    """wav2vec2 features for one chunk from one ring window (shared, read-only, stateless).

    The wrapped ``Wav2Vec2Model`` is used through its submodules (conv feature extractor,
    feature projection, encoder layers), so the resample to video frame rate can sit
    between the convolutions and the projection, as the official model does.
    """

    def __init__(
        self,
        model: Wav2Vec2Model,
        config: AudioConfig = AudioConfig(),
        *,
        normalize_input: bool = True,
    ) -> None:
        if model.config.do_stable_layer_norm:
            raise ValueError(
                "wav2vec2 checkpoints with do_stable_layer_norm=True are not supported; "
                "use a base-style model such as chinese-wav2vec2-base"
            )
        self.model = model.eval().requires_grad_(False)  # type: ignore[no-untyped-call]  # transformers leaves eval() unannotated
        self.config = config
        self.normalize_input = normalize_input
        self.loudness = LoudnessNormalizer(config.target_lufs)
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        # Window rows for each chunk frame: [chunk_frames, audio_window], clamped to the window.
        centres = torch.arange(config.chunk_first_frame, config.window_frames)  # [33]
        offsets = torch.arange(-config.context_radius, config.context_radius + 1)  # [5]
        index = (centres[:, None] + offsets[None, :]).clamp(0, config.window_frames - 1)
        self._window_index = index.to(self.device)  # [33, 5]

    # ----- construction -------------------------------------------------------------

    @classmethod
    def from_state(
        cls,
        model_config: Wav2Vec2Config | Mapping[str, Any],
        state: Mapping[str, torch.Tensor],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        config: AudioConfig = AudioConfig(),
    ) -> Wav2VecStreamEncoder:
        """Build from a transformers config (or its dict) and a ``Wav2Vec2Model`` state dict."""
        hf_config = _as_hf_config(model_config)
        model = materialize(
            lambda: Wav2Vec2Model(hf_config),
            dict(state),
            device=device,
            dtype=dtype,
            what="wav2vec2 state dict",
        )
        return cls(model, config)

    @classmethod
    def tiny(
        cls,
        model_config: Mapping[str, Any] = TINY_WAV2VEC2_CONFIG,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        config: AudioConfig = AudioConfig(),
    ) -> Wav2VecStreamEncoder:
        """A seeded random-weight model from a small config dict: real code paths, no weights."""
        hf_config = _as_hf_config(model_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Wav2Vec2Model(hf_config)
        return cls(model.to(device=device, dtype=dtype), config)  # type: ignore[call-arg]  # transformers wraps to() in functools.wraps, which typeshed does not bind as a method

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        config: AudioConfig = AudioConfig(),
    ) -> Wav2VecStreamEncoder:
        """Load a Hugging Face wav2vec2 directory (e.g. chinese-wav2vec2-base), offline only."""
        directory = Path(path)
        _check_wav2vec_dir(directory)
        try:
            model = Wav2Vec2Model.from_pretrained(
                str(directory), local_files_only=True, dtype=dtype, attn_implementation="sdpa"
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot load wav2vec2 from {directory}: {exc}. Check it with "
                f"`headcast doctor --wav2vec-dir {directory}`."
            ) from exc
        logger.info(
            "loaded wav2vec2 from %s (%d layers)", directory, model.config.num_hidden_layers
        )
        on_device = model.to(device)  # type: ignore[arg-type]  # transformers wraps to() in functools.wraps, which typeshed does not bind as a method
        return cls(on_device, config, normalize_input=_read_do_normalize(directory))

    # ----- shape facts ----------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Transformer layers whose outputs are stacked (12 for wav2vec2 base)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """Channels per layer output (768 for wav2vec2 base)."""
        return int(self.model.config.hidden_size)

    # ----- computation ----------------------------------------------------------------

    def preprocess(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Host-side steps for one window: (loudness-normalised float64, model input float32).

        Both are [window_samples]. Silent windows skip the loudness step unchanged.
        """
        samples = np.asarray(window)
        if samples.shape != (self.config.window_samples,):
            raise ValueError(
                f"expected a window of {self.config.window_samples} samples "
                f"({self.config.window_seconds} s at {self.config.sample_rate} Hz), "
                f"got shape {samples.shape}"
            )
        # 1. Loudness normalisation of the whole window (float64).
        normed = self.loudness.normalize(samples, self.config.sample_rate)  # [N] float64
        # 2. Feature-extractor normalisation, in float32 like Wav2Vec2FeatureExtractor.
        values = normed.astype(np.float32)  # [N]
        if self.normalize_input:
            values = zero_mean_unit_variance(values)
        return normed, values

    @torch.no_grad()
    def encode_input(self, input_values: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Model part: normalised samples [N] -> per-frame features [window_frames, layers, C]."""
        values = torch.as_tensor(input_values).to(device=self.device, dtype=self.dtype)  # [N]
        states = wav2vec_hidden_states(self.model, values[None], self.config.window_frames)
        return torch.stack([state[0] for state in states[1:]], dim=1)  # [frames, layers, C]

    def per_frame_features(self, window: np.ndarray) -> torch.Tensor:
        """Features of every frame of one window: [window_frames, layers, C]."""
        _, values = self.preprocess(window)
        return self.encode_input(values)

    def chunk_windows(self, features: torch.Tensor) -> torch.Tensor:
        """Per-frame features -> the chunk's frames, each with its neighbours.

        [window_frames, layers, C] -> [1, chunk_frames, audio_window, layers, C]; neighbours
        beyond the window's last frame repeat it.
        """
        index = self._window_index  # [chunk_frames, audio_window], on the encoder's device
        if index.device != features.device:
            index = index.to(features.device)
        return features[index][None].contiguous()

    def chunk_features(self, window: np.ndarray) -> torch.Tensor:
        """One ring window -> the chunk's features [1, 33, 5, layers, C], encoder device/dtype."""
        return self.chunk_windows(self.per_frame_features(window))

    __call__ = chunk_features


def zero_mean_unit_variance(values: np.ndarray) -> np.ndarray:
    """``Wav2Vec2FeatureExtractor``'s normalisation of one clip: float32 ``[N]``, zero mean
    and unit variance (``FEATURE_NORM_EPSILON`` added to the variance)."""
    values = np.asarray(values, dtype=np.float32)
    normed = (values - values.mean()) / np.sqrt(values.var() + FEATURE_NORM_EPSILON)
    result: np.ndarray = normed.astype(np.float32, copy=False)  # [N]
    return result


def wav2vec_hidden_states(
    model: Wav2Vec2Model, values: torch.Tensor, frames: int
) -> list[torch.Tensor]:
    """wav2vec2 on normalised samples ``[1, N]`` with its conv features resampled to ``frames``.

    The convolutional features (~50 Hz) are linearly interpolated (``align_corners=True``)
    to one per video frame *before* the feature projection and the transformer, as both
    official audio-driven models do. Returns the transformer's input (after the positional
    convolution and the input layer norm) followed by every layer's output: ``layers + 1``
    tensors ``[1, frames, C]`` (``transformers``' ``hidden_states``).
    """
    # 1. Convolutional features at the model's own rate (~50 Hz).
    conv = model.feature_extractor(values)  # [1, C_conv, T_conv]
    # 2. Linear resample to one feature per video frame.
    conv = F.interpolate(conv, size=frames, mode="linear", align_corners=True)
    conv = conv.transpose(1, 2)  # [1, frames, C_conv]
    # 3. Feature projection to the transformer width.
    hidden, _ = model.feature_projection(conv)  # [1, frames, C]
    # 4. Positional convolution and input layer norm (post-norm encoder).
    encoder = model.encoder
    hidden = encoder.layer_norm(hidden + encoder.pos_conv_embed(hidden))  # [1, frames, C]
    # 5. Every transformer layer's output.
    states = [hidden]
    for layer in encoder.layers:
        result = layer(hidden)
        hidden = result[0] if isinstance(result, tuple) else result  # [1, frames, C]
        states.append(hidden)
    return states


def _as_hf_config(model_config: Wav2Vec2Config | Mapping[str, Any]) -> Wav2Vec2Config:
    """A transformers ``Wav2Vec2Config`` from a config object or its dict."""
    if isinstance(model_config, Wav2Vec2Config):
        return model_config
    return Wav2Vec2Config(**dict(model_config))

"""OmniAvatar model sizes: the DiT's hyper-parameters, its LoRA, and each size's parts.

Owns: ``OmniDiTConfig`` (Wan 2.1 T2V with a 33-channel patch embedding and the audio pack),
``LoraConfig`` (rank, alpha, targets), ``OmniSize`` (DiT, LoRA, VAE, T5 and wav2vec2 configs
plus the official folder names of one size) and the sizes ``tiny`` (the goldens' widths,
random weights, CPU), ``1.3b`` and ``14b``. ``validate()`` names every bad value. Knows
nothing about devices, files or the sampling recipe (``pipeline.omniavatar.recipe``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from headcast.pipeline.audio import TINY_WAV2VEC2_CONFIG
from headcast.pipeline.text import TEXT_LEN_TOKENS, T5Config
from headcast.pipeline.vae import VAEConfig

WAV2VEC2_BASE_LAYERS = 12
"""Transformer layers of wav2vec2-base-960h."""

WAV2VEC2_BASE_HIDDEN = 768
"""Hidden width of wav2vec2-base-960h."""

AUDIO_PACK_FRAMES = 4
"""Video frames the audio pack groups into one latent frame (the VAE's temporal stride)."""

FIRST_AUDIO_BLOCK = 2
"""Index of the first block that gets an audio projection added before it."""

LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")
"""Linears (by last name components) that carry a LoRA, in self- and cross-attention."""


class OmniConfigError(ValueError):
    """An OmniAvatar configuration value is missing or invalid."""


def audio_features(layers: int, hidden: int) -> int:
    """Features per video frame: the last layer, then every hidden state ((layers + 2) x hidden)."""
    return (layers + 2) * hidden


@dataclass(frozen=True)
class OmniDiTConfig:
    """Hyper-parameters of the OmniAvatar DiT (the official ``WanModel`` arguments)."""

    dim: int
    """Width of the token stream."""
    ffn_dim: int
    """Hidden width of each block's feed-forward network."""
    num_heads: int
    """Attention heads (head dim = dim / num_heads)."""
    num_layers: int
    """Transformer blocks."""
    in_dim: int = 33
    """Patch-embedding input channels: 16 noisy latent + 16 reference latent + 1 mask."""
    out_dim: int = 16
    """Latent channels of the predicted velocity."""
    text_dim: int = 4096
    """Channels of the umT5 prompt embedding."""
    text_len: int = TEXT_LEN_TOKENS
    """Prompt rows the DiT sees (zero-padded after the prompt)."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    eps: float = 1e-6
    """Epsilon of the blocks' norms and the head's LayerNorm."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch (frames, rows, cols) of the patch embedding."""
    audio_input_dim: int = audio_features(WAV2VEC2_BASE_LAYERS, WAV2VEC2_BASE_HIDDEN)
    """Audio features per video frame (10,752 for wav2vec2 base)."""
    audio_hidden_size: int = 32
    """Width of the audio pack's output (``audio_hidden_size`` in ``config.json``)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    @property
    def audio_projections(self) -> int:
        """Per-layer audio projections: blocks 2 .. num_layers / 2 get one each."""
        return self.num_layers // 2 - 1

    @property
    def latent_channels(self) -> int:
        """Channels of the noisy latent (= ``out_dim``)."""
        return self.out_dim

    def validate(self) -> None:
        """Raise ``OmniConfigError`` naming every bad value."""
        problems: list[str] = []
        for name in (
            "dim",
            "ffn_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "text_dim",
            "text_len",
            "freq_dim",
            "audio_input_dim",
            "audio_hidden_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name}={value!r} must be a positive integer")
        if problems:
            raise OmniConfigError("invalid OmniAvatar DiT config: " + "; ".join(problems))
        if self.dim % self.num_heads or self.head_dim % 2:
            problems.append(f"dim={self.dim} / num_heads={self.num_heads} must be an even integer")
        if self.in_dim != 2 * self.out_dim + 1:
            problems.append(
                f"in_dim={self.in_dim} must be 2 x out_dim + 1 (latent, reference latent, mask)"
            )
        if tuple(self.patch_size) != (1, 2, 2):
            problems.append(
                f"patch_size={self.patch_size} must be (1, 2, 2) (the audio is per frame)"
            )
        if self.num_layers < 2 * FIRST_AUDIO_BLOCK:
            problems.append(
                f"num_layers={self.num_layers} must be at least {2 * FIRST_AUDIO_BLOCK}"
            )
        if self.freq_dim % 2:
            problems.append(f"freq_dim={self.freq_dim} must be even")
        if self.eps <= 0:
            problems.append(f"eps={self.eps} must be positive")
        if problems:
            raise OmniConfigError("invalid OmniAvatar DiT config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmniDiTConfig:
        """From a golden's or a checkpoint's config keys; unrelated keys are ignored."""
        known = set(cls.__dataclass_fields__)
        values = {key: value for key, value in data.items() if key in known}
        if "patch_size" in values:
            values["patch_size"] = tuple(values["patch_size"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise OmniConfigError(f"OmniAvatar DiT config is missing values: {exc}") from exc


@dataclass(frozen=True)
class LoraConfig:
    """The LoRA OmniAvatar trained on the Wan base (``config.json`` of the checkpoint)."""

    rank: int = 128
    """Inner width r of each ``B @ A``."""
    alpha: float = 64.0
    """Scale numerator: the update is ``(alpha / rank) * B @ A``."""
    targets: tuple[str, ...] = LORA_TARGETS
    """Linear names (``q``, ``ffn.0``...) that carry a LoRA in every block."""

    @property
    def scaling(self) -> float:
        """``alpha / rank`` (0.5 for the official 128 / 64)."""
        return self.alpha / self.rank

    def validate(self) -> None:
        if self.rank <= 0 or self.alpha <= 0 or not self.targets:
            raise OmniConfigError(
                f"LoRA rank={self.rank} and alpha={self.alpha} must be positive, "
                f"targets={self.targets} not empty"
            )


TINY_LORA = LoraConfig(rank=8, alpha=4.0)
"""The goldens' LoRA (scaling 0.5, like the official 128 / 64)."""

TINY_T5 = T5Config(
    vocab=100, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2, num_buckets=8
)
"""The goldens' umT5 stand-in (64 wide, 2 layers)."""

TINY_VAE_DIM = 4
"""Base width of the goldens' tiny VAE (full size: 96)."""

TINY_TEXT_LEN = 32
"""Prompt rows of the tiny size (full size: 512)."""


@dataclass(frozen=True)
class OmniSize:
    """One OmniAvatar size: every model part's config and where the official files live."""

    name: str
    """``tiny``, ``1.3b`` or ``14b``."""
    dit: OmniDiTConfig
    lora: LoraConfig
    vae: VAEConfig
    t5: T5Config
    wav2vec: MappingProxyType[str, Any] | None = None
    """A transformers ``Wav2Vec2Config`` dict for random weights (tiny); None: from disk."""
    base_dir: str = ""
    """Folder of the Wan 2.1 T2V base (DiT shards, VAE, T5, tokenizer) in the model folder."""
    omni_dir: str = ""
    """Folder of OmniAvatar's ``pytorch_model.pt`` (and ``config.json``)."""
    wav2vec_dir: str = "wav2vec2-base-960h"
    """Folder of the wav2vec2 model."""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.lora.validate()
        if self.dit.text_dim != self.t5.dim:
            raise OmniConfigError(f"dit.text_dim={self.dit.text_dim} != t5.dim={self.t5.dim}")
        if self.dit.out_dim != self.vae.z_dim:
            raise OmniConfigError(f"dit.out_dim={self.dit.out_dim} != vae.z_dim={self.vae.z_dim}")
        if self.wav2vec is not None:
            features = audio_features(
                self.wav2vec["num_hidden_layers"], self.wav2vec["hidden_size"]
            )
            if features != self.dit.audio_input_dim:
                raise OmniConfigError(
                    f"wav2vec2 gives {features} features per frame, the DiT expects "
                    f"{self.dit.audio_input_dim}"
                )

    @property
    def is_random(self) -> bool:
        """True for the tiny size: random weights, no model folder."""
        return self.wav2vec is not None


def tiny() -> OmniSize:
    """The goldens' sizes (dim 128, 6 layers, VAE dim 4, 2-layer umT5 and wav2vec2)."""
    wav2vec = MappingProxyType(dict(TINY_WAV2VEC2_CONFIG))
    return OmniSize(
        name="tiny",
        dit=OmniDiTConfig(
            dim=128,
            ffn_dim=256,
            num_heads=4,
            num_layers=6,
            text_dim=TINY_T5.dim,
            text_len=TINY_TEXT_LEN,
            audio_input_dim=audio_features(wav2vec["num_hidden_layers"], wav2vec["hidden_size"]),
        ),
        lora=TINY_LORA,
        vae=VAEConfig(dim=TINY_VAE_DIM),
        t5=TINY_T5,
        wav2vec=wav2vec,
        description="tiny random weights (noise pictures; tests and CPU smoke runs)",
    )


def _official(name: str, dit: OmniDiTConfig, wan: str, omni: str) -> OmniSize:
    """An official size: its DiT on the full-size VAE, umT5-XXL and wav2vec2 base."""
    return OmniSize(
        name=name,
        dit=dit,
        lora=LoraConfig(),
        vae=VAEConfig.wan21(),
        t5=T5Config.umt5_xxl(),
        base_dir=wan,
        omni_dir=omni,
        description=f"{omni} ({wan} + LoRA + audio)",
    )


def size_1_3b() -> OmniSize:
    """OmniAvatar-1.3B on Wan2.1-T2V-1.3B: dim 1536, 12 heads, 30 layers, 14 audio projections."""
    dit = OmniDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
    return _official("1.3b", dit, "Wan2.1-T2V-1.3B", "OmniAvatar-1.3B")


def size_14b() -> OmniSize:
    """OmniAvatar-14B on Wan2.1-T2V-14B: dim 5120, 40 heads, 40 layers, 19 audio projections."""
    dit = OmniDiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
    return _official("14b", dit, "Wan2.1-T2V-14B", "OmniAvatar-14B")


SIZES = {"tiny": tiny, "1.3b": size_1_3b, "14b": size_14b}
"""Size name -> builder."""


def omni_size(name: str) -> OmniSize:
    """The named size; ``OmniConfigError`` lists the names for an unknown one."""
    try:
        return SIZES[name]()
    except KeyError:
        raise OmniConfigError(
            f"unknown OmniAvatar size {name!r}; choose one of {', '.join(SIZES)}"
        ) from None

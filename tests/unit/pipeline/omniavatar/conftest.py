"""The OmniAvatar goldens' tiny models, built once per test session from their ``state.*``.

Each golden file carries its models in the official key format; these fixtures build our
modules from exactly those tensors (the DiT with its LoRA merged at load), so every test
compares our computation with the official one on the same weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from headcast.pipeline.checkpoint import materialize
from headcast.pipeline.omniavatar.audio import OmniAudioEncoder
from headcast.pipeline.omniavatar.config import LoraConfig, OmniDiTConfig
from headcast.pipeline.omniavatar.dit import OmniAvatarDiT
from headcast.pipeline.omniavatar.loader import build_omni_dit
from headcast.pipeline.omniavatar.models import prompt_context
from headcast.pipeline.omniavatar.tiled_vae import TiledVAE
from headcast.pipeline.text import PromptEncoder, T5Config, T5Encoder, TokenizedPrompt
from headcast.pipeline.vae import VAEConfig, WanVAE
from tests.reference import OMNIAVATAR, Golden, load_golden

GOLDEN_TOL = 1e-4
"""Relative error allowed against the official float32 outputs."""

WAV2VEC_CONFIG_EXTRAS = ("other_fields", "feature_extractor", "audio_input_dim")
"""Keys of the audio golden's config that describe, not configure, the wav2vec2 model."""

TEXT_ONLY_KEYS = ("text_len",)
"""Keys of the text golden's config that are not ``T5Config`` fields."""


def omni_golden(name: str) -> Golden:
    return load_golden(name, OMNIAVATAR)


@pytest.fixture(scope="session")
def dit_golden() -> Golden:
    return omni_golden("omni_dit_tiny")


@pytest.fixture(scope="session")
def text_golden() -> Golden:
    return omni_golden("omni_text_tiny")


@pytest.fixture(scope="session")
def text_len(text_golden: Golden) -> int:
    return int(text_golden.config["text_len"])


@pytest.fixture(scope="session")
def lora(dit_golden: Golden) -> LoraConfig:
    config = dit_golden.config
    return LoraConfig(
        rank=config["lora_rank"],
        alpha=config["lora_alpha"],
        targets=tuple(config["lora_target_modules"].split(",")),
    )


@pytest.fixture(scope="session")
def dit(dit_golden: Golden, lora: LoraConfig, text_len: int) -> OmniAvatarDiT:
    """The golden DiT with its LoRA merged (the golden computed it unmerged)."""
    config = OmniDiTConfig.from_dict({**dit_golden.config, "text_len": text_len})
    assert lora.scaling == dit_golden.config["lora_scaling"]
    return build_omni_dit(config, lora, dit_golden.state)


@pytest.fixture(scope="session")
def vae() -> TiledVAE:
    golden = omni_golden("omni_vae_tiny")
    config = VAEConfig.from_dict(golden.config)
    return TiledVAE(materialize(lambda: WanVAE(config), golden.state).eval())


@pytest.fixture(scope="session")
def audio_encoder() -> OmniAudioEncoder:
    golden = omni_golden("omni_audio_tiny")
    config = {k: v for k, v in golden.config.items() if k not in WAV2VEC_CONFIG_EXTRAS}
    model = materialize(lambda: Wav2Vec2Model(Wav2Vec2Config(**config)), golden.state)
    assert golden.config["feature_extractor"]["do_normalize"]
    return OmniAudioEncoder(model.eval(), normalize_input=True)


class RecordedTokenizer:
    """The goldens' stand-in tokenizer: the recorded ids and masks of their two prompts
    (``google/umt5-xxl`` is not available here; the goldens pin the encoder, not tokenising)."""

    def __init__(self, text_golden: Golden) -> None:
        self._tokens = {
            meta_text(text_golden, key): TokenizedPrompt(
                text_golden.inputs[f"ids_{kind}"], text_golden.inputs[f"mask_{kind}"]
            )
            for key, kind in (("prompt", "pos"), ("negative_prompt", "neg"))
        }

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        return self._tokens[prompt]


@pytest.fixture(scope="session")
def prompt_encoder(text_golden: Golden) -> PromptEncoder:
    config = T5Config.from_dict(
        {k: v for k, v in text_golden.config.items() if k not in TEXT_ONLY_KEYS}
    )
    encoder = materialize(lambda: T5Encoder(config), text_golden.state).eval()
    return PromptEncoder(RecordedTokenizer(text_golden), encoder)


@pytest.fixture(scope="session")
def prompts(prompt_encoder: PromptEncoder, text_len: int):
    """A ``PromptSource`` over the golden text encoder."""

    def encode(texts: list[str]) -> list[torch.Tensor]:
        return [prompt_context(prompt_encoder, text, text_len) for text in texts]

    return encode


def meta_text(golden: Golden, key: str) -> str:
    """A text metadata entry (stored JSON-encoded, like every entry)."""
    return str(json.loads(golden.metadata[key]))


def sample_args(golden: Golden) -> dict:
    """The recipe values a sampling golden used."""
    return json.loads(golden.metadata["args"])

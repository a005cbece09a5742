"""The umt5-xxl T5 text encoder: prompt -> context tokens for the DiT's cross-attention.

Owns: ``T5Config`` (with the full-size ``umt5_xxl`` preset), the encoder module under the
official checkpoint key names of ``models_t5_umt5-xxl-enc-bf16.pth``, loading that file,
the prompt tokenizer protocol with its two implementations (the Hugging Face umt5
tokenizer in ``<model_dir>/google/umt5-xxl/`` and a hash stand-in for tests and the tiny
engine), and ``PromptEncoder``, which turns one prompt into ``[L_valid, dim]`` rows.

This runs once per avatar, never per chunk: it favours clarity and low peak memory over
speed. It must not know about the DiT, the sampler, sessions or anything in ``streaming``.
"""

from __future__ import annotations

import html
import logging
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from headcast.pipeline.checkpoint import CheckpointError, materialize, read_torch_state

logger = logging.getLogger(__name__)

T5_CHECKPOINT_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
"""The official encoder-only checkpoint (a ``torch.save`` state dict) in the model directory."""

T5_TOKENIZER_DIR = "google/umt5-xxl"
"""The Hugging Face umt5 tokenizer files, relative to the model directory."""

OFFICIAL_T5_DTYPE = torch.bfloat16
"""The dtype the official pipeline runs the text encoder in (the checkpoint's own dtype)."""

TEXT_LEN_TOKENS = 512
"""Prompts are padded (and truncated) to this many tokens, as in the official pipeline."""

DEFAULT_PROMPT = (
    "A person is talking. Only the foreground characters are moving, the background remains static."
)
"""The official FlashTalk prompt, used when an avatar does not bring its own."""

T5_ATTENTION_SCALE = 1.0
"""T5 does not scale q·k by 1/sqrt(head_dim): the scale is folded into the trained weights."""

_TRAINING_ONLY_KEYS = frozenset({"dropout"})
"""Keys of the official config that only matter in training; ``from_dict`` ignores them."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class T5Config:
    """Sizes of a T5 encoder in the official (Wan ``t5.py``) parameterisation."""

    vocab: int
    """Rows of the token embedding (the tokenizer's vocabulary size)."""
    dim: int
    """Width of the residual stream and of the output rows."""
    dim_attn: int
    """Total width of q, k and v over all heads (``num_heads * head_dim``)."""
    dim_ffn: int
    """Hidden width of the gated-GELU feed-forward."""
    num_heads: int
    """Attention heads per layer."""
    num_layers: int
    """Encoder blocks."""
    num_buckets: int
    """Relative-position buckets (half for keys before the query, half for keys after)."""
    shared_pos: bool = False
    """True: one relative-position table for all layers (T5); False: one per layer (umt5)."""
    max_distance: int = 128
    """Distance in tokens beyond which relative positions share the last bucket."""
    norm_eps: float = 1e-6
    """Epsilon of the RMS norms."""

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim_attn // self.num_heads

    def validate(self) -> None:
        """Raise ValueError naming every value that cannot build an encoder."""
        problems = [
            f"{name}={getattr(self, name)} must be positive"
            for name in ("vocab", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers")
            if getattr(self, name) <= 0
        ]
        if self.num_heads > 0 and self.dim_attn % self.num_heads:
            problems.append(
                f"dim_attn={self.dim_attn} must be divisible by num_heads={self.num_heads}"
            )
        if self.num_buckets < 4 or self.num_buckets % 2:
            problems.append(f"num_buckets={self.num_buckets} must be even and at least 4")
        if self.max_distance <= self.num_buckets // 4:
            problems.append(
                f"max_distance={self.max_distance} must exceed num_buckets/4="
                f"{self.num_buckets // 4} (the largest exactly-bucketed distance)"
            )
        if self.norm_eps <= 0:
            problems.append(f"norm_eps={self.norm_eps} must be positive")
        if problems:
            raise ValueError("invalid T5Config: " + "; ".join(problems))

    @classmethod
    def umt5_xxl(cls) -> T5Config:
        """The encoder of ``models_t5_umt5-xxl-enc-bf16.pth`` (5.68 B parameters)."""
        return cls(
            vocab=256_384,
            dim=4096,
            dim_attn=4096,
            dim_ffn=10_240,
            num_heads=64,
            num_layers=24,
            num_buckets=32,
            shared_pos=False,
        )

    @classmethod
    def tiny(cls) -> T5Config:
        """A 2-layer, 32-wide umt5-style encoder for tests and the tiny engine."""
        return cls(
            vocab=100,
            dim=32,
            dim_attn=32,
            dim_ffn=64,
            num_heads=4,
            num_layers=2,
            num_buckets=8,
            shared_pos=False,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> T5Config:
        """Build from official-style keys (``dropout`` is accepted and ignored); validate."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - _TRAINING_ONLY_KEYS)
        if unknown:
            raise ValueError(f"unknown T5Config keys {unknown}; expected some of {sorted(known)}")
        config = cls(**{key: value for key, value in data.items() if key in known})
        config.validate()
        return config


# ----------------------------------------------------------------------------- modules


def relative_position_buckets(
    length: int, *, num_buckets: int, max_distance: int, device: torch.device
) -> torch.Tensor:
    """Bidirectional T5 buckets of ``key - query`` for a sequence of ``length``: [L, L] int64.

    Half of the buckets are for keys after the query; within each half, distances below a
    quarter of ``num_buckets`` get one bucket each and larger ones are log-spaced up to
    ``max_distance``, beyond which they share the last bucket.
    """
    positions = torch.arange(length, device=device)
    relative = positions[None, :] - positions[:, None]  # [Lq, Lk], key minus query
    half = num_buckets // 2
    buckets = (relative > 0).long() * half  # [Lq, Lk], keys after the query: upper half
    distance = relative.abs()
    max_exact = half // 2
    # Log-spaced buckets; clamping below at max_exact keeps log() finite where unused.
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(
        max_distance / max_exact
    )
    far = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, far)  # [Lq, Lk]


def clamp_float16_overflow(x: torch.Tensor) -> torch.Tensor:
    """In float16 only, clamp infinities back into range (as the official encoder does)."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(min=-limit, max=limit)
    return x


class T5LayerNorm(nn.Module):
    """T5's RMS norm: no mean subtraction, no bias, statistics in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(self.weight.dtype)


class T5RelativeEmbedding(nn.Module):
    """One learned attention bias per (bucket, head)."""

    def __init__(self, num_buckets: int, num_heads: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        """buckets [Lq, Lk] int64 -> bias [1, heads, Lq, Lk]."""
        per_pair: torch.Tensor = self.embedding(buckets)  # [Lq, Lk, heads]
        return per_pair.permute(2, 0, 1).unsqueeze(0)


class T5Attention(nn.Module):
    """Unscaled multi-head self-attention with an additive bias, no projection biases."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], bias [B, heads, L, L] (position bias and padding) -> [B, L, dim]."""
        b, length, _ = x.shape
        # 1. project to heads: [B, heads, L, head_dim]
        q, k, v = (
            proj(x).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )
        # 2. attention with the additive bias and T5's unit scale (SDPA directly: the shared
        #    pipeline.attention dispatch has neither a bias nor a custom scale)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=T5_ATTENTION_SCALE)
        # 3. merge heads and project back: [B, L, dim]
        projected: torch.Tensor = self.o(out.transpose(1, 2).reshape(b, length, -1))
        return projected


class T5FeedForward(nn.Module):
    """Gated-GELU feed-forward: ``fc2(fc1(x) * gelu_tanh(gate(x)))``."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.fc1(x) * self.gate(x))  # [B, L, dim]
        return out


class T5Block(nn.Module):
    """Pre-norm self-attention and feed-forward; with its own position table in umt5."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.norm1 = T5LayerNorm(config.dim, config.norm_eps)
        self.attn = T5Attention(config.dim, config.dim_attn, config.num_heads)
        self.norm2 = T5LayerNorm(config.dim, config.norm_eps)
        self.ffn = T5FeedForward(config.dim, config.dim_ffn)
        self.pos_embedding = (
            None if config.shared_pos else T5RelativeEmbedding(config.num_buckets, config.num_heads)
        )

    def forward(
        self,
        x: torch.Tensor,
        buckets: torch.Tensor,
        key_mask: torch.Tensor,
        shared_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """x [B, L, dim], buckets [L, L], key_mask [B, L] bool -> [B, L, dim].

        ``shared_bias`` [1, heads, L, L] is the encoder's table when positions are shared.
        """
        b, length, _ = x.shape
        # 1. position bias of this layer (or the shared one), padded keys masked out
        position_bias = shared_bias if self.pos_embedding is None else self.pos_embedding(buckets)
        if position_bias is None:
            raise ValueError("this block shares the encoder's position bias: pass shared_bias")
        bias = position_bias.expand(b, -1, length, length).masked_fill(
            ~key_mask[:, None, None, :], torch.finfo(x.dtype).min
        )  # [B, heads, L, L]
        # 2. attention and feed-forward residuals
        x = clamp_float16_overflow(x + self.attn(self.norm1(x), bias))
        return clamp_float16_overflow(x + self.ffn(self.norm2(x)))


class T5Encoder(nn.Module):
    """The T5 encoder stack; parameter names match the official checkpoint keys."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab, config.dim)
        self.pos_embedding = (
            T5RelativeEmbedding(config.num_buckets, config.num_heads) if config.shared_pos else None
        )
        self.blocks = nn.ModuleList(T5Block(config) for _ in range(config.num_layers))
        self.norm = T5LayerNorm(config.dim, config.norm_eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, L] int64, mask [B, L] (nonzero = real token) -> hidden [B, L, dim].

        Rows at padded positions are computed too (they attend to the real tokens); callers
        keep rows ``[:mask.sum()]``.
        """
        _, length = ids.shape
        key_mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask != 0  # [B, L]
        # 1. token embeddings: [B, L, dim]
        x = self.token_embedding(ids)
        # 2. relative-position buckets, the same for every layer: [L, L]
        buckets = relative_position_buckets(
            length,
            num_buckets=self.config.num_buckets,
            max_distance=self.config.max_distance,
            device=ids.device,
        )
        shared_bias = None if self.pos_embedding is None else self.pos_embedding(buckets)
        # 3. encoder blocks: [B, L, dim]
        for block in self.blocks:
            x = block(x, buckets, key_mask, shared_bias)
        # 4. final RMS norm
        normed: torch.Tensor = self.norm(x)
        return normed


def load_t5(
    path: Path, *, device: torch.device | str, dtype: torch.dtype, config: T5Config | None = None
) -> T5Encoder:
    """Load the official encoder checkpoint (mmapped, strict) into a frozen ``T5Encoder``.

    ``config`` defaults to ``T5Config.umt5_xxl()``; the official pipeline runs it in
    ``OFFICIAL_T5_DTYPE``.
    """
    config = config or T5Config.umt5_xxl()
    state = read_torch_state(Path(path), "T5 text encoder checkpoint")
    logger.info("loading T5 encoder from %s (%d tensors) as %s", path, len(state), dtype)
    encoder = materialize(
        lambda: T5Encoder(config),
        state,
        device=device,
        dtype=dtype,
        what=f"T5 text encoder checkpoint {path}",
    )
    return encoder.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- tokenizers


@dataclass(frozen=True)
class TokenizedPrompt:
    """One prompt as token ids and its padding mask."""

    ids: torch.Tensor
    """[1, text_len] int64 token ids, padded at the end."""
    mask: torch.Tensor
    """[1, text_len] int64, 1 for real tokens (including the end token), 0 for padding."""


class PromptTokenizer(Protocol):
    """What ``PromptEncoder`` needs from a tokenizer."""

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """Clean, tokenize, append the end token, pad/truncate to a fixed length."""
        ...


def whitespace_clean(text: str) -> str:
    """Collapse runs of whitespace into one space and strip the ends."""
    return re.sub(r"\s+", " ", text).strip()


def clean_prompt(text: str) -> str:
    """The official ``clean='whitespace'``: fix mojibake, unescape HTML, collapse spaces."""
    try:
        import ftfy  # imported here: only the real tokenizer needs it
    except ImportError as exc:
        raise ImportError(
            "cleaning prompts for the umt5 tokenizer needs the `ftfy` package: pip install ftfy"
        ) from exc

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return whitespace_clean(text)


class Umt5Tokenizer:
    """The Hugging Face umt5 tokenizer with the official cleaning, padding and truncation."""

    def __init__(self, hf_tokenizer: Any, text_len: int = TEXT_LEN_TOKENS) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.text_len = text_len

    @classmethod
    def from_dir(cls, directory: Path, text_len: int = TEXT_LEN_TOKENS) -> Umt5Tokenizer:
        """Load the tokenizer files in ``directory`` (never downloads)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(
                f"umt5 tokenizer directory not found: {directory}. Check the model directory "
                f"with `headcast doctor --model-dir {directory.parent.parent}`."
            )
        from transformers import AutoTokenizer  # imported here: heavy, and only needed here

        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot load the umt5 tokenizer from {directory}: {exc}. Check the model "
                f"directory with `headcast doctor --model-dir {directory.parent.parent}`."
            ) from exc
        return cls(hf_tokenizer, text_len)

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        encoded = self.hf_tokenizer(
            [clean_prompt(prompt)],
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
        )
        return TokenizedPrompt(ids=encoded.input_ids, mask=encoded.attention_mask)


HASH_PAD_ID = 0
"""Padding id of ``HashTokenizer`` (the umt5 pad id)."""
HASH_END_ID = 1
"""End-of-text id of ``HashTokenizer`` (the umt5 ``</s>`` id)."""
HASH_FIRST_TEXT_ID = 3
"""First id ``HashTokenizer`` gives to text bytes; 0..2 are pad, end and unknown in umt5."""


class HashTokenizer:
    """A deterministic stand-in for the umt5 tokenizer, for tests and the tiny engine only.

    Each UTF-8 byte of the whitespace-cleaned prompt becomes one id
    (``HASH_FIRST_TEXT_ID + byte % (vocab_size - HASH_FIRST_TEXT_ID)``), then the end id,
    then padding. The ids mean nothing to a trained model; the shapes and the mask behave
    like the real tokenizer's.
    """

    def __init__(self, vocab_size: int, text_len: int = TEXT_LEN_TOKENS) -> None:
        if vocab_size <= HASH_FIRST_TEXT_ID:
            raise ValueError(
                f"HashTokenizer needs vocab_size > {HASH_FIRST_TEXT_ID}, got {vocab_size}"
            )
        if text_len < 1:
            raise ValueError(f"HashTokenizer needs text_len >= 1, got {text_len}")
        self.vocab_size = vocab_size
        self.text_len = text_len

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        text_ids = [
            HASH_FIRST_TEXT_ID + byte % (self.vocab_size - HASH_FIRST_TEXT_ID)
            for byte in whitespace_clean(prompt).encode("utf-8")
        ]
        tokens = text_ids[: self.text_len - 1] + [HASH_END_ID]  # truncation keeps the end id
        ids = torch.full((1, self.text_len), HASH_PAD_ID, dtype=torch.long)  # [1, text_len]
        mask = torch.zeros((1, self.text_len), dtype=torch.long)  # [1, text_len]
        ids[0, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[0, : len(tokens)] = 1
        return TokenizedPrompt(ids=ids, mask=mask)


# ----------------------------------------------------------------------------- prompt encoder


class PromptEncoder:
    """A tokenizer and a T5 encoder: one prompt -> its ``[L_valid, dim]`` context rows."""

    def __init__(self, tokenizer: PromptTokenizer, encoder: T5Encoder) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, *, device: torch.device | str, dtype: torch.dtype = OFFICIAL_T5_DTYPE
    ) -> PromptEncoder:
        """The official umt5-xxl encoder and tokenizer from a FlashTalk model directory."""
        model_dir = Path(model_dir)
        tokenizer = Umt5Tokenizer.from_dir(model_dir / T5_TOKENIZER_DIR)
        encoder = load_t5(model_dir / T5_CHECKPOINT_FILE, device=device, dtype=dtype)
        return cls(tokenizer, encoder)

    @torch.no_grad()
    def encode(self, prompt: str = DEFAULT_PROMPT) -> torch.Tensor:
        """prompt -> [L_valid, dim] on the encoder's device and dtype (padding rows dropped)."""
        device = self.encoder.token_embedding.weight.device
        tokens = self.tokenizer.tokenize(prompt)
        ids = tokens.ids.to(device)  # [1, text_len]
        mask = tokens.mask.to(device)  # [1, text_len]
        hidden: torch.Tensor = self.encoder(ids, mask)  # [1, text_len, dim]
        valid = int(mask[0].gt(0).sum())
        return hidden[0, :valid]  # [L_valid, dim]

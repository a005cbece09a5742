"""The OmniAvatar DiT: Wan 2.1 T2V blocks plus the audio pack and per-layer audio additions.

Owns: ``OmniAvatarDiT`` under the official parameter names (Wan base keys plus
``audio_proj.*`` and ``audio_cond_projs.*``; the LoRA is merged into the base weights at
load time, see ``pipeline.omniavatar.lora``), its T2V block (self-attention, text-only
cross-attention, FFN, AdaLN; no image branch, no audio cross-attention) and its forward in
three parts so a sampler can reuse the block stack's residual (TeaCache) or run it on part
of a batch: ``conditions`` (prompt and audio, once per segment), ``embed`` (patch
embedding of ``cat(x, y)`` and the timestep, once per step for all guidance passes),
``run_blocks`` (the blocks, with each audio projection added to the hidden states before
blocks 2 .. num_layers / 2) and ``project`` (head, unpatchify).

Reuses from ``pipeline.dit`` what is the same computation as FlashTalk's Wan blocks
(self-attention with qk RMSNorm and 3-axis RoPE, float32 LayerNorm, the head, the timestep
sinusoid) and the one attention dispatch. Dtype policy as there: the token stream runs in
the weights' dtype; norms, AdaLN terms, the timestep MLPs and the head in float32. The
timestep is rounded to the weights' dtype before its embedding, as the official bf16 run
does (937.5 -> 936). Unlike the official forward, a batch of several samples is exact (the
official audio reshape is correct only for batch 1), so guidance passes can be batched. With
fp8 linears the block hands them e4m3 rows made in one pass with the residual and norm, or
the GELU, before them (``T2VBlock.fp8_inputs``, ``pipeline.fp8_rows``): the same values.

Sequence parallel (``WanBackbone.set_parallel``): the block stack runs on each rank's share
of the tokens with FlashTalk's Ulysses self-attention; the per-frame audio additions index
each token's latent frame; the hidden states are gathered before the head.

Must not know about sampling, guidance, the VAE or files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from headcast.pipeline.attention import attention
from headcast.pipeline.dit import (
    BLOCK_MODULATION_TERMS,
    TORCH_LAYER_NORM_EPS,
    Head,
    LayerNormF32,
    SelfAttention,
    WanBackbone,
    sinusoidal_embedding,
)
from headcast.pipeline.fp8_rows import (
    adaln_quantize_rows,
    add_adaln_quantize_rows,
    gelu_quantize_rows,
)
from headcast.pipeline.omniavatar.config import (
    AUDIO_PACK_FRAMES,
    FIRST_AUDIO_BLOCK,
    OmniDiTConfig,
)
from headcast.pipeline.quantize import Fp8Rows
from headcast.pipeline.sequence_parallel import TokenShard, gather_tokens, local_rows

FLOAT32_SUBMODULES = ("time_embedding", "time_projection", "head")
"""Submodules kept in float32 whatever the weights' dtype (computed in float32)."""

Grid = tuple[int, int, int]
"""Token grid (latent frames, patch rows, patch columns)."""


class TextCrossAttention(SelfAttention):
    """Cross-attention of the video tokens to the prompt tokens: the self-attention's
    projections and qk RMSNorm (same names), keys and values from the context, no RoPE."""

    def fuse_projections(self) -> None:
        """Nothing to fuse: q reads the video tokens, k and v the prompt."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor | Fp8Rows, context: torch.Tensor
    ) -> torch.Tensor:
        """``x`` ``[B, L, dim]`` (or its e4m3 rows, for fp8 linears), ``context``
        ``[B, text_len, dim]`` -> ``[B, L, dim]``."""
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)  # [B, L, H, D]
        k = self.norm_k(self.k(context)).unflatten(-1, heads)  # [B, text_len, H, D]
        v = self.v(context).unflatten(-1, heads)  # [B, text_len, H, D]
        projected: torch.Tensor = self.o(attention(q, k, v).flatten(2))  # [B, L, dim]
        return projected


class T2VBlock(nn.Module):
    """Wan 2.1 T2V block: AdaLN self-attention, text cross-attention, AdaLN FFN."""

    def __init__(self, config: OmniDiTConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = LayerNormF32(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, qk_norm=True, eps=eps)
        self.norm3 = LayerNormF32(dim, eps, elementwise_affine=True)
        self.cross_attn = TextCrossAttention(dim, config.num_heads, qk_norm=True, eps=eps)
        self.norm2 = LayerNormF32(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.ffn_dim, dim),
        )
        self.modulation = nn.Parameter(torch.zeros(1, BLOCK_MODULATION_TERMS, dim))
        self.fp8_inputs = False
        """Give the fp8 linears their inputs as e4m3 rows made in one pass with the norm or
        the GELU before them (``pipeline.fp8_rows``); set with fp8 linears by
        ``prepare_dit_block``. Off: each linear quantises its input itself."""

    def _norm(
        self,
        norm: LayerNormF32,
        x: torch.Tensor,
        shift: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor | Fp8Rows:
        """``norm(x)`` ``[B, L, dim]``, modulated ``* (1 + scale) + shift`` in float32 when
        given (``[B, 1, dim]``), in ``x``'s dtype or as e4m3 rows (``fp8_inputs``)."""
        if self.fp8_inputs:
            return adaln_quantize_rows(x, shift, scale, norm.weight, norm.bias, norm.eps)
        normed: torch.Tensor = norm(x)
        if shift is None or scale is None:
            return normed
        return (normed.float() * (1 + scale) + shift).to(x.dtype)

    def _add_norm(
        self,
        x: torch.Tensor,
        delta: torch.Tensor,
        gate: torch.Tensor | None,
        norm: LayerNormF32,
        shift: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | Fp8Rows]:
        """The residual ``x + delta`` (gated ``* gate`` in float32 when given, ``[B, 1, dim]``)
        and ``_norm`` of the result: (the new stream, its normalised input of a linear)."""
        if self.fp8_inputs:
            return add_adaln_quantize_rows(
                x, delta, gate, shift, scale, norm.weight, norm.bias, norm.eps
            )
        x = x + delta if gate is None else (x + delta * gate).to(x.dtype)
        return x, self._norm(norm, x, shift, scale)

    def _ffn(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        """The feed-forward network: ``[B, L, dim]`` -> ``[B, L, dim]``."""
        if not self.fp8_inputs:
            out: torch.Tensor = self.ffn(x)
            return out
        hidden = self.ffn[0](x)  # [B, L, ffn_dim]
        return cast(torch.Tensor, self.ffn[2](gelu_quantize_rows(hidden)))

    def forward(
        self,
        x: torch.Tensor,
        t_mod: torch.Tensor,
        context: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        shard: TokenShard | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, L, dim]`` (sequence-parallel: this rank's tokens of ``shard``);
        ``t_mod`` ``[B, 6, dim]`` f32; ``context`` ``[B, T_txt, dim]``."""
        dtype = x.dtype
        terms = (self.modulation.float() + t_mod).chunk(BLOCK_MODULATION_TERMS, dim=1)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = terms  # each [B, 1, dim]
        # 1. self-attention on the modulated stream, gated residual in float32
        modulated = self._norm(self.norm1, x, shift_sa, scale_sa)  # [B, L, dim]
        attended = self.self_attn(modulated, cos, sin, shard)  # [B, L, dim]
        # 2. prompt cross-attention on norm3 of the stream (its residual has no gate)
        x, normed = self._add_norm(x, attended, gate_sa, self.norm3)
        x, modulated = self._add_norm(
            x, self.cross_attn(normed, context), None, self.norm2, shift_ff, scale_ff
        )
        # 3. feed-forward on the modulated stream, gated residual in float32
        x = (x + self._ffn(modulated) * gate_ff).to(dtype)
        return x


class AudioPack(nn.Module):
    """Groups of 4 per-frame audio features -> one ``hidden`` vector per latent frame."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(AUDIO_PACK_FRAMES * features, hidden)
        self.norm_out = nn.LayerNorm(hidden, eps=TORCH_LAYER_NORM_EPS)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, 4T - 3, C]`` (one row per video frame) -> ``[B, T, hidden]``.

        The first frame is repeated 3 more times so the ``4T`` frames pack into T groups
        (a group's features are its 4 frames side by side).
        """
        first = audio[:, :1].expand(-1, AUDIO_PACK_FRAMES - 1, -1)  # [B, 3, C]
        frames = torch.cat([first, audio], dim=1)  # [B, 4T, C]
        groups = torch.unflatten(frames, 1, (-1, AUDIO_PACK_FRAMES)).flatten(2)  # [B, T, 4C]
        packed: torch.Tensor = self.norm_out(self.proj(groups))  # [B, T, hidden]
        return packed


@dataclass
class Conditions:
    """The per-sample conditioning the blocks see; constant over a segment's steps."""

    context: torch.Tensor
    """Embedded prompt ``[B, text_len, dim]`` (zero rows included, embedded too)."""
    audio: torch.Tensor
    """Per-layer audio additions ``[B, audio_projections, T, dim]``."""

    @staticmethod
    def cat(parts: list[Conditions]) -> Conditions:
        """Several samples' conditions as one batch, in order."""
        return Conditions(
            torch.cat([part.context for part in parts]), torch.cat([part.audio for part in parts])
        )

    def select(self, rows: list[int]) -> Conditions:
        """The samples ``rows`` of the batch."""
        index = torch.tensor(rows, device=self.context.device)
        return Conditions(self.context.index_select(0, index), self.audio.index_select(0, index))


@dataclass
class Embedded:
    """One step's embedded latents and timestep (shared by every guidance pass)."""

    tokens: torch.Tensor
    """Patch-embedded ``cat(x, y)``, ``[B, L, dim]`` in the weights' dtype."""
    time: torch.Tensor
    """Timestep embedding ``[B, dim]`` float32 (the head's modulation input)."""
    t_mod: torch.Tensor
    """Per-block AdaLN input ``[B, 6, dim]`` float32."""
    grid: Grid
    """Token grid (frames, rows, cols); ``L = prod(grid)``."""

    def expand(self, batch: int) -> Embedded:
        """A batch-1 embedding repeated ``batch`` times (the tokens copied into a plain
        layout for the blocks' kernels; the small timestep terms as views)."""
        if self.tokens.shape[0] == batch:
            return self
        return Embedded(
            self.tokens.expand(batch, -1, -1).contiguous(),
            self.time.expand(batch, -1),
            self.t_mod.expand(batch, -1, -1),
            self.grid,
        )

    def select(self, rows: list[int]) -> Embedded:
        """The samples ``rows`` of the batch."""
        index = torch.tensor(rows, device=self.tokens.device)
        return Embedded(
            self.tokens.index_select(0, index),
            self.time.index_select(0, index),
            self.t_mod.index_select(0, index),
            self.grid,
        )


class OmniAvatarDiT(WanBackbone):
    """Velocity of the OmniAvatar DiT for one batch of latent videos.

    Build on the meta device and load with ``pipeline.omniavatar.loader.build_omni_dit``
    (a checkpoint state, LoRA merged) or ``load_omni_dit`` (the official folders).
    """

    def __init__(self, config: OmniDiTConfig) -> None:
        super().__init__(config)
        self.config = config
        self.blocks = nn.ModuleList(T2VBlock(config) for _ in range(config.num_layers))
        patch_volume = config.patch_size[0] * config.patch_size[1] * config.patch_size[2]
        self.head = Head(config.dim, patch_volume * config.out_dim, config.eps)
        self.audio_proj = AudioPack(config.audio_input_dim, config.audio_hidden_size)
        self.audio_cond_projs = nn.ModuleList(
            nn.Linear(config.audio_hidden_size, config.dim) for _ in range(config.audio_projections)
        )

    # -- helpers --------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the token stream (the patch embedding's weights)."""
        return self.patch_embedding.weight.dtype

    def time_modulation(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps ``[B]`` (0..1000) -> (embedding ``[B, dim]``, AdaLN input ``[B, 6, dim]``),
        float32. Depends on ``t`` only (TeaCache decides from it before sampling)."""
        rounded = t.to(self.dtype).float()  # the official run embeds a bf16 timestep
        sinusoid = sinusoidal_embedding(rounded, self.config.freq_dim)  # [B, freq_dim]
        weight = cast(nn.Linear, self.time_embedding[0]).weight
        time = self.time_embedding(sinusoid.to(weight.dtype)).float()  # [B, dim]
        t_mod = self.time_projection(time.to(weight.dtype)).float()  # [B, 6*dim]
        return time, t_mod.unflatten(1, (BLOCK_MODULATION_TERMS, self.config.dim))

    def audio_additions(self, audio: torch.Tensor) -> torch.Tensor:
        """Per-frame audio features ``[B, 4T - 3, C]`` -> ``[B, audio_projections, T, dim]``."""
        packed = self.audio_proj(audio.to(self.audio_proj.proj.weight.dtype))  # [B, T, hidden]
        return torch.stack([proj(packed) for proj in self.audio_cond_projs], dim=1)

    # -- the parts of the forward ---------------------------------------------------------

    def conditions(self, context: torch.Tensor, audio: torch.Tensor) -> Conditions:
        """Prompt and audio of each sample, embedded once per segment.

        Args:
            context: prompt embeddings ``[B, <= text_len, text_dim]``, zero rows after the
                prompt; zero-padded here to ``text_len`` rows (the DiT sees them all).
            audio: per-video-frame features ``[B, 4T - 3, audio_input_dim]`` (zeros: none).
        """
        cfg = self.config
        if (
            context.dim() != 3
            or context.shape[1] > cfg.text_len
            or context.shape[2] != cfg.text_dim
        ):
            raise ValueError(
                f"context {tuple(context.shape)} must be [B, <= {cfg.text_len}, {cfg.text_dim}]"
            )
        if (
            audio.dim() != 3
            or audio.shape[0] != context.shape[0]
            or audio.shape[2] != cfg.audio_input_dim
            or (audio.shape[1] + AUDIO_PACK_FRAMES - 1) % AUDIO_PACK_FRAMES
        ):
            raise ValueError(
                f"audio {tuple(audio.shape)} must be [B={context.shape[0]}, 4T - 3, "
                f"{cfg.audio_input_dim}]: one row per video frame of T latent frames"
            )
        dtype = self.dtype
        text = F.pad(context.to(dtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        text_tokens = self.text_embedding(text)  # [B, text_len, dim]
        return Conditions(
            text_tokens, self.audio_additions(audio).to(dtype)
        )  # audio [B, P, T, dim]

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> Embedded:
        """Noisy latents ``[B, 16, T, h, w]``, timesteps ``[B]`` (0..1000) and the reference
        conditioning ``y`` ``[B, 17, T, h, w]`` -> tokens and timestep terms."""
        cfg = self.config
        if x.dim() != 5 or x.shape[1] + y.shape[1] != cfg.in_dim or y.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"x {tuple(x.shape)} and y {tuple(y.shape)} must be [B, C, T, H, W] alike with "
                f"{cfg.in_dim} channels together"
            )
        if x.shape[3] % 2 or x.shape[4] % 2:
            raise ValueError(f"latent size {tuple(x.shape[3:])} must be even (2x2 patches)")
        patches = self.patch_embedding(
            torch.cat([x, y], dim=1).to(self.dtype)
        )  # [B, dim, T, h/2, w/2]
        grid = (patches.shape[2], patches.shape[3], patches.shape[4])
        tokens = patches.flatten(2).transpose(1, 2).contiguous()  # [B, L, dim]
        time, t_mod = self.time_modulation(t)  # [B, dim], [B, 6, dim]
        return Embedded(tokens, time, t_mod, grid)

    def run_blocks(self, embedded: Embedded, conditions: Conditions) -> torch.Tensor:
        """The block stack on ``embedded.tokens`` -> hidden states ``[B, L, dim]``; the audio
        projection ``j`` is added to every token of its latent frame before block ``j + 2``.

        After ``set_parallel`` with a group of N > 1 ranks every rank runs the blocks on its
        share of the tokens (Ulysses self-attention, ``pipeline.sequence_parallel``) and gets
        every rank's hidden states back."""
        frames = embedded.grid[0]
        if conditions.audio.shape[2] != frames:
            raise ValueError(
                f"audio covers {conditions.audio.shape[2]} latent frames, the latents {frames}"
            )
        if self.parallel is not None:
            return self._run_blocks_sharded(embedded, conditions)
        cos, sin = self.rope_tables(embedded.grid, embedded.tokens.device)
        x = embedded.tokens
        for index, block in enumerate(self.blocks):
            projection = index - FIRST_AUDIO_BLOCK
            if 0 <= projection < self.config.audio_projections:
                add = conditions.audio[:, projection, :, None, :]  # [B, T, 1, dim]
                x = (torch.unflatten(x, 1, (frames, -1)) + add).flatten(1, 2)  # [B, L, dim]
            x = block(x, embedded.t_mod, conditions.context, cos, sin)
        return x

    def _run_blocks_sharded(self, embedded: Embedded, conditions: Conditions) -> torch.Tensor:
        """``run_blocks`` on this rank's tokens; every rank's hidden states ``[B, L, dim]``."""
        grid, device = embedded.grid, embedded.tokens.device
        shard, cos, sin = self.token_shard(grid, device)  # cos/sin [per_rank, 1, head_dim/2]
        per_frame = grid[1] * grid[2]
        positions = torch.arange(shard.start, shard.start + shard.per_rank, device=device)
        frame_of = (positions // per_frame).clamp_(max=grid[0] - 1)  # [per_rank]; padding: last
        x = local_rows(embedded.tokens, shard, 1)  # [B, per_rank, dim]
        for index, block in enumerate(self.blocks):
            projection = index - FIRST_AUDIO_BLOCK
            if 0 <= projection < self.config.audio_projections:
                x = x + conditions.audio[:, projection, frame_of]  # [B, per_rank, dim]
            x = block(x, embedded.t_mod, conditions.context, cos, sin, shard)
        return gather_tokens(x, shard)  # [B, L, dim]

    def project(self, hidden: torch.Tensor, embedded: Embedded) -> torch.Tensor:
        """Hidden states ``[B, L, dim]`` -> velocity ``[B, 16, T, h, w]`` float32."""
        out: torch.Tensor = self.head(hidden, embedded.time)  # [B, L, 4 * 16] float32
        frames, rows, cols = embedded.grid
        pt, ph, pw = self.config.patch_size
        out = out.view(out.shape[0], frames, rows, cols, pt, ph, pw, self.config.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, T, pt, rows, ph, cols, pw]
        return out.reshape(out.shape[0], self.config.out_dim, frames * pt, rows * ph, cols * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity ``[B, 16, T, h, w]`` float32 (arguments as in ``embed`` and ``conditions``)."""
        embedded = self.embed(x, t, y)
        return self.project(self.run_blocks(embedded, self.conditions(context, audio)), embedded)

"""Sequence parallelism of the DiT (Ulysses): which tokens and heads each rank holds.

Owns ``TokenShard`` (one rank's contiguous share of the token sequence, the padding, the
attention heads per rank and the per-latent-frame runs of its tokens), ``token_shard``
(the plan for a sequence), and the data movement of a sharded forward: taking a rank's rows
of a full tensor (``local_rows``), gathering the per-token outputs (``gather_tokens``) and
the Ulysses self-attention (``ulysses_attention``).

The scheme, for N ranks and L tokens (frame-major, as the DiT orders them):

- **Tokens.** Every rank holds ``ceil(L / N)`` consecutive tokens; the sequence is padded
  with zero tokens at its *end* to ``N * ceil(L / N)``, so only the last rank(s) hold
  padding. Every op of a block is per token except the self-attention and the audio
  cross-attention, so padding can only reach a real token through them: the self-attention
  drops the padded keys and values, the audio cross-attention gives padded tokens no frame.
  Shards are token-balanced, not frame-aligned: 9 latent frames on 2 ranks would be 5 and 4
  frames (the larger rank 11 % over the mean), on 4 ranks 3/2/2/2 (33 % over).
- **Heads.** Before the attention an all-to-all turns (tokens/N, all heads) into (all
  tokens, heads of this rank); after it a second all-to-all turns it back. Heads that do not
  divide by N are split unevenly (``even_splits``: 40 heads on 3 ranks are 14/13/13, the
  tiny model's 4 on 3 are 2/1/1) through ``all_to_all_single``'s split sizes: exact, and
  the largest share is at most one head above the mean.
- **Audio.** The audio cross-attention is per latent frame; a shard's tokens form at most
  a partial frame, whole frames, and a partial frame (``runs``), each attended against its
  own frame's audio tokens (static slices, so ``torch.compile`` sees fixed shapes).

Knows nothing about the model's weights or sampling; every collective goes through
``pipeline.parallel``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch

from headcast.pipeline.attention import attention
from headcast.pipeline.parallel import all_to_all, even_splits, gather_rows

if TYPE_CHECKING:
    from torch.distributed.distributed_c10d import GroupName  # a str

FrameRun = tuple[int, int, int, int]
"""``(local start, local stop, first latent frame, frames)``: tokens of whole frames (or
of one partial frame when ``frames`` is 1 and the run is shorter than a frame)."""


class TokenShard(NamedTuple):
    """One rank's share of a sequence; a tuple of constants (``torch.compile`` guards on it)."""

    group: GroupName
    """Name of the process group the collectives run on."""
    world: int
    """Ranks in the group."""
    rank: int
    """This rank."""
    length: int
    """Real tokens of the whole sequence (L)."""
    per_rank: int
    """Tokens every rank holds, padding included (``ceil(L / world)``)."""
    heads: tuple[int, ...]
    """Attention heads each rank computes (``even_splits(num_heads, world)``)."""
    runs: tuple[FrameRun, ...]
    """This rank's real tokens grouped by latent frame (see ``FrameRun``)."""

    @property
    def start(self) -> int:
        """Index of this rank's first token in the whole sequence."""
        return self.rank * self.per_rank

    @property
    def real(self) -> int:
        """Real (not padding) tokens this rank holds."""
        return max(0, min(self.per_rank, self.length - self.start))

    @property
    def padded_length(self) -> int:
        """Tokens of the padded sequence (``world * per_rank``)."""
        return self.world * self.per_rank

    @property
    def real_per_rank(self) -> tuple[int, ...]:
        """Real tokens of every rank, in rank order."""
        return tuple(
            max(0, min(self.per_rank, self.length - rank * self.per_rank))
            for rank in range(self.world)
        )


def frame_runs(start: int, stop: int, per_frame: int) -> tuple[FrameRun, ...]:
    """Tokens ``[start, stop)`` of a frame-major sequence grouped by frame.

    A partial frame at either end is a run of its own; the whole frames between are one run.
    Local positions count from ``start``.
    """
    runs: list[FrameRun] = []
    position = start
    while position < stop:
        frame, offset = divmod(position, per_frame)
        whole = (stop - position) // per_frame if offset == 0 else 0
        end = position + whole * per_frame if whole else min(stop, (frame + 1) * per_frame)
        runs.append((position - start, end - start, frame, max(whole, 1)))
        position = end
    return tuple(runs)


def token_shard(
    length: int, frames: int, num_heads: int, *, rank: int, world: int, group: GroupName
) -> TokenShard:
    """Rank ``rank``'s shard of ``length`` tokens in ``frames`` latent frames (of ``world``)."""
    if length % frames:
        raise ValueError(f"{length} tokens do not form {frames} latent frames of equal size")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    per_rank = math.ceil(length / world)
    start = rank * per_rank
    stop = min(start + per_rank, length)
    return TokenShard(
        group=group,
        world=world,
        rank=rank,
        length=length,
        per_rank=per_rank,
        heads=even_splits(num_heads, world),
        runs=frame_runs(start, stop, length // frames) if stop > start else (),
    )


def local_rows(x: torch.Tensor, shard: TokenShard, dim: int) -> torch.Tensor:
    """This rank's ``per_rank`` rows of ``x`` along ``dim`` (the full sequence there); rows
    past the sequence's end are zeros. Always a new tensor with its own compact strides
    (a view would carry the whole sequence's strides into the compiled blocks, whose guards
    would then compile a second graph for the blocks after the first)."""
    rows = x.narrow(dim, shard.start, shard.real) if shard.real else x.narrow(dim, 0, 0)
    missing = shard.per_rank - shard.real
    if not missing:
        return rows.clone(memory_format=torch.contiguous_format)
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([rows, x.new_zeros(shape)], dim=dim)


def gather_tokens(x: torch.Tensor, shard: TokenShard) -> torch.Tensor:
    """Every rank's real tokens: ``[B, per_rank, C]`` -> ``[B, L, C]`` (on every rank)."""
    real = x[:, : shard.real]  # [B, real, C]
    return gather_rows(real, shard.real_per_rank, 1, shard.group)  # [B, L, C]


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    shard: TokenShard,
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = attention,
) -> torch.Tensor:
    """Self-attention over the whole sequence from this rank's tokens.

    ``q``, ``k``, ``v``: ``[B, per_rank, H, D]`` (this rank's tokens, every head, RoPE
    applied). Returns ``[B, per_rank, H, D]`` in ``v``'s dtype: for every real token the
    attention over all real tokens of all ranks, computed by ``attend`` on this rank's heads.
    """
    batch, tokens, _, head_dim = v.shape
    world, mine = shard.world, shard.heads[shard.rank]
    heads = list(shard.heads)
    # 1. (my tokens, all heads) -> (all tokens, my heads): q, k and v in one exchange
    send = torch.stack([t.to(v.dtype).permute(2, 0, 1, 3) for t in (q, k, v)], dim=1)
    received = all_to_all(send, [mine] * world, heads, shard.group)  # [N*mine, 3, B, Lr, D]
    received = received.view(world, mine, 3, batch, tokens, head_dim).permute(2, 3, 0, 4, 1, 5)
    q, k, v = received.reshape(3, batch, world * tokens, mine, head_dim).unbind(0)
    # 2. attention of every token (padding too: discarded later) over the real keys only
    if shard.length < shard.padded_length:
        k, v = k[:, : shard.length], v[:, : shard.length]  # [B, L, mine, D]
    out = attend(q, k, v)  # [B, N*Lr, mine, D]
    # 3. (all tokens, my heads) -> (my tokens, all heads)
    send = out.reshape(batch, world, tokens, mine, head_dim).permute(1, 3, 0, 2, 4)
    send = send.reshape(world * mine, batch, tokens, head_dim)  # [N*mine, B, Lr, D]
    back = all_to_all(send, heads, [mine] * world, shard.group)  # [H, B, Lr, D]
    return back.permute(1, 2, 0, 3)  # [B, Lr, H, D]

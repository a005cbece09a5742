"""The arithmetic of the sequence-parallel split, checked in one process (no collectives).

Token shards (padding, heads, per-frame runs) against a per-token brute force, and the
VAE's row bands of the full-size decoder: the planned input rows hold each output band's
receptive field. (The bands' values are checked on real processes in
``test_sequence_parallel.py``.)
"""

from __future__ import annotations

import itertools

import pytest
import torch

from headcast.pipeline.config import preset
from headcast.pipeline.parallel import even_splits, split_offsets
from headcast.pipeline.sequence_parallel import frame_runs, local_rows, token_shard
from headcast.pipeline.vae import WanVAE
from headcast.pipeline.vae_bands import plan_band

FULL_SIZE_LATENT_ROWS = 96
"""Latent rows of a 768-row frame."""
SPATIAL_STRIDE = 8


def test_even_splits_differ_by_at_most_one_and_put_the_larger_first() -> None:
    assert even_splits(40, 3) == (14, 13, 13)
    assert even_splits(4, 3) == (2, 1, 1)
    assert even_splits(8, 2) == (4, 4)
    assert split_offsets((3, 3, 2)) == (0, 3, 6)
    for total, parts in itertools.product(range(0, 30), range(1, 9)):
        sizes = even_splits(total, parts)
        assert sum(sizes) == total and max(sizes) - min(sizes) <= 1
        assert list(sizes) == sorted(sizes, reverse=True)
    with pytest.raises(ValueError):
        even_splits(4, 0)


def test_frame_runs_give_every_token_its_frame() -> None:
    for per_frame, frames in itertools.product((1, 2, 3, 8), (1, 2, 5, 9)):
        length = per_frame * frames
        for start, stop in itertools.combinations(range(length + 1), 2):
            runs = frame_runs(start, stop, per_frame)
            assigned: list[int] = []
            position = 0
            for run_start, run_stop, first, count in runs:
                assert run_start == position and (run_stop - run_start) % count == 0
                size = (run_stop - run_start) // count
                assert count == 1 or size == per_frame  # several frames: whole ones only
                assigned += [first + i // size for i in range(run_stop - run_start)]
                position = run_stop
            assert assigned == [t // per_frame for t in range(start, stop)]
            assert len(runs) <= 3  # partial head, whole frames, partial tail


def test_token_shards_cover_the_sequence_once_and_pad_only_at_its_end() -> None:
    for length, frames, world in (
        (12_096, 9, 2),
        (12_096, 9, 5),
        (15, 5, 2),
        (10, 5, 3),
        (2, 2, 3),
    ):
        shards = [
            token_shard(length, frames, 40, rank=rank, world=world, group="g")
            for rank in range(world)
        ]
        per_rank = -(-length // world)
        assert all(s.per_rank == per_rank and s.padded_length == world * per_rank for s in shards)
        assert sum(s.real for s in shards) == length
        assert shards[0].real_per_rank == tuple(s.real for s in shards)
        # padding only after the last real token: real counts never grow again
        reals = [s.real for s in shards]
        assert reals == sorted(reals, reverse=True) and reals[0] == per_rank
        assert all(s.heads == even_splits(40, world) for s in shards)


def test_local_rows_take_a_ranks_tokens_and_zero_the_padding() -> None:
    tokens = torch.arange(1, 11, dtype=torch.float32).view(1, 10, 1)  # [B, L = 10, C]
    shards = [token_shard(10, 5, 4, rank=r, world=3, group="g") for r in range(3)]
    rows = [local_rows(tokens, shard, 1)[0, :, 0].tolist() for shard in shards]
    assert rows == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert shards[2].runs == ((0, 2, 4, 1),)  # the last frame; the two padded tokens have none


@pytest.mark.parametrize("world", (2, 3, 4, 8))
def test_full_size_decode_bands_hold_their_receptive_field(world: int) -> None:
    with torch.device("meta"):
        vae = WanVAE(preset("flashtalk-14b").vae)
    layers = vae.decoder.row_layers
    sizes = even_splits(FULL_SIZE_LATENT_ROWS, world)
    for rank, (first, size) in enumerate(zip(split_offsets(sizes), sizes)):
        rows = (first * SPATIAL_STRIDE, (first + size) * SPATIAL_STRIDE)
        plan = plan_band(layers, FULL_SIZE_LATENT_ROWS, rows)
        start, stop = plan.input_rows
        assert plan.output_rows == rows
        # the halo: at least the 12 latent rows the 30 later 3x3 convs reach, cut at the edges
        assert start == 0 if rank == 0 else start <= first - 12
        assert stop == FULL_SIZE_LATENT_ROWS if rank == world - 1 else stop >= first + size + 12

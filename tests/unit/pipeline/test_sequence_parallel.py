"""Sequence-parallel chunks on 2 and 3 real gloo processes equal the single-process chunk.

Each world size starts its processes once (``RankGroup``) and runs every scenario on them:
the tiny DiT's velocity at token counts that need padding and uneven head splits, the VAE's
row-banded decode and re-encode, and the tiny engine's stream (warm-up, then two chunks:
DiT steps, VAE decode, colour correction, motion carry-over, and before the second a
re-seed from frames shown, as ``idle_mode: loop`` does), and the tiny omniavatar engine's
stream (two segments: the DiT's token shards with the per-frame audio additions, the
13-frame carry-over). Float32 results must be within 1e-5 relative error of the same call
in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headcast.pipeline.sequence_parallel import token_shard
from tests.reference import rel_err
from tests.unit.pipeline.parallel_ranks import (
    RankGroup,
    omni_stream,
    stream,
    vae_round_trip,
    velocity,
)

PARITY_TOLERANCE = 1e-5
"""Relative error allowed between a parallel and the single-process float32 result."""
WORLD_SIZES = (2, 3)
TINY_HEADS = 4
VELOCITY_SHAPES = ((9, 8, 4), (5, 6, 2), (5, 4, 2))
"""Latent (frames, rows, cols): the tiny preset's 72 tokens, then 15 and 10 tokens, which
2 and 3 ranks do not divide (so each world size runs a padded sequence)."""
VAE_LATENT_SHAPE = (2, 32, 2)
"""Two latent frames of 32 x 2 latent pixels (256 x 16 px): tall enough that every band's
halo stops inside the frame."""
COMPILED_WORLD_SIZE = 2
STREAM_CHUNKS = 2
MAX_DIFFERING_PIXELS = 1e-3
"""uint8 frames truncate float values: a value on a level boundary may land one level off."""


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=[f"{n}ranks" for n in WORLD_SIZES])
def group(request: pytest.FixtureRequest) -> Iterator[RankGroup]:
    ranks = RankGroup(request.param)
    try:
        yield ranks
    finally:
        ranks.close()


@pytest.fixture(scope="module")
def avatar_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One avatar cache for the reference and every group: the ranks read the conditioning
    the reference computed (the encoders never run in the ranks)."""
    return tmp_path_factory.mktemp("avatars")


@pytest.fixture(scope="module")
def reference_stream(avatar_cache: Path) -> dict[str, list[Any]]:
    return stream(None, STREAM_CHUNKS, avatar_cache)


@pytest.mark.parametrize("shape", VELOCITY_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_velocity_equals_the_single_process_velocity(group: RankGroup, shape) -> None:
    frames, rows, cols = shape
    tokens = frames * (rows // 2) * (cols // 2)
    shards = [
        token_shard(tokens, frames, TINY_HEADS, rank=r, world=group.world_size, group="")
        for r in range(group.world_size)
    ]
    assert sum(s.real for s in shards) == tokens
    parallel = group.run("velocity", shape)
    assert rel_err(parallel, velocity(None, shape)) < PARITY_TOLERANCE


def test_compiled_blocks_trace_the_collectives_into_one_graph(group: RankGroup) -> None:
    if group.world_size != COMPILED_WORLD_SIZE:
        pytest.skip(f"traced once, on {COMPILED_WORLD_SIZE} ranks")
    shape = VELOCITY_SHAPES[1]  # padded on 2 ranks
    parallel, graphs = group.run("compiled_velocity", shape)
    assert graphs == 1, "every block must reuse one graph (no graph break, no recompile)"
    assert rel_err(parallel, velocity(None, shape)) < PARITY_TOLERANCE


def test_some_velocity_shape_is_padded_on_every_world_size() -> None:
    for world in WORLD_SIZES:
        lengths = [f * (r // 2) * (c // 2) for f, r, c in VELOCITY_SHAPES]
        assert any(length % world for length in lengths), world


def test_row_banded_decode_and_encode_equal_the_whole_frame(group: RankGroup) -> None:
    video, latents = group.run("vae_round_trip", VAE_LATENT_SHAPE)
    reference_video, reference_latents = vae_round_trip(None, VAE_LATENT_SHAPE)
    assert rel_err(video, reference_video) < PARITY_TOLERANCE
    assert rel_err(latents, reference_latents) < PARITY_TOLERANCE


def test_two_streamed_chunks_equal_the_single_process_stream(
    group: RankGroup, reference_stream: dict[str, list[Any]], avatar_cache: Path
) -> None:
    parallel = group.run("stream", STREAM_CHUNKS, avatar_cache)
    assert len(parallel["motion"]) == STREAM_CHUNKS + 1, "one more: the re-seeded motion"
    for index, (got, expected) in enumerate(zip(parallel["motion"], reference_stream["motion"])):
        motion = rel_err(got, expected)
        assert motion < PARITY_TOLERANCE, (index, motion)
    for index in range(STREAM_CHUNKS):
        video = rel_err(parallel["video"][index], reference_stream["video"][index])
        assert video < PARITY_TOLERANCE, (index, video)
        frames, expected = parallel["frames"][index], reference_stream["frames"][index]
        assert frames.shape == expected.shape and frames.dtype == np.uint8
        differing = np.abs(frames.astype(np.int16) - expected.astype(np.int16))
        assert differing.max() <= 1 and (differing > 0).mean() <= MAX_DIFFERING_PIXELS


@pytest.fixture(scope="module")
def reference_omni_stream() -> dict[str, list[Any]]:
    return omni_stream(None, STREAM_CHUNKS)


def test_omniavatar_streamed_chunks_equal_the_single_process_stream(
    group: RankGroup, reference_omni_stream: dict[str, list[Any]]
) -> None:
    parallel = group.run("omni_stream", STREAM_CHUNKS)
    for index in range(STREAM_CHUNKS):
        tail = rel_err(parallel["tail"][index], reference_omni_stream["tail"][index])
        assert tail < PARITY_TOLERANCE, (index, tail)
        frames, expected = parallel["frames"][index], reference_omni_stream["frames"][index]
        assert frames.shape == expected.shape == (28, 16, 16, 3) and frames.dtype == np.uint8
        differing = np.abs(frames.astype(np.int16) - expected.astype(np.int16))
        assert differing.max() <= 1 and (differing > 0).mean() <= MAX_DIFFERING_PIXELS

"""A group of real gloo processes for the sequence-parallel tests, and what they run.

``RankGroup`` starts N processes once (``pipeline.launch``: the same environment and
rendezvous as the benchmark's groups), joins them into a gloo process group on CPU and
runs scenarios on request: every rank runs the same scenario function with its
``ParallelGroup`` and the same arguments; rank 0's result comes back. A scenario function
called with ``parallel=None`` computes the single-process reference in the test process.
"""

from __future__ import annotations

import multiprocessing
import queue
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from headcast.pipeline.avatar_art import DEFAULT_AVATAR_NAME, draw_default_avatar
from headcast.pipeline.config import TINY_HEIGHT, TINY_WIDTH
from headcast.pipeline.diffusion_engine import tiny_engine
from headcast.pipeline.dit import CLIP_EMBED_DIM, CLIP_IMAGE_TOKENS, DiTConfig, FlashTalkDiT
from headcast.pipeline.engine_options import OmniAvatarOptions, TinyOptions
from headcast.pipeline.launch import (
    RankReport,
    child_environment,
    collect_reports,
    free_port,
    init_rank,
)
from headcast.pipeline.media import (
    CHUNK_SAMPLES,
    RESEED_FRAMES,
    SAMPLE_RATE_HZ,
    Avatar,
    ChunkJob,
    Reseed,
)
from headcast.pipeline.omniavatar.stream_engine import omniavatar_engine
from headcast.pipeline.parallel import ParallelGroup
from headcast.pipeline.tiny import random_init
from headcast.pipeline.vae import VAEConfig, WanVAE
from headcast.pipeline.vae_parallel import ParallelVAE

COLLECTIVE_TIMEOUT_S = 120.0
"""A rank waiting longer than this in a collective fails (a peer died or hung)."""
SCENARIO_TIMEOUT_S = 300.0
"""Longest one scenario may take on every rank."""
IDLE_TIMEOUT_S = 900.0
"""A rank that gets no scenario for this long exits (the test process is gone)."""
JOIN_TIMEOUT_S = 20.0
SEED = 7
COMPILE_TEST_BACKEND = "aot_eager"
TONE_HZ = 200.0
SYLLABLE_HZ = 3.0


def dit_inputs(config: DiTConfig, frames: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Seeded DiT inputs for latents of ``frames`` x ``height`` x ``width``."""
    generator = torch.Generator().manual_seed(SEED)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    video_frames = 1 + config.vae_scale * (frames - 1)
    return (
        randn(1, config.out_dim, frames, height, width),  # x
        torch.tensor([937.5]),  # t
        randn(1, 7, config.text_dim),  # context
        randn(1, CLIP_IMAGE_TOKENS, CLIP_EMBED_DIM),  # clip_fea
        randn(1, config.in_dim - config.out_dim, frames, height, width),  # y
        randn(
            1,
            video_frames,
            config.audio_window,
            config.audio_proj_blocks,
            config.audio_proj_channels,
        ),  # fmt: skip  # audio
    )


@torch.no_grad()
def velocity(parallel: ParallelGroup | None, shape: tuple[int, int, int]) -> torch.Tensor:
    """The tiny DiT's velocity for seeded inputs of latent ``shape`` (frames, rows, cols)."""
    dit = random_init(FlashTalkDiT(DiTConfig.tiny()), SEED)
    assert isinstance(dit, FlashTalkDiT)
    dit.set_parallel(parallel)
    return dit(*dit_inputs(dit.config, *shape))


@torch.no_grad()
def compiled_velocity(
    parallel: ParallelGroup | None, shape: tuple[int, int, int]
) -> tuple[torch.Tensor, int]:
    """``velocity`` with the blocks traced by ``torch.compile`` (the collectives in the graph)
    and how many graphs were made for all the blocks. The graphs run through AOTAutograd
    without inductor's code generation, which takes half a minute on a CPU; what can break
    (graph breaks, recompiles, untraceable collectives) breaks before it."""
    dit = random_init(FlashTalkDiT(DiTConfig.tiny()), SEED)
    assert isinstance(dit, FlashTalkDiT)
    dit.set_parallel(parallel)
    torch._dynamo.reset()
    for block in dit.blocks:
        block.compile(backend=COMPILE_TEST_BACKEND, dynamic=False)
    out = dit(*dit_inputs(dit.config, *shape))
    return out, int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@torch.no_grad()
def vae_round_trip(
    parallel: ParallelGroup | None, latent_shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny VAE's decode of seeded latents and the encode of the first 5 decoded frames."""
    vae = random_init(WanVAE(VAEConfig.tiny()), SEED)
    assert isinstance(vae, WanVAE)
    codec = vae if parallel is None else ParallelVAE(vae, parallel)
    generator = torch.Generator().manual_seed(SEED)
    latents = torch.randn((1, vae.config.z_dim, *latent_shape), generator=generator)
    video = codec.decode(latents)  # [1, 3, T, H, W]
    return video, codec.encode(video[:, :, :5])


def speech(index: int) -> np.ndarray:
    """Chunk ``index`` of a syllable-gated tone: float32 [17,920] at 16 kHz."""
    t = (np.arange(CHUNK_SAMPLES) + index * CHUNK_SAMPLES) / SAMPLE_RATE_HZ
    gate = (np.sin(2 * np.pi * SYLLABLE_HZ * t) > 0).astype(np.float32)
    return (0.4 * gate * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def shown_frames() -> np.ndarray:
    """Frames a session showed (seeded noise, the same on every rank, as the server's
    ``ReseedRequest`` hands every rank the same): [5, H, W, 3] uint8."""
    rng = np.random.default_rng(SEED)
    return rng.integers(0, 256, size=(RESEED_FRAMES, TINY_HEIGHT, TINY_WIDTH, 3), dtype=np.uint8)


@torch.no_grad()
def stream(parallel: ParallelGroup | None, chunks: int, cache_dir: Path) -> dict[str, list[Any]]:
    """The tiny engine (as the server drives it: load with warm-up, open a session, step):
    per chunk the colour-corrected video, the next motion latents and the frames. Before the
    last chunk the session is re-seeded from ``shown_frames`` after a chunk of silence
    (``idle_mode: loop``): the row-banded encode of frames that did not come from the VAE."""
    options = TinyOptions(cache_dir=cache_dir, height=TINY_HEIGHT, width=TINY_WIDTH)
    engine = tiny_engine(options, parallel)
    engine.load()
    generator = engine.generator
    assert generator is not None
    corrected: list[torch.Tensor] = []
    correct = generator.color_correct

    def recording(video: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
        out = correct(video, reference, strength)  # the real colour correction, kept
        corrected.append(out.clone())
        return out

    generator.color_correct = recording
    # the warm-up's avatar: its conditioning is cached (the encoders never run again)
    avatar = Avatar(DEFAULT_AVATAR_NAME, draw_default_avatar(TINY_HEIGHT, TINY_WIDTH))
    state = engine.open_session(avatar, SEED)
    motions, frames = [], []
    for index in range(chunks):
        if index == chunks - 1:
            engine.reseed(state, Reseed(shown_frames(), CHUNK_SAMPLES))
            motions.append(state.motion.clone())
        chunk = engine.step(state, ChunkJob(index, speech(index)))
        motions.append(state.motion.clone())
        frames.append(chunk.frames)
        if parallel is not None and not parallel.is_primary and len(chunk.frames):
            raise AssertionError(f"rank {parallel.rank} handed back {len(chunk.frames)} frames")
    engine.close_session(state)
    return {"video": corrected, "motion": motions, "frames": frames}


OMNI_HEIGHT, OMNI_WIDTH = 16, 16
"""The tiny OmniAvatar's generated size here: 1 token per latent frame, 11 per segment
(2 ranks: 6 and 5, 3 ranks: 4, 4 and 3, each with padding)."""


@torch.no_grad()
def omni_stream(parallel: ParallelGroup | None, chunks: int) -> dict[str, list[Any]]:
    """The tiny omniavatar engine as the server drives it (load with warm-up, open a session
    on the drawn avatar, step): per chunk its frames and the 13 frames carried to the next
    segment (float, the lead the next segment re-encodes)."""
    options = OmniAvatarOptions(
        size="tiny", steps=1, guidance=3.0, height=OMNI_HEIGHT, width=OMNI_WIDTH, device="cpu"
    )
    engine = omniavatar_engine(options, parallel)
    engine.load()
    avatar = Avatar(DEFAULT_AVATAR_NAME, draw_default_avatar(OMNI_HEIGHT, OMNI_WIDTH))
    state = engine.open_session(avatar, SEED)
    frames, tails = [], []
    for index in range(chunks):
        chunk = engine.step(state, ChunkJob(index, speech(index)))
        frames.append(chunk.frames)
        assert state.carry.tail is not None
        tails.append(state.carry.tail.clone())
        if parallel is not None and not parallel.is_primary and len(chunk.frames):
            raise AssertionError(f"rank {parallel.rank} handed back {len(chunk.frames)} frames")
    engine.close_session(state)
    return {"frames": frames, "tail": tails}


SCENARIOS = {
    "velocity": velocity,
    "compiled_velocity": compiled_velocity,
    "vae_round_trip": vae_round_trip,
    "stream": stream,
    "omni_stream": omni_stream,
}
"""What a ``RankGroup`` can run, by name."""


def _serve_rank(
    rank: int,
    world_size: int,
    port: int,
    inbox: multiprocessing.Queue,
    outbox: multiprocessing.Queue,
) -> None:
    """One rank: join the gloo group, then run scenarios until told to stop."""
    torch.set_num_threads(1)  # N ranks share the machine's cores
    parallel = init_rank(
        rank, world_size, port, torch.device("cpu"), timeout_s=COLLECTIVE_TIMEOUT_S
    )
    try:
        while (job := inbox.get(timeout=IDLE_TIMEOUT_S)) is not None:
            name, args = job
            try:
                outbox.put(RankReport.of(rank, SCENARIOS[name](parallel, *args)))
            except Exception:  # noqa: BLE001 -- the test process reads the traceback
                outbox.put(RankReport(rank, error=traceback.format_exc()))
    except queue.Empty:
        pass  # the test process went away
    finally:
        dist.destroy_process_group()


class RankGroup:
    """``world_size`` gloo processes that run scenarios in lockstep."""

    def __init__(self, world_size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.world_size = world_size
        self.inboxes = [context.Queue() for _ in range(world_size)]
        self.outbox: multiprocessing.Queue = context.Queue()
        port = free_port()
        self.processes = [
            context.Process(
                target=_serve_rank,
                args=(rank, world_size, port, self.inboxes[rank], self.outbox),
                name=f"test-rank{rank}",
            )
            for rank in range(world_size)
        ]
        with child_environment():
            for process in self.processes:
                process.start()

    def run(self, scenario: str, *args: Any) -> Any:
        """Run ``SCENARIOS[scenario](parallel, *args)`` on every rank; rank 0's result."""
        for inbox in self.inboxes:
            inbox.put((scenario, args))
        return collect_reports(self.processes, self.outbox, SCENARIO_TIMEOUT_S)

    def close(self) -> None:
        """Stop the ranks (the ones still alive after a grace period are terminated)."""
        for inbox in self.inboxes:
            inbox.put(None)
        for process in self.processes:
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                process.terminate()
                process.join(JOIN_TIMEOUT_S)

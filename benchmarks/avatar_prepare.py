"""Avatar preparation on the GPU: its time per avatar, and what it does to a live session.

``python3 benchmarks/avatar_prepare.py [--engine flashtalk|tiny] [--avatars N]
[--gen-height H --gen-width W] [--steps 4|2] [--quantize none|fp8] [--compile]
[--chunks N] [--no-live] [--json OUT]``

1. Builds the engine as the server does (``flashtalk`` with random full-size weights, or
   ``tiny`` on the CPU for a dry run) and loads it (warm-up included).
2. Prepares ``--avatars`` avatars (random pictures at the output size, the default prompt)
   step by step, as the device thread runs them: each step's device time (synchronised, for
   the measurement only), the steps' count and longest step, the whole preparation, the
   host copy of the assets and their size on disk (``.npz``, as the store writes them).
3. Unless ``--no-live``: a live session through a real ``EngineWorker``: a chunk job every 1.12 s
(the media clock) for ``--chunks`` chunks, first alone, then with one avatar preparation queued
after every few chunks. Reports each chunk's latency (submission to result) and how many went
   over the compute share of the latency budget (``latency_budget_s`` minus intake jitter
   and emit margin: 0.91 s at the defaults), i.e. would have gone out as idle chunks.

Prints a JSON report (also to ``--json``). Knows nothing about the server: torch and
``pipeline`` only, so it runs in the device image with the bench wheels.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headcast.pipeline.engine import EngineWorker
from headcast.pipeline.engine_api import Engine
from headcast.pipeline.engine_options import FlashTalkOptions, TinyOptions
from headcast.pipeline.media import (
    CHUNK_SAMPLES,
    CHUNK_SECONDS,
    Avatar,
    AvatarAssets,
    ChunkJob,
)

logger = logging.getLogger("avatar_prepare")

INTAKE_JITTER_S = 0.060
EMIT_MARGIN_S = 0.150
"""The session's defaults (``streaming.session_config``), copied: this script imports no
streaming code."""

RESULT_WAIT_S = 120.0
PREPARE_EVERY_CHUNKS = 3
"""With preparation: one avatar is queued after every this many chunks."""

POLL_S = 0.005
"""Longest wait for a result between looks at the mailbox (a notify between looks is missed;
this bounds the latency's error), in seconds."""


def build(args: argparse.Namespace) -> Engine:
    size = {"height": args.height, "width": args.width}
    if args.engine == "tiny":
        from headcast.pipeline.diffusion_engine import tiny_engine

        return tiny_engine(TinyOptions(**size, steps=args.steps))
    from headcast.pipeline.diffusion_engine import flashtalk_engine

    return flashtalk_engine(
        FlashTalkOptions(
            **size,
            steps=args.steps,
            gen_height=args.gen_height,
            gen_width=args.gen_width,
            quantize=args.quantize,
            compile=args.compile,
            random_weights=True,
        )
    )


def synchronise() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def picture(args: argparse.Namespace, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (args.height, args.width, 3), np.uint8)


def prepare_timed(engine: Engine, avatar: Avatar) -> dict[str, Any]:
    """One preparation, step by step, each step synchronised."""
    steps: list[float] = []
    assets: AvatarAssets | None = None
    started = time.perf_counter()
    for step in engine.prepare_avatar(avatar):
        synchronise()
        steps.append(time.perf_counter() - (started + sum(steps)))
        assets = step.assets
    total = time.perf_counter() - started
    assert assets is not None, "the preparation ended without assets"
    buffer = io.BytesIO()
    clock = time.perf_counter()
    np.savez(buffer, **assets)
    return {
        "total_s": round(total, 4),
        "steps": len(steps),
        "longest_step_s": round(max(steps), 4),
        "hand_over_s": round(steps[-1], 4),
        "step_s": [round(s, 4) for s in steps],
        "assets_mb": round(buffer.tell() / 1e6, 2),
        "npz_write_s": round(time.perf_counter() - clock, 4),
    }


def live_session(
    engine: Engine, worker: EngineWorker, args: argparse.Namespace, *, prepare: bool
) -> dict[str, Any]:
    """Chunk jobs at the media clock's pace; their latencies, with or without preparation."""
    results: dict[int, float] = {}
    arrived = threading.Condition()
    handle_box: list[Any] = []

    def notify() -> None:
        with arrived:
            arrived.notify_all()

    handle = worker.open_session(Avatar("live", picture(args, 1)), notify=notify, mailbox_size=8)
    handle_box.append(handle)
    submitted: dict[int, float] = {}
    prepared: list[float] = []
    done = threading.Event()
    start = time.perf_counter()
    for index in range(args.chunks):
        # Results are taken as they arrive (the worker's notify wakes us), not once per chunk.
        collect(handle, submitted, results, arrived, deadline=start + index * CHUNK_SECONDS)
        audio = (0.3 * np.sin(np.arange(CHUNK_SAMPLES) / 16_000 * 2 * np.pi * 140)).astype(
            np.float32
        )
        submitted[index] = time.perf_counter()
        handle.submit(ChunkJob(index, audio))
        if prepare and index % PREPARE_EVERY_CHUNKS == 0:
            queued = time.perf_counter()
            worker.prepare_avatar(
                Avatar(f"bench-{index}", picture(args, 100 + index)),
                done=lambda assets, error, queued=queued: (
                    prepared.append(time.perf_counter() - queued),
                    done.set(),
                ),
            )
    collect(
        handle,
        submitted,
        results,
        arrived,
        deadline=time.perf_counter() + RESULT_WAIT_S,
        until=args.chunks,
    )
    handle.close()
    latencies = [results[i] for i in sorted(results)]
    budget = args.latency_budget_s - INTAKE_JITTER_S - EMIT_MARGIN_S
    return {
        "chunks": len(latencies),
        "latency_median_s": round(statistics.median(latencies), 4),
        "latency_max_s": round(max(latencies), 4),
        "over_budget": sum(1 for lat in latencies if lat > budget),
        "budget_s": round(budget, 3),
        "preparations_finished": len(prepared),
        "preparation_wall_s": [round(p, 3) for p in prepared],
    }


def collect(
    handle: Any,
    submitted: dict[int, float],
    results: dict[int, float],
    arrived: threading.Condition,
    *,
    deadline: float,
    until: int | None = None,
) -> None:
    """Take every result in the mailbox as it arrives (its latency: now minus its submission)
    until ``deadline`` (``time.perf_counter()``) or, with ``until``, that many results."""
    while True:
        while (item := handle.mailbox.get_nowait()) is not None:
            results[item.index] = time.perf_counter() - submitted[item.index]
        left = deadline - time.perf_counter()
        if (until is not None and len(results) >= until) or left <= 0:
            return
        with arrived:
            arrived.wait(min(left, POLL_S))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("flashtalk", "tiny"), default="flashtalk")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--gen-height", type=int)
    parser.add_argument("--gen-width", type=int)
    parser.add_argument("--steps", type=int, choices=(4, 2), default=4)
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--avatars", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument(
        "--no-live",
        action="store_true",
        help="skip the live session (an engine slower than real time cannot run one)",
    )
    parser.add_argument("--latency-budget-s", type=float, default=CHUNK_SECONDS)
    parser.add_argument("--label", default="avatar-prepare")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    engine = build(args)
    worker = EngineWorker(engine, device_name="bench")
    started = time.perf_counter()
    worker.start()
    worker.wait_ready(timeout=1800)
    report: dict[str, Any] = {
        "label": args.label,
        "engine": engine.description,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "load_s": round(time.perf_counter() - started, 1),
        "warmup_rtf": engine.warmup_rtf,
    }
    # The preparations run here on the main thread while the worker's device thread is idle
    # (nothing is queued on it): the timed steps are the device work alone.
    preparations = [
        prepare_timed(engine, Avatar(f"timed-{n}", picture(args, 10 + n)))
        for n in range(args.avatars)
    ]
    report["preparation"] = preparations
    report["preparation_median_s"] = statistics.median(p["total_s"] for p in preparations)
    if not args.no_live:
        report["alone"] = live_session(engine, worker, args, prepare=False)
        report["with_preparation"] = live_session(engine, worker, args, prepare=True)
    if torch.cuda.is_available():
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    worker.shutdown()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

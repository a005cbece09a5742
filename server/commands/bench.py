"""``headcast bench``: time every stage of a streaming chunk (wraps ``pipeline.bench``).

Owns only the subcommand's registration: the flags, the run and the report all live in
``pipeline.bench`` so that ``python -m headcast.pipeline.bench`` runs the same benchmark on machines
without the serving stack. Knows nothing about serving.
"""

from __future__ import annotations

import argparse

from headcast.pipeline import bench
from headcast.pipeline.omniavatar import bench as omni_bench
from headcast.server.commands import SUMMARIES

NAME = "bench"
ENGINES = ("flashtalk", "omniavatar")
"""Engines the benchmark times (OmniAvatar: per segment, projected to a whole video)."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its options to the CLI's subcommands."""
    parser = subparsers.add_parser(
        NAME,
        help=SUMMARIES[NAME],
        description=(
            "Time every stage of a streaming chunk with CUDA events (host clock on CPU): "
            "medians over the timed chunks after warm-up, load and compile time, peak GPU "
            "memory and RTF (chunk time / 1.12 s). Random weights are valid for timing. "
            "On CPU it runs the tiny preset. With --engine omniavatar: seconds of compute per "
            "second of video and per step for the official recipe, the fast preset and the "
            "streaming candidates, with the FLOP floor."
        ),
    )
    parser.add_argument(
        "--engine", choices=ENGINES, default="flashtalk", help="which model to time"
    )
    bench.add_arguments(parser)
    omni_bench.add_omni_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; the JSON report goes to ``--json``, the table to stdout."""
    if args.engine == "omniavatar":
        return omni_bench.execute(args, prog="headcast bench --engine omniavatar")
    return bench.execute(args, prog="headcast bench")

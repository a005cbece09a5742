"""``headcast bench``: time every stage of a streaming chunk (wraps ``pipeline.bench``).

Owns only the subcommand's registration: the flags, the run and the report all live in
``pipeline.bench`` so that ``python -m pipeline.bench`` runs the same benchmark on machines
without the serving stack. Knows nothing about serving.
"""

from __future__ import annotations

import argparse

from pipeline import bench

NAME = "bench"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its options to the CLI's subcommands."""
    parser = subparsers.add_parser(
        NAME,
        help="time every stage of a chunk (audio, DiT steps, VAE, colour, uint8) and memory",
        description=(
            "Time every stage of a streaming chunk with CUDA events (host clock on CPU): "
            "medians over the timed chunks after warm-up, load and compile time, peak GPU "
            "memory and RTF (chunk time / 1.12 s). Random weights are valid for timing. "
            "On CPU it runs the tiny preset."
        ),
    )
    bench.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; the JSON report goes to ``--json``, the table to stdout."""
    return bench.execute(args, prog="headcast bench")

"""``headcast doctor``: check a FlashTalk model directory without loading any weights.

Owns the subcommand's flags and printing the report of ``pipeline.doctor`` (missing files,
missing or unexpected tensors, shape and dtype mismatches, read from file headers). Exit 0
when everything matches, 1 on any mismatch. Knows nothing about serving.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.doctor import check_model_dir

logger = logging.getLogger(__name__)

NAME = "doctor"
EXIT_OK = 0
EXIT_MISMATCH = 1


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="check a model directory against the official checkpoint manifests",
        description="Read the headers of every checkpoint the flashtalk engine needs and compare "
        "tensor names, shapes and dtypes with the official manifests. Nothing is loaded.",
    )
    parser.add_argument(
        "--model-dir", type=Path, required=True,
        help="SoulX-FlashTalk checkpoint directory (DiT shards, VAE, T5, CLIP, tokenizer)",
    )
    parser.add_argument(
        "--wav2vec-dir", type=Path, help="chinese-wav2vec2-base directory (Hugging Face format)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = check_model_dir(args.model_dir, args.wav2vec_dir)
    sys.stdout.write(report.render() + "\n")
    return EXIT_OK if report.ok else EXIT_MISMATCH

"""``headcast doctor``: check a model folder without loading any weights.

Owns the subcommand's flags and printing the report of ``pipeline.doctor`` (FlashTalk) or
``pipeline.omniavatar.doctor`` (OmniAvatar): missing files, missing or unexpected tensors,
shape and dtype mismatches, read from file headers. Exit 0 when everything matches, 1 on
any mismatch. Knows nothing about serving.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from headcast.pipeline.doctor import check_model_dir
from headcast.pipeline.omniavatar.config import SIZES, omni_size
from headcast.pipeline.omniavatar.doctor import check_omniavatar_dir
from headcast.server.commands import SUMMARIES

logger = logging.getLogger(__name__)

NAME = "doctor"
EXIT_OK = 0
EXIT_MISMATCH = 1
ENGINES = ("flashtalk", "omniavatar")
"""Engines whose folders the doctor knows."""
CHECKED_SIZES = tuple(name for name in SIZES if name != "tiny")
"""OmniAvatar sizes with files to check (tiny has none)."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        NAME,
        help=SUMMARIES[NAME],
        description="Read the headers of every checkpoint an engine needs and compare tensor "
        "names, shapes and dtypes with the official manifests. Nothing is loaded.",
    )
    parser.add_argument("--engine", choices=ENGINES, default="flashtalk", help="whose folder it is")
    parser.add_argument(
        "--model-dir", type=Path, required=True,
        help="flashtalk: the SoulX-FlashTalk checkpoint directory (DiT shards, VAE, T5, CLIP, "
        "tokenizer); omniavatar: the folder holding Wan2.1-T2V-*/, OmniAvatar-*/ and "
        "wav2vec2-base-960h/ (the official pretrained_models)",
    )  # fmt: skip
    parser.add_argument(
        "--wav2vec-dir", type=Path,
        help="wav2vec2 directory (Hugging Face format; flashtalk: chinese-wav2vec2-base; "
        "omniavatar: replaces <model-dir>/wav2vec2-base-960h)",
    )  # fmt: skip
    parser.add_argument("--size", choices=CHECKED_SIZES, default="14b", help="OmniAvatar size")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.engine == "omniavatar":
        report = check_omniavatar_dir(args.model_dir, omni_size(args.size), args.wav2vec_dir)
    else:
        report = check_model_dir(args.model_dir, args.wav2vec_dir)
    sys.stdout.write(report.render() + "\n")
    return EXIT_OK if report.ok else EXIT_MISMATCH

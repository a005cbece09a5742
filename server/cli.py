"""The ``headcast`` command line: ``headcast <subcommand> [flags]``.

Owns the top-level parser, logging setup (configured here, never at import) and turning
known errors into a one-line message and exit status 2. Each subcommand is a module under
``server.commands`` with ``add_parser(subparsers)`` and ``run(args) -> int``; add one by
listing it in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from headcast.pipeline.engine import UnknownEngine
from headcast.server.commands import bench, doctor, generate, serve
from headcast.server.settings import SettingsError

COMMANDS: tuple[ModuleType, ...] = (serve, generate, doctor, bench)
"""Subcommand modules, in help order."""

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headcast", description="Real-time streaming talking-head server."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


QUIET_LOGGERS = ("aioice", "aiortc")
"""Third-party loggers that narrate every ICE check at INFO; kept at WARNING."""


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return int(args.run(args))
    except (SettingsError, UnknownEngine) as exc:
        logging.getLogger("headcast").error("%s", exc)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``headcast`` command line: ``headcast <subcommand> [flags]``.

Owns the top-level parser, logging setup (configured here, never at import) and turning
known errors into a one-line message and exit status 2. Each subcommand is a module under
``headcast.server.commands`` with ``add_parser(subparsers)`` and ``run(args) -> int``; add
one by naming it in ``headcast.server.commands.SUMMARIES``. Only the subcommand being run is
imported.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module
from types import ModuleType

from headcast.pipeline.engine import UnknownEngine
from headcast.server.commands import SUMMARIES
from headcast.server.settings import SettingsError

COMMANDS_PACKAGE = "headcast.server.commands"

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
EXIT_USAGE = 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``command`` one whose other subcommands are only listed (so
    their modules, and what they import, are not loaded)."""
    parser = argparse.ArgumentParser(
        prog="headcast", description="Real-time streaming talking-head server."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in SUMMARIES.items():
        if command in (None, name):
            module: ModuleType = import_module(f"{COMMANDS_PACKAGE}.{name}")
            module.add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=summary)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word), or ``None`` for anything else."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in SUMMARIES else None


QUIET_LOGGERS = ("aioice", "aiortc")
"""Third-party loggers that narrate every ICE check at INFO; kept at WARNING."""


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(words)).parse_args(words)
    configure_logging()
    try:
        return int(args.run(args))
    except (SettingsError, UnknownEngine) as exc:
        logging.getLogger("headcast").error("%s", exc)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

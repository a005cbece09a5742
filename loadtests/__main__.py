"""``python -m loadtests``: run the load driver from the command line and report.

Exit status: 0 when every session streamed (and reached ``--min-fps`` if given), 1 when one
failed or fell short, 2 for a plan outside the bounds. ``--json FILE`` also writes the report.
``--duty-cycle F`` runs push sessions that speak F of the time, in bursts of ``--burst``
seconds (``loadtests.duty_cycle``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtests.duty_cycle import Spread
from loadtests.driver import (
    DEFAULT_BURST_S,
    MAX_DURATION_S,
    MAX_SESSIONS,
    LoadPlan,
    LoadPlanError,
    run_load,
)

logger = logging.getLogger("loadtests")

EXIT_SHORT = 1
EXIT_USAGE = 2
API_KEY_ENV = "HEADCAST_API_KEY"
"""Environment variable the driver reads its API key from when ``--api-key`` is not given."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests",
        description="Open N WebRTC sessions against a headcast server on this machine and "
        "report received fps and the server's RTF.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback only)")
    parser.add_argument("--sessions", type=int, default=2, help=f"concurrent sessions, 1..{MAX_SESSIONS}")
    parser.add_argument(
        "--duration", type=float, default=20.0, help=f"seconds each session streams (<= {MAX_DURATION_S:.0f})"
    )
    parser.add_argument("--ramp", type=float, default=0.5, help="seconds between session starts")
    parser.add_argument("--avatar", default="default", help="avatar name to ask for")
    parser.add_argument("--min-fps", type=float, help="fail unless every session received this many fps")
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    parser.add_argument(
        "--duty-cycle",
        type=float,
        help="share of the time each session speaks, in (0, 1]: push (chatbot) sessions that "
        "speak in bursts; reports speech waits and chunks generated vs played (default: "
        "microphone sessions speaking all the time)",
    )
    parser.add_argument(
        "--burst", type=float, default=DEFAULT_BURST_S, help="seconds of speech per burst"
    )
    parser.add_argument(
        "--spread",
        choices=[s.value for s in Spread],
        default=Spread.RANDOM.value,
        help="bursts at random times like independent callers (seeded), or spread evenly",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random burst times")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"API key for creating sessions, when the server has api_keys configured "
        f"(default: ${API_KEY_ENV}; prefer the variable, the command line is visible to others)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("aioice", "aiortc", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plan = LoadPlan(
        args.url,
        args.sessions,
        args.duration,
        ramp_s=args.ramp,
        avatar=args.avatar,
        api_key=args.api_key or None,
        duty_cycle=args.duty_cycle,
        burst_s=args.burst,
        spread=Spread(args.spread),
        seed=args.seed,
    )
    try:
        plan.validate()
    except LoadPlanError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    report = asyncio.run(run_load(plan))
    for line in report.summary_lines():
        logger.info("%s", line)
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    failed = [r for r in report.sessions if r.outcome == "failed"]
    slow = [r for r in report.completed if args.min_fps is not None and (r.fps or 0.0) < args.min_fps]
    if failed or slow:
        below = f", {len(slow)} below {args.min_fps:g} fps" if args.min_fps is not None else ""
        logger.error("%d session(s) failed%s", len(failed), below)
        return EXIT_SHORT
    return 0


if __name__ == "__main__":
    sys.exit(main())

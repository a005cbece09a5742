"""``python -m loadtests``: run the load driver (or, with ``--soak DURATION``, the soak) and report.

Exit status: 0 when every session streamed (and reached ``--min-fps`` if given), 1 when one
failed or fell short, 2 for a plan outside the bounds. ``--json FILE`` also writes the report.
With ``--soak``: 0 when the verdict passes, 1 when it fails; the series and the summary go
to ``--out`` (see ``loadtests.soak``).
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

from loadtests.driver import (
    DEFAULT_BURST_S,
    MAX_DURATION_S,
    MAX_SESSIONS,
    LoadPlan,
    LoadPlanError,
    run_load,
)
from loadtests.duty_cycle import Spread
from loadtests.soak import SoakPlan, parse_duration, run_soak

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
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="server base URL (loopback only)"
    )
    parser.add_argument(
        "--sessions", type=int, default=2, help=f"concurrent sessions, 1..{MAX_SESSIONS}"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help=f"seconds each session streams (<= {MAX_DURATION_S:.0f})",
    )
    parser.add_argument("--ramp", type=float, default=0.5, help="seconds between session starts")
    parser.add_argument("--avatar", default="default", help="avatar name to ask for")
    parser.add_argument(
        "--min-fps", type=float, help="fail unless every session received this many fps"
    )
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    soak = parser.add_argument_group("soak (keeps the server at capacity, judges its resources)")
    soak.add_argument("--soak", metavar="DURATION", help="run a soak this long (90s, 2m, 1h)")
    soak.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/soak"),
        help="folder for series.csv and summary.*",
    )
    soak.add_argument("--call", type=float, default=20.0, help="seconds each soak call streams")
    soak.add_argument(
        "--vanish-every", type=int, default=4, help="every n-th call of a slot vanishes"
    )
    soak.add_argument("--sample", type=float, default=5.0, help="seconds between resource samples")
    soak.add_argument(
        "--warmup", type=float, help="seconds of warm-up (default 10 %% of the soak, 30 s .. 5 min)"
    )
    soak.add_argument(
        "--soak-sessions", type=int, help="calls at once (default: the server's capacity)"
    )
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
    if args.soak is not None:
        return _soak(args)
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
    slow = [
        r for r in report.completed if args.min_fps is not None and (r.fps or 0.0) < args.min_fps
    ]
    if failed or slow:
        below = f", {len(slow)} below {args.min_fps:g} fps" if args.min_fps is not None else ""
        logger.error("%d session(s) failed%s", len(failed), below)
        return EXIT_SHORT
    return 0


def _soak(args: argparse.Namespace) -> int:
    try:
        plan = SoakPlan(
            args.url,
            parse_duration(args.soak),
            args.out,
            sessions=args.soak_sessions,
            call_s=args.call,
            vanish_every=args.vanish_every,
            sample_s=args.sample,
            warmup_s=args.warmup,
            avatar=args.avatar,
            api_key=args.api_key or None,
        )
        plan.validate()
    except (ValueError, LoadPlanError) as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    report = asyncio.run(run_soak(plan))
    for line in report.summary_lines():
        logger.info("%s", line)
    logger.info(
        "series and summary in %s; plot: python -m loadtests.plot %s",
        plan.out_dir,
        plan.out_dir / "series.csv",
    )
    return 0 if report.verdict.passed else EXIT_SHORT


if __name__ == "__main__":
    sys.exit(main())

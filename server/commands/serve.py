"""``headcast serve``: run the HTTP/WebRTC server.

Owns the subcommand's flags and turning them into ``Settings`` (profile < env < flags), the
startup log lines (which engine, honestly; the demo page's URL), the C allocator's policy
(``server.allocator``), and running uvicorn with
the connection limits of the settings (request-head and keep-alive timeouts, WebSocket
message size).
Knows nothing about routes or sessions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import get_args

import uvicorn

from headcast.server.allocator import tune_allocator
from headcast.server.app import create_app
from headcast.server.commands import SUMMARIES
from headcast.server.engines import stand_in as stand_in_for
from headcast.server.http_protocol import header_timeout_protocol
from headcast.server.settings import EngineName, Settings, load_settings

logger = logging.getLogger(__name__)

NAME = "serve"

WS_MESSAGE_SLACK_BYTES = 65_536
"""Room above ``push_max_frame_bytes`` in the largest WebSocket message uvicorn takes, in
bytes: a frame a little too large is still read and refused in words (``frame_too_large``);
a larger one closes the socket (1009) before it is buffered."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        NAME,
        help=SUMMARIES[NAME],
        description="Run the headcast server: the demo page, the session API and WebRTC. "
        "Settings come from --config (YAML), then HEADCAST_* environment variables, then flags.",
    )
    parser.add_argument("--config", type=Path, help="YAML profile, e.g. configs/cpu-demo.yaml")
    parser.add_argument("--engine", choices=get_args(EngineName), help="engine to run")
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument(
        "--ice-loopback",
        action="store_const",
        const=True,
        help="also offer 127.0.0.1 as an ICE candidate (client and server on one machine "
        "without another network interface)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_const",
        const=True,
        help="flashtalk only: random full-size weights on the GPU instead of the checkpoint "
        "(measures speed and capacity; the pictures are noise)",
    )
    parser.set_defaults(run=run)


def _page_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}/"


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The profile, then ``HEADCAST_*`` variables, then the flags given (unset flags: skipped)."""
    return load_settings(
        args.config,
        engine=args.engine,
        host=args.host,
        port=args.port,
        ice_loopback=args.ice_loopback,
        random_weights=args.random_weights,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.getLogger().setLevel(settings.log_level.upper())
    tune_allocator()  # before the media threads start: they allocate video buffers all day
    stand_in = stand_in_for(settings)
    if stand_in is not None:
        logger.warning("engine %r is %s -- it is NOT a real model", settings.engine, stand_in)
    elif settings.random_weights:
        logger.warning(
            "engine %r with RANDOM weights (random_weights): the full-size model's speed and "
            "memory, but its pictures are noise; model_dir is not read",
            settings.engine,
        )
    else:
        logger.info("engine %r (model dir %s)", settings.engine, settings.model_dir)
    app = create_app(settings, freeze_startup_heap=True)
    logger.info("demo page: %s  (API: %sdocs, metrics: %smetrics)", *[_page_url(settings)] * 3)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the logging configured by the CLI
        log_level=settings.log_level,
        lifespan="on",
        http=header_timeout_protocol(settings.http_header_timeout_s, settings.http_body_timeout_s),
        timeout_keep_alive=settings.http_keep_alive_s,
        ws_max_size=settings.push_max_frame_bytes + WS_MESSAGE_SLACK_BYTES,
    )
    return 0

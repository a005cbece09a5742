"""The ``headcast`` subcommands: one module each, with ``add_parser(subparsers)`` and ``run``.

``SUMMARIES`` holds each subcommand's one-line help, so the CLI can list them all without
importing them: ``headcast serve`` loads the serving stack only, not the benchmark's model
code (about 3 s of imports on a 2-core host).
"""

from __future__ import annotations

SUMMARIES: dict[str, str] = {
    "serve": "run the streaming server",
    "generate": "render a talking-head MP4 offline from an image and an audio file",
    "doctor": "check a model directory against the official checkpoint manifests",
    "bench": "time every stage of a chunk (audio, DiT steps, VAE, colour, uint8) and memory",
}
"""Subcommand name -> its one-line help, in help order; the module is
``headcast.server.commands.<name>``."""

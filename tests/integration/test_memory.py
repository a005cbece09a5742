"""The server's memory comes back after every call (issue 16: it grew ~50 MB a call for ever).

Against the shared puppet server: one warm-up WebRTC mic call (the load driver, one
session), then ``CALLS`` more, each followed by a reading of the server process's resident
memory (``VmRSS`` in ``/proc``) once the session is released. None of those may be more
than ``MAX_GROWTH_BYTES`` above the memory after the warm-up. Before the fix each closed
session left its frames (tens of MB) to the cycle collector and the media threads' heap
arenas kept what they freed; the soak of the ops issue runs the same check for an hour.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from loadtests.driver import LoadPlan, run_load
from tests.integration.conftest import RunningServer

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

CALLS = 3
CALL_S = 3.0
"""Seconds each call streams (a few chunks: what a closed session held never depended on
its length)."""

MAX_GROWTH_BYTES = 24 * 1024 * 1024
"""Allowed rise over the warm-up figure: allocator noise is a few MB; before the fix three
short calls added over 100 MB."""

RELEASE_TIMEOUT_S = 15.0
POLL_S = 0.2
BYTES_PER_KB = 1024


def _rss_bytes(server: RunningServer) -> int:
    """The server process's resident memory, from ``/proc/<pid>/status``."""
    status = Path(f"/proc/{server.process.pid}/status").read_text(encoding="ascii")
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * BYTES_PER_KB


def _released(server: RunningServer) -> None:
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while server.metric("headcast_sessions_active") != 0:
        assert time.monotonic() < deadline, "the call's session was never released"
        time.sleep(POLL_S)


async def _call(server: RunningServer) -> int:
    """One call; the server's resident memory once its session is gone."""
    report = await run_load(LoadPlan(server.url, 1, CALL_S))
    assert [r.outcome for r in report.sessions] == ["ok"], report.summary_lines()
    _released(server)
    return _rss_bytes(server)


async def test_memory_comes_back_after_every_call(headcast_server: RunningServer) -> None:
    _released(headcast_server)
    warm = await _call(headcast_server)
    after = [await _call(headcast_server) for _ in range(CALLS)]
    mb = [round(rss / 2**20) for rss in (warm, *after)]
    logger.info("server RSS after the warm-up call and each further call: %s MB", mb)
    assert max(after) - warm <= MAX_GROWTH_BYTES, f"RSS per call (MB): {mb}"

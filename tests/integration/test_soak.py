"""The CI soak: ``python -m loadtests --soak 2m`` against a puppet server, with the verdict logic
of the hour-long soak.

The shared test server has 2 slots and a 3 s peer timeout; the soak keeps both busy for two minutes
(30 s warm-up, then load) with 15 s calls that speak, are interrupted and hang up, every
third one vanishing (its process killed), and judges: memory idle after within 5 % of idle
before, threads / tasks / fds back to baseline, every call >= 24 fps, no chunk outside
+-40 ms of A/V skew. It writes ``artifacts/soak-ci/`` (series, summary, plot).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningServer

SOAK = "2m"
SOAK_TIMEOUT_S = 270.0
"""2 minutes of soak, two drains (peer timeout 3 s), a process per vanished call."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


def test_two_minute_soak_verdict(headcast_server: RunningServer, artifacts_dir: Path) -> None:
    out = artifacts_dir / "soak-ci"
    completed = subprocess.run(
        [
            sys.executable, "-m", "loadtests", "--url", headcast_server.url, "--soak", SOAK,
            "--call", "15", "--warmup", "30", "--sample", "2", "--vanish-every", "3",
            "--out", str(out),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=SOAK_TIMEOUT_S, check=False,
    )  # fmt: skip
    log = completed.stdout + completed.stderr
    assert completed.returncode in (0, 1), log
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    verdict = summary["verdict"]
    samples = (out / "series.csv").read_text(encoding="utf-8").splitlines()
    assert len(samples) > 30, log  # a sample every 2 s for 2 minutes
    calls = verdict["calls"]
    assert calls["hung_up"] >= 4 and calls["vanished"] >= 1, log
    plotted = subprocess.run(
        [sys.executable, "-m", "loadtests.plot", str(out / "series.csv")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert plotted.returncode == 0 and (out / "soak.png").is_file(), plotted.stderr

    assert (completed.returncode == 0) == verdict["passed"], log
    assert verdict["passed"], log

"""The CI soak: ``python -m loadtests --soak 2m`` against a puppet server, with the verdict logic
of the hour-long soak.

The soak runs in the background from the start of the test run (``soak_background.py``, the
``ci_soak`` fixture) against its own server: 2 slots, a 3 s peer timeout, 256x144 frames.
It keeps both slots busy for two minutes (30 s warm-up, then load) with 15 s calls that
speak, are interrupted and hang up, every third one vanishing (its process killed), and
judges: memory idle after within 5 % of idle before, threads / tasks / fds back to baseline,
every call >= 24 fps, no chunk outside +-40 ms of A/V skew. This test waits for it and
checks the verdict. It writes ``artifacts/soak-ci/`` (series, summary, plot).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.soak_background import BackgroundSoak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_two_minute_soak_verdict(ci_soak: BackgroundSoak | None) -> None:
    assert ci_soak is not None, "the ci_soak fixture starts the soak when this test is selected"
    completed = ci_soak.finish()
    out = ci_soak.out
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

"""The CI soak, started when the test run starts and judged by ``test_soak.py`` at its end.

Two minutes of soak are two minutes of wall time, most of them waiting on a media clock; run
alone they made a fifth of the suite. ``start_soak`` (called by the session fixture
``ci_soak`` in ``tests/conftest.py`` when ``test_soak.py`` is selected, so beside the unit
tests, which run first) starts a dedicated puppet server -- 2 session slots, frames of
256x144 so the soak's encoding and decoding cost the other tests' CPU little -- and
``python -m loadtests --soak 2m`` against it; the soak's own test waits for it and judges
the verdict. Its artefacts go to ``artifacts/soak-ci/``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningServer, run_server

SOAK = "2m"
SOAK_TIMEOUT_S = 300.0
"""2 minutes of soak, two drains (peer timeout 3 s), a process per vanished call, on a host
busy with the rest of the suite."""

SOAK_SERVER_SETTINGS: dict[str, object] = {
    "ice_loopback_only": True,
    "max_sessions": 2,
    "peer_timeout_s": 3.0,
    "session_token_ttl_s": 60.0,
    "height": 256,
    "width": 144,
}
"""The soak's own server (env ``HEADCAST_<NAME>``): the shared server's limits, small frames."""

SOAK_TEST = "tests/integration/test_soak.py"


@dataclass
class BackgroundSoak:
    """A soak running against its own server; ``finish`` waits for it."""

    server: RunningServer
    process: subprocess.Popen[str]
    out: Path

    def finish(self) -> subprocess.CompletedProcess[str]:
        """Wait for the soak (at most ``SOAK_TIMEOUT_S`` from its start) and return its run."""
        try:
            stdout, stderr = self.process.communicate(timeout=SOAK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
        return subprocess.CompletedProcess(
            self.process.args, self.process.returncode, stdout, stderr
        )


@contextlib.contextmanager
def start_soak(log_dir: Path, out: Path) -> Iterator[BackgroundSoak]:
    """A server and a soak against it, both started now; stopped on exit if still running."""
    with run_server(log_dir, **SOAK_SERVER_SETTINGS) as server:
        command = [
            sys.executable, "-m", "loadtests", "--url", server.url, "--soak", SOAK,
            "--call", "15", "--warmup", "30", "--sample", "2", "--vanish-every", "3",
            "--out", str(out),
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            yield BackgroundSoak(server, process, out)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()

"""The external programs the integration tests start (coturn, Prometheus): start one with its
output in a log file, wait until it is ready, stop it (SIGTERM, then SIGKILL) on exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

POLL_S = 0.1
"""How often readiness is checked, in seconds."""


def require(binary: str, package: str) -> str:
    """The path of ``binary``; skip without it, or fail under CI, naming Debian's ``package``."""
    path = shutil.which(binary)
    if path is not None:
        return path
    message = (
        f"{binary} not found: install Debian's {package} "
        f"(`apt-get install -y {package}`; make test does)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM ``process`` and wait ``timeout_s``; SIGKILL it if it is still there."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


@contextlib.contextmanager
def running(
    command: list[str],
    log_path: Path,
    ready: Callable[[], bool],
    *,
    ready_timeout_s: float,
    stop_timeout_s: float,
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running with its output in ``log_path``, once ``ready()`` is true."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
                raise RuntimeError(f"{Path(command[0]).name} did not start:\n{tail}")
            time.sleep(POLL_S)
        yield process
    finally:
        terminate(process, stop_timeout_s)

"""Integration fixtures: a real headcast server (uvicorn, puppet engine) on a free loopback port.

``run_server(log_dir, **settings)`` starts ``python -m headcast.server serve`` in a subprocess with
``HEADCAST_<SETTING>`` variables, waits for ``/readyz``, and on exit stops it with SIGTERM (a
graceful shutdown that closes every session). A subprocess keeps the server's threads and
event-loop tasks apart from the test's own, so the tests can watch them through ``/metrics``.

``headcast_server`` / ``server_url`` are one shared server for the whole test run (puppet,
loopback-only ICE, 2 session slots, 3 s peer timeout); every test must leave it idle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from headcast.streaming.ice import HostCandidatePolicy
from headcast_client import over_groups, parse_metrics
from tests.conftest import REPO_ROOT

LOOPBACK = "127.0.0.1"
SERVER_READY_TIMEOUT_S = 180.0
"""Longest wait for a fresh server's /readyz (importing torch can take 10 s on a busy host)."""

SERVER_STOP_TIMEOUT_S = 30.0
POLL_S = 0.2
PORT_ATTEMPTS = 3
"""Tries with a fresh free port, in case another process takes the port before the server binds."""

SHARED_SERVER_SETTINGS: dict[str, object] = {
    "ice_loopback_only": True,
    "max_sessions": 2,
    "peer_timeout_s": 3.0,
    "session_token_ttl_s": 60.0,
}
"""Settings of the shared test server (env ``HEADCAST_<NAME>``)."""

LOOPBACK_ONLY = HostCandidatePolicy(loopback_only=True)
"""The ICE policy of test clients: 127.0.0.1 only."""


class ServerFailed(RuntimeError):
    """The server subprocess exited or never became ready."""


@dataclass
class RunningServer:
    """A live server subprocess."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def series(self) -> dict[str, float]:
        """One scrape of ``/metrics``: {series as written, group labels included: value}."""
        response = httpx.get(f"{self.url}/metrics", timeout=10.0)
        response.raise_for_status()
        return parse_metrics(response.text)

    def metrics(self) -> dict[str, float]:
        """One scrape, summed over the engine groups (``headcast_chunks_total`` counts every
        group's chunks)."""
        return over_groups(self.series())

    def metric(self, name: str) -> float:
        return self.metrics()[name]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _server_env(settings: dict[str, object]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADCAST_")}
    for name, value in settings.items():
        env[f"HEADCAST_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerFailed(
                f"the server exited with status {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/readyz", timeout=5.0).status_code == 200:
                return
        time.sleep(POLL_S)
    raise ServerFailed(f"the server was not ready within {timeout_s:.0f} s:\n{server.log_tail()}")


def _stop(server: RunningServer) -> None:
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(SERVER_STOP_TIMEOUT_S)
        raise ServerFailed(
            f"the server ignored SIGTERM for {SERVER_STOP_TIMEOUT_S:.0f} s"
        ) from None


@contextlib.contextmanager
def run_server(
    log_dir: Path, engine: str = "puppet", **settings: object
) -> Iterator[RunningServer]:
    """A ready ``engine`` server on a free loopback port with ``settings`` (as env variables)."""
    env = _server_env(settings)
    last_error: ServerFailed | None = None
    for _attempt in range(PORT_ATTEMPTS):
        port = free_loopback_port()
        log_path = log_dir / f"server-{port}.log"
        command = [
            sys.executable, "-m", "headcast.server", "serve",
            "--engine", engine, "--host", LOOPBACK, "--port", str(port),
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        server = RunningServer(f"http://{LOOPBACK}:{port}", port, process, log_path)
        try:
            _wait_ready(server, SERVER_READY_TIMEOUT_S)
        except ServerFailed as exc:
            _stop(server)
            last_error = exc
            if "address already in use" not in server.log_tail().lower():
                raise
            continue
        try:
            yield server
        finally:
            _stop(server)
        return
    raise ServerFailed(f"no free port after {PORT_ATTEMPTS} attempts") from last_error


@pytest.fixture(scope="session")
def headcast_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The shared test server (see ``SHARED_SERVER_SETTINGS``)."""
    with run_server(tmp_path_factory.mktemp("headcast-server"), **SHARED_SERVER_SETTINGS) as server:
        yield server


@pytest.fixture(scope="session")
def server_url(headcast_server: RunningServer) -> str:
    """Base URL of the shared test server, e.g. ``http://127.0.0.1:41234``."""
    return headcast_server.url

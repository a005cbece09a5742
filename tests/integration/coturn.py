"""A real TURN server for the tests: Debian's coturn (``turnserver``) on 127.0.0.1.

``run_coturn(log_dir, secret)`` starts ``turnserver`` with the TURN REST API
(``use-auth-secret``, ``static-auth-secret``) listening and relaying on 127.0.0.1 only,
loopback peers allowed (both ends of a test call are on this host), no TLS, no CLI; waits
until it accepts TCP on its port; stops it with SIGTERM on exit. ``make test`` installs the
package; without it the TURN tests skip (fail under CI).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.integration.conftest import LOOPBACK, free_loopback_port
from tests.integration.processes import require, running

TURNSERVER = "turnserver"
COTURN_READY_TIMEOUT_S = 15.0
COTURN_STOP_TIMEOUT_S = 10.0
REALM = "headcast.test"


@dataclass(frozen=True)
class Coturn:
    """A running coturn: its ``turn:`` URL and shared secret."""

    port: int
    secret: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"turn:{LOOPBACK}:{self.port}?transport=udp"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _free_udp_and_tcp_port() -> int:
    for _ in range(20):
        port = free_loopback_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


def _accepts_tcp(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def run_coturn(log_dir: Path, secret: str) -> Iterator[Coturn]:
    """coturn on a free loopback port with the TURN REST secret ``secret``."""
    binary = require(TURNSERVER, "coturn")
    port = _free_udp_and_tcp_port()
    log_path = log_dir / f"coturn-{port}.log"
    command = [
        binary, "-n", "--log-file=-", "--no-cli", "--no-tls", "--no-dtls",
        f"--listening-ip={LOOPBACK}", f"--relay-ip={LOOPBACK}", f"--listening-port={port}",
        "--allow-loopback-peers", "--use-auth-secret", f"--static-auth-secret={secret}",
        f"--realm={REALM}", "--no-software-attribute",
        f"--pidfile={log_dir / f'coturn-{port}.pid'}", f"--userdb={log_dir / f'coturn-{port}.db'}",
    ]  # fmt: skip
    with running(
        command,
        log_path,
        lambda: _accepts_tcp(port),
        ready_timeout_s=COTURN_READY_TIMEOUT_S,
        stop_timeout_s=COTURN_STOP_TIMEOUT_S,
    ):
        yield Coturn(port, secret, log_path)

"""A real Prometheus for the tests: Debian's ``prometheus`` on a free loopback port.

``run_prometheus(work_dir, target_port, rule_file)`` writes a configuration that scrapes a
headcast server on 127.0.0.1 every second as ``job="headcast"`` (the job the rules select)
and evaluates ``rule_file`` every second, starts ``prometheus`` with its data in
``work_dir``, waits for ``/-/ready`` and stops it with SIGTERM on exit. ``query`` runs an
instant query through the HTTP API. ``require_binary`` skips (fails under CI) when the
Debian package is missing; ``make test`` installs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.integration.conftest import LOOPBACK, free_loopback_port
from tests.integration.processes import require, running

SCRAPE_INTERVAL_S = 1
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
JOB = "headcast"


def require_binary(name: str) -> str:
    """The path of ``name`` (``prometheus``, ``promtool``); skip, or fail under CI, without it."""
    return require(name, "prometheus")


class QueryFailed(AssertionError):
    """Prometheus refused a query (it does not parse or cannot be evaluated)."""


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus and its HTTP API."""

    url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        body = response.json()
        if body.get("status") != "success":
            raise QueryFailed(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The series of an instant query at the current time."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def run_prometheus(work_dir: Path, target_port: int, rule_file: Path) -> Iterator[Prometheus]:
    """Prometheus scraping ``127.0.0.1:target_port`` with ``rule_file``'s rules."""
    binary = require_binary("prometheus")
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
        },
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"{LOOPBACK}:{target_port}"]}]}
        ],
    }
    config_path = work_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_loopback_port()
    log_path = work_dir / "prometheus.log"
    command = [
        binary, f"--config.file={config_path}", f"--storage.tsdb.path={work_dir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn",
    ]  # fmt: skip
    server = Prometheus(f"http://{LOOPBACK}:{port}", log_path)

    def ready() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{server.url}/-/ready", timeout=2.0).status_code == 200
        return False

    with running(
        command, log_path, ready, ready_timeout_s=READY_TIMEOUT_S, stop_timeout_s=STOP_TIMEOUT_S
    ):
        yield server

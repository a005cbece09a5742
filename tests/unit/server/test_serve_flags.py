"""``headcast serve`` flags: each reaches its setting, and an unset flag leaves the profile's;
``serve`` imports no other subcommand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from headcast.server.cli import build_parser
from headcast.server.commands.serve import settings_from_args


def test_flags_override_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADCAST_ICE_LOOPBACK", raising=False)
    profile = tmp_path / "profile.yaml"
    profile.write_text("engine: tiny\nport: 9001\nice_loopback: false\n", encoding="utf-8")
    args = build_parser().parse_args(
        ["serve", "--config", str(profile), "--engine", "flashtalk", "--ice-loopback",
         "--random-weights", "--host", "127.0.0.2"]
    )  # fmt: skip

    settings = settings_from_args(args)

    assert settings.engine == "flashtalk" and settings.host == "127.0.0.2"
    assert settings.ice_loopback and settings.random_weights
    assert settings.port == 9001, "a flag not given keeps the profile's value"


def test_without_flags_the_profile_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADCAST_ICE_LOOPBACK", raising=False)
    monkeypatch.delenv("HEADCAST_RANDOM_WEIGHTS", raising=False)
    profile = tmp_path / "profile.yaml"
    profile.write_text("ice_loopback: true\n", encoding="utf-8")

    settings = settings_from_args(build_parser().parse_args(["serve", "--config", str(profile)]))

    assert settings.ice_loopback and not settings.random_weights and settings.engine == "puppet"


def test_serve_loads_no_other_subcommand() -> None:
    """``headcast serve`` must not pay for the benchmark's imports (about 3 s of start-up)."""
    probe = (
        "import sys; from headcast.server.cli import build_parser; "
        "build_parser('serve').parse_args(['serve']); "
        "print(sorted(m for m in sys.modules if m.startswith('headcast.server.commands.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert loaded.stdout.strip() == "['headcast.server.commands.serve']", loaded.stderr
    assert build_parser().parse_args(["bench", "--chunks", "1"]).command == "bench"

"""`headcast doctor` as a user runs it: the report on stdout, exit 0 or 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.pipeline.test_doctor import _build_model_dir


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build_model_dir(tmp_path_factory.mktemp("models"))


def test_the_cli_prints_the_report_and_exits_1_on_a_mismatch(
    model_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, wav2vec = model_dirs
    ok = subprocess.run(
        [sys.executable, "-m", "server.cli", "doctor", "--model-dir", str(model_dir),
         "--wav2vec-dir", str(wav2vec)],
        capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all checks passed" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "server.cli", "doctor", "--model-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 1
    assert f"missing {tmp_path / 'config.json'}" in bad.stdout

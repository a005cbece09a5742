"""`headcast doctor` as a user runs it: the report on stdout, exit 0 or 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from headcast.pipeline.omniavatar.config import omni_size
from headcast.pipeline.omniavatar.loader import OMNI_WEIGHTS_FILE
from headcast.server.cli import main
from tests.unit.pipeline.omniavatar.test_doctor import _build
from tests.unit.pipeline.test_doctor import _build_model_dir

SIZE = omni_size("1.3b")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build_model_dir(tmp_path_factory.mktemp("models"))


def test_the_cli_prints_the_report_and_exits_0_when_all_checks_pass(
    model_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, wav2vec = model_dirs
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "headcast.server.cli",
            "doctor",
            "--model-dir",
            str(model_dir),
            "--wav2vec-dir",
            str(wav2vec),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all checks passed" in ok.stdout


def test_the_cli_exits_1_on_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In process: the entry point and its exit code are covered above, in a process of its own.
    assert main(["doctor", "--model-dir", str(tmp_path)]) == 1
    assert f"missing {tmp_path / 'config.json'}" in capsys.readouterr().out


def test_the_cli_checks_omniavatar_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _build(tmp_path / "models")
    empty = tmp_path / "empty"
    empty.mkdir()
    command = ["doctor", "--engine", "omniavatar", "--size", "1.3b", "--model-dir"]
    assert main([*command, str(folder)]) == 0
    report = capsys.readouterr().out
    assert "Wan 2.1 T2V 1.3b DiT" in report and "all checks passed" in report
    assert main([*command, str(empty)]) == 1
    assert f"missing {empty / SIZE.omni_dir / OMNI_WEIGHTS_FILE}" in capsys.readouterr().out

"""The import-linter contract in ``.importlinter``: server -> streaming -> pipeline, one way;
the packages are installed as ``headcast.*`` and nothing imports them by their folder names.

Runs ``lint-imports`` on the real tree, and once on a small synthetic tree that breaks each
rule, so the contract is shown to catch what it claims to catch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / ".importlinter"
LINT_TIMEOUT_S = 120


def _lint_imports(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` from this venv with ``cwd`` first on the import path."""
    executable = Path(sys.executable).parent / "lint-imports"
    if not executable.exists():
        pytest.fail(f"{executable} not found: install the test extra (make test)")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(executable), "--config", str(config), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT_S,
        check=False,
    )


def test_the_tree_keeps_every_import_contract() -> None:
    result = _lint_imports(CONFIG, REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert "3 kept" in result.stdout


def _write_tree(root: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path -> source text) under ``root``."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_the_contract_catches_each_forbidden_import(tmp_path: Path) -> None:
    _write_tree(
        tmp_path,
        {
            "headcast/server/__init__.py": "",
            "headcast/server/app.py": "",
            "headcast/streaming/__init__.py": "",
            "headcast/pipeline/__init__.py": "",
            # Lower layers reaching up, and into what they must not know.
            "headcast/pipeline/engine.py": "import asyncio\nimport headcast.streaming.session\n",
            "headcast/streaming/session.py": "import fastapi\nfrom headcast.server import app\n",
        },
    )
    config = tmp_path / ".importlinter"
    shutil.copyfile(CONFIG, config)

    result = _lint_imports(config, tmp_path)

    output = result.stdout
    assert result.returncode != 0, output
    assert "3 broken" in output, output
    assert "headcast.pipeline.engine -> asyncio" in output
    assert "headcast.pipeline.engine -> headcast.streaming.session" in output
    assert "headcast.streaming.session -> fastapi" in output
    assert "headcast.streaming.session -> headcast.server.app" in output


PACKAGE_FOLDERS = {
    "headcast.server": "server",
    "headcast.pipeline": "pipeline",
    "headcast.streaming": "streaming",
}
"""Installed package name -> the folder that holds it (pyproject.toml's package-dir)."""

SOURCE_DIRS = (
    "server",
    "pipeline",
    "streaming",
    "clients/python",
    "loadtests",
    "tests",
    "benchmarks",
)
FOLDER_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:server|pipeline|streaming)\b", re.M)


def test_every_package_folder_is_installed_under_headcast() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    assert {name: setuptools["package-dir"][name] for name in PACKAGE_FOLDERS} == PACKAGE_FOLDERS
    packages = {
        ".".join((name, *init.parent.relative_to(REPO_ROOT / folder).parts))
        for name, folder in PACKAGE_FOLDERS.items()
        for init in (REPO_ROOT / folder).rglob("__init__.py")
    }
    missing = packages - set(setuptools["packages"])
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"


def test_nothing_imports_a_package_by_its_folder_name() -> None:
    """``import server`` would load a second copy of the module beside ``headcast.server``'s."""
    offenders = [
        f"{path.relative_to(REPO_ROOT)}: {match.group(0).strip()}"
        for folder in SOURCE_DIRS
        for path in (REPO_ROOT / folder).rglob("*.py")
        for match in FOLDER_IMPORT.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, offenders

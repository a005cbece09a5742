"""The web SDK as an npm package: ``npm pack`` of clients/web, installed and type-checked.

``npm pack`` builds the tarball a frontend installs; a throw-away ESM project installs it
(offline: the package has no dependencies) and the TypeScript compiler from the npm registry
(clients/web's devDependency, ``npm ci`` in ``make test``) type-checks
``clients/web/test/consumer.ts`` against the package's ``exports`` and declarations. A
consumer that misuses the API must fail the same check, so the types are not ``any``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

WEB = REPO_ROOT / "clients" / "web"
TSC = WEB / "node_modules" / ".bin" / "tsc"
NPM_TIMEOUT_S = 120
PACKAGE_FILES = {"headcast.js", "headcast.d.ts", "headcast-widget.js", "headcast-widget.d.ts"}

MISUSE = """
import { createSession } from "@headcast/web";
const session = await createSession("", { audioSource: "push", sampleRate: 22050 });
await session.speak("hello");
session.on("speech.ended", (event) => event.played_ms);
"""


def _require_node_tools() -> None:
    missing = [name for name in ("npm",) if shutil.which(name) is None]
    if not TSC.exists():
        missing.append(str(TSC))
    if not missing:
        return
    message = f"{', '.join(missing)} missing: run `npm ci --prefix clients/web` (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
    )


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ESM project with the packed @headcast/web installed."""
    _require_node_tools()
    root = tmp_path_factory.mktemp("consumer")
    packed = _run(["npm", "pack", "--json", "--pack-destination", str(root)], WEB)
    assert packed.returncode == 0, packed.stderr
    tarball = root / json.loads(packed.stdout)[0]["filename"]
    with tarfile.open(tarball) as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert PACKAGE_FILES <= names, names
    (root / "package.json").write_text('{"name": "consumer", "private": true, "type": "module"}')
    installed = _run(["npm", "install", "--offline", "--no-audit", "--no-fund", str(tarball)], root)
    assert installed.returncode == 0, installed.stderr
    shutil.copy(WEB / "test" / "tsconfig.json", root / "tsconfig.json")
    return root


def _typecheck(root: Path, source: str) -> subprocess.CompletedProcess[str]:
    (root / "consumer.ts").write_text(source)
    return _run([str(TSC), "-p", "tsconfig.json"], root)


def test_the_packed_sdk_type_checks_in_a_typescript_consumer(consumer: Path) -> None:
    result = _typecheck(consumer, (WEB / "test" / "consumer.ts").read_text())
    assert result.returncode == 0, result.stdout + result.stderr


def test_misuse_of_the_sdk_fails_the_type_check(consumer: Path) -> None:
    result = _typecheck(consumer, MISUSE)
    assert result.returncode != 0
    for line, wrong in ((3, "22050"), (4, "'string'"), (5, "played_ms")):
        assert f"consumer.ts({line}," in result.stdout and wrong in result.stdout, result.stdout

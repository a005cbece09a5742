"""The Docker build contexts: every path a Dockerfile copies passes its ``.dockerignore``.

Each ``docker/Dockerfile*`` has a ``<Dockerfile>.dockerignore`` beside it that ignores
everything (``**``) and lets chosen paths back in (``!path``); a ``COPY`` of a path left out
fails the build with "not found", which no other test would notice (no image is built here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCKERFILES = sorted(
    path for path in (REPO_ROOT / "docker").glob("Dockerfile*") if path.suffix != ".dockerignore"
)


def _copied(dockerfile: Path) -> list[str]:
    """The build-context sources of every ``COPY`` (without ``--from``)."""
    sources: list[str] = []
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(w.startswith("--from") for w in words):
            continue
        sources.extend(w for w in words[1:-1] if not w.startswith("--"))
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_copied_path_is_in_the_build_context(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    allowed = {
        line[1:].rstrip("/")
        for line in ignore.read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    copied = _copied(dockerfile)
    assert copied, f"{dockerfile.name} copies nothing?"
    missing = [source for source in copied if source.rstrip("/") not in allowed]
    assert not missing, f"{ignore.name} leaves out what {dockerfile.name} copies: {missing}"

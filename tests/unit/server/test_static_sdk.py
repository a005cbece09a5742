"""``/static/`` serves the web SDK from its one source, clients/web (the npm package's files)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from headcast.server.routes.web import STATIC_DIR, mount_static
from tests.conftest import REPO_ROOT

SDK_FILES = ("headcast.js", "headcast-widget.js")


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    mount_static(app)
    return TestClient(app)


@pytest.mark.parametrize("name", SDK_FILES)
def test_the_server_serves_the_packaged_sdk_file(client: TestClient, name: str) -> None:
    source = REPO_ROOT / "clients" / "web" / name
    assert (STATIC_DIR / name).resolve() == source.resolve(), "one source of truth: a link"
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.content == source.read_bytes()
    assert "javascript" in response.headers["content-type"]


def test_paths_cannot_climb_out_of_the_static_folder(client: TestClient) -> None:
    assert client.get("/static/../routes/web.py").status_code == 404
    assert client.get("/static/%2e%2e/routes/web.py").status_code == 404

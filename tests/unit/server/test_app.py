"""The HTTP API on a scripted engine: sessions, tokens, readiness, problems, metrics.

The app and its lifespan are real (engine worker thread, media threads, registry); only the
model is ``FakeEngine``. WebRTC itself is exercised by tests/integration.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from headcast.server.app import create_app
from headcast.server.routes.web import web_router
from headcast.server.settings import Settings
from tests.conftest import FakeEngine

PROBLEM = "application/problem+json"
POLL_S = 0.02
POLL_LIMIT_S = 10.0


def _settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"height": 96, "width": 64, "max_sessions": 2, "media_threads": 2}
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + POLL_LIMIT_S
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(POLL_S)
    raise AssertionError("the app never became ready")


def _assert_problem(response, status: int, slug: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["type"].endswith(slug), body
    assert body["title"] and body["detail"]
    return body


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(_settings(), engine=FakeEngine(96, 64))
    with TestClient(app) as test_client:
        _wait_ready(test_client)
        yield test_client


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_not_ready_until_the_engine_loads_then_sessions_open() -> None:
    gate = threading.Event()
    app = create_app(_settings(), engine=FakeEngine(96, 64, load_gate=gate))
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        body = _assert_problem(client.get("/readyz"), 503, "engine-loading")
        assert body["state"] == "loading" and body["engine"] == "fake"
        response = client.post("/v1/sessions", json={"avatar": "default"})
        _assert_problem(response, 503, "engine-not-ready")
        assert int(response.headers["retry-after"]) > 0
        gate.set()
        _wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["state"] == "ready" and ready["description"] == FakeEngine.description
        created = client.post("/v1/sessions", json={"avatar": "default"})
        assert created.status_code == 201
        body = created.json()
        assert set(body) == {
            "id",
            "token",
            "expires_at",
            "ice_servers",
            "audio_source",
            "sample_rate",
            "audio_path",
        }
        assert (body["audio_source"], body["audio_path"]) == ("mic", None)
        assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC)
        assert body["ice_servers"] == [] and len(body["token"]) >= 40


def test_a_load_failure_shows_in_readyz() -> None:
    app = create_app(_settings(), engine=FakeEngine(96, 64, load_error=OSError("weights missing")))
    with TestClient(app) as client:
        deadline = time.monotonic() + POLL_LIMIT_S
        while (
            client.get("/readyz").json().get("state") == "loading" and time.monotonic() < deadline
        ):
            time.sleep(POLL_S)
        body = _assert_problem(client.get("/readyz"), 503, "engine-failed")
        assert body["state"] == "failed" and "weights missing" in body["detail"]
        _assert_problem(client.post("/v1/sessions", json={}), 503, "engine-not-ready")


def test_tokens_guard_each_session(client: TestClient) -> None:
    first = client.post("/v1/sessions", json={"avatar": "default"}).json()
    second = client.post("/v1/sessions", json={"avatar": "default"}).json()
    assert first["id"] != second["id"] and first["token"] != second["token"]
    url = f"/v1/sessions/{first['id']}"

    response = client.delete(url)
    _assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    _assert_problem(
        client.delete(url, headers={"Authorization": f"Basic {first['token']}"}),
        401,
        "unauthorized",
    )
    _assert_problem(
        client.delete(url, headers={"Authorization": f"Bearer {second['token']}"}), 403, "forbidden"
    )
    _assert_problem(
        client.delete("/v1/sessions/nonexistent", headers={"Authorization": "Bearer x"}),
        404,
        "unknown-session",
    )
    assert _metric(client, "headcast_sessions_active") == 2
    assert (
        client.delete(url, headers={"Authorization": f"Bearer {first['token']}"}).status_code == 204
    )
    _assert_problem(
        client.delete(url, headers={"Authorization": f"Bearer {first['token']}"}),
        404,
        "unknown-session",
    )
    assert _metric(client, "headcast_sessions_active") == 1


def test_capacity_and_unknown_avatar(client: TestClient) -> None:
    _assert_problem(client.post("/v1/sessions", json={"avatar": "nobody"}), 404, "unknown-avatar")
    sessions = [client.post("/v1/sessions", json={}).json() for _ in range(2)]
    response = client.post("/v1/sessions", json={"avatar": "default"})
    _assert_problem(response, 429, "capacity")
    assert int(response.headers["retry-after"]) > 0
    client.delete(
        f"/v1/sessions/{sessions[0]['id']}",
        headers={"Authorization": f"Bearer {sessions[0]['token']}"},
    )
    assert client.post("/v1/sessions", json={}).status_code == 201


def test_offer_validation_and_malformed_sdp(client: TestClient) -> None:
    session = client.post("/v1/sessions", json={}).json()
    url = f"/v1/sessions/{session['id']}/offer"
    auth = {"Authorization": f"Bearer {session['token']}"}
    body = _assert_problem(
        client.post(url, json={"sdp": "v=0", "type": "answer"}, headers=auth),
        422,
        "invalid-request",
    )
    assert body["errors"][0]["loc"][-1] == "type"
    _assert_problem(
        client.post(url, json={"sdp": "garbage", "type": "offer"}, headers=auth), 400, "bad-offer"
    )
    _assert_problem(
        client.post(url, json={"sdp": "", "type": "offer"}, headers=auth), 400, "bad-offer"
    )
    _assert_problem(client.post(url, json={"sdp": "garbage", "type": "offer"}), 401, "unauthorized")
    _assert_problem(
        client.post("/v1/sessions", json={"avatar": "default", "extra": 1}), 422, "invalid-request"
    )
    _assert_problem(client.get("/no/such/route"), 404, "not-found")


def test_a_session_without_an_offer_expires() -> None:
    app = create_app(_settings(session_token_ttl_s=0.2), engine=FakeEngine(96, 64))
    with TestClient(app) as client:
        _wait_ready(client)
        client.post("/v1/sessions", json={})
        assert _metric(client, "headcast_sessions_active") == 1
        deadline = time.monotonic() + POLL_LIMIT_S
        while _metric(client, "headcast_sessions_active") and time.monotonic() < deadline:
            time.sleep(POLL_S)
        assert _metric(client, "headcast_sessions_active") == 0


def test_metrics_are_per_app_and_named_with_units(client: TestClient) -> None:
    create_app(_settings(), engine=FakeEngine(96, 64))  # a second registry must not collide
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "headcast_sessions_active",
        "headcast_chunks_total",
        "headcast_chunk_compute_seconds_bucket",
        "headcast_rtf_bucket",
        "headcast_first_frame_seconds_bucket",
        'headcast_chunk_errors_total{group="0",reason="engine_error"}',
        'headcast_engine_group_ready{group="0"} 1.0',
        "headcast_process_threads",
        "headcast_event_loop_tasks",
    ):
        assert name in text, name
    assert 'le="1.12"' in text and 'le="1.0"' in text


def test_root_serves_the_page_or_a_fallback(client: TestClient, tmp_path: Path) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    from fastapi import FastAPI

    bare = FastAPI()
    bare.include_router(web_router(tmp_path))
    with TestClient(bare) as bare_client:
        fallback = bare_client.get("/")
    assert fallback.status_code == 200 and "readyz" in fallback.text


def test_json_routes_take_json_only_and_bounded_bodies() -> None:
    app = create_app(_settings(max_request_bytes=2048), engine=FakeEngine(96, 64))
    with TestClient(app) as client:
        _wait_ready(client)
        for headers, content in (
            ({}, b""),  # a no-cors fetch without a body
            ({"Content-Type": "text/plain"}, b'{"avatar": "default"}'),
            ({"Content-Type": "application/x-www-form-urlencoded"}, b"avatar=default"),
        ):
            response = client.post("/v1/sessions", headers=headers, content=content)
            _assert_problem(response, 415, "unsupported-media-type")
        json_type = {"Content-Type": "application/json; charset=utf-8"}
        _assert_problem(
            client.post("/v1/sessions", headers=json_type, content=b'{"avatar": '),
            422,
            "invalid-request",
        )
        too_big = b'{"avatar": "' + b"a" * 4096 + b'"}'
        _assert_problem(
            client.post("/v1/sessions", headers=json_type, content=too_big), 413, "body-too-large"
        )
        chunked = iter([too_big[:1500], too_big[1500:]])  # no Content-Length: streamed
        _assert_problem(
            client.post("/v1/sessions", headers=json_type, content=chunked),
            413,
            "body-too-large",
        )
        assert _metric(client, "headcast_sessions_active") == 0
        created = client.post("/v1/sessions", headers=json_type, content=b"")
        assert created.status_code == 201, created.text  # an empty JSON body: the defaults


def _calls(dependant: Any) -> Iterator[tuple[str, Any]]:
    """Every callable FastAPI calls for a route: its dependencies', depth first."""
    for sub in dependant.dependencies:
        yield from _calls(sub)
        yield sub.name or getattr(sub.call, "__name__", repr(sub.call)), sub.call


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route with a ``dependant``, through included routers (FastAPI resolves those
    lazily: ``effective_candidates``)."""
    for route in routes:
        if hasattr(route, "effective_candidates"):
            yield from _routes(route.effective_candidates())
        elif getattr(route, "dependant", None) is not None:
            yield route


def test_no_route_or_dependency_runs_in_the_thread_pool() -> None:
    """FastAPI runs a plain ``def`` endpoint or dependency in AnyIO's worker threads: a thread
    hop per call on every request (four on an interrupt) and idle worker threads left after
    each burst, which the soak counts as threads not back to baseline. Everything here only
    looks things up, so all of it is ``async``."""
    app = create_app(_settings())
    checked = 0
    for route in _routes(app.routes):
        dependant = route.dependant
        for name, call in [(route.name, dependant.call), *_calls(dependant)]:
            if call is None:
                continue  # a plain parameter
            checked += 1
            assert inspect.iscoroutinefunction(call), f"{route.path}: {name} is not async"
    assert checked > 20

"""Credentials: API keys for creating sessions, per-session tokens, and their HTTP answers.

``server.auth`` on its own (key matching, token issue and verification with expiry and
scope), then the app on a scripted engine: 401 without or with a wrong API key, 201 with a
valid one, 403 for another session's token, 401 for an expired one, the refusals counted in
``headcast_sessions_rejected_total{reason="auth"}``, and the startup log saying which mode
the server runs in -- without ever printing a key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from headcast.server.app import create_app
from headcast.server.auth import (
    ApiKeys,
    InvalidApiKey,
    InvalidToken,
    MissingCredentials,
    SessionTokens,
    TokenExpired,
    TokenForAnotherSession,
    TokenRedactor,
    TokenUse,
    bearer_credential,
    redact_tokens,
)
from headcast.server.settings import Settings, SettingsError, load_settings
from tests.conftest import FakeEngine

KEY = "k" * 12 + "-first-key-0123"
OTHER_KEY = "o" * 12 + "-second-key-456"
WRONG_KEY = "w" * 12 + "-not-a-key-7890"
PROBLEM = "application/problem+json"
POLL_S = 0.02
POLL_LIMIT_S = 10.0
SHORT_TTL_S = 1.0
NOW_S = 1_800_000_000.0
"""A fixed wall-clock time (unix s) for token tests."""


def _settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"height": 96, "width": 64, "max_sessions": 4, "media_threads": 2}
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + POLL_LIMIT_S
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(POLL_S)
    raise AssertionError("the app never became ready")


def _rejected_auth(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('headcast_sessions_rejected_total{reason="auth"} '):
            return float(line.split()[-1])
    raise AssertionError("headcast_sessions_rejected_total{reason=auth} not exported")


def _assert_problem(response, status: int, slug: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["type"].endswith(":" + slug), body
    return body


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


# -- server.auth on its own ---------------------------------------------------------------


def test_bearer_credential_parsing() -> None:
    assert bearer_credential("Bearer abc", "API key") == "abc"
    assert bearer_credential("bearer   abc  ", "API key") == "abc"
    for bad in (None, "", "   ", "Basic abc", "Bearer", "Bearer   ", "abc"):
        with pytest.raises(MissingCredentials, match="Bearer <API key>"):
            bearer_credential(bad, "API key")


def test_api_keys_accept_only_configured_keys() -> None:
    open_mode = ApiKeys([])
    assert not open_mode.required
    open_mode.check(None)  # open local-demo mode: anyone may create sessions
    open_mode.check("Bearer anything")

    keys = ApiKeys([KEY, OTHER_KEY])
    assert keys.required and len(keys) == 2
    keys.check(f"Bearer {KEY}")
    keys.check(f"Bearer {OTHER_KEY}")
    with pytest.raises(MissingCredentials):
        keys.check(None)
    for wrong in (WRONG_KEY, KEY[:-1], KEY + "x", KEY.upper()):
        with pytest.raises(InvalidApiKey) as info:
            keys.check(f"Bearer {wrong}")
        assert wrong not in str(info.value) and KEY not in str(info.value)


def test_a_token_is_scoped_to_its_session_and_signed() -> None:
    tokens = SessionTokens(60.0)
    issued = tokens.issue("abc", now_s=NOW_S)
    assert issued.expires_at.timestamp() == pytest.approx(NOW_S + 60.0)
    assert issued.value not in repr(issued)
    for use in TokenUse:
        tokens.verify(issued.value, "abc", use, connected=False, now_s=NOW_S + 1)

    with pytest.raises(TokenForAnotherSession):
        tokens.verify(issued.value, "xyz", TokenUse.START, connected=False, now_s=NOW_S)
    session, expires_ms, signature = issued.value.split(".")
    forged_expiry = f"{session}.{int(expires_ms) + 3_600_000}.{signature}"
    forged_session = f"xyz.{expires_ms}.{signature}"
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    for bad in (forged_expiry, forged_session, f"{session}.{expires_ms}.{flipped}", "garbage", ""):
        with pytest.raises(InvalidToken):
            tokens.verify(bad, "abc", TokenUse.CONTROL, connected=True, now_s=NOW_S)
    other_server = SessionTokens(60.0).issue("abc", now_s=NOW_S)  # another signing key
    with pytest.raises(InvalidToken):
        tokens.verify(other_server.value, "abc", TokenUse.START, connected=False, now_s=NOW_S)


def test_an_expired_token_starts_nothing_but_controls_a_connected_session() -> None:
    tokens = SessionTokens(10.0)
    value = tokens.issue("abc", now_s=NOW_S).value
    later = NOW_S + 10.0
    for connected in (False, True):
        with pytest.raises(TokenExpired, match="create a new session"):
            tokens.verify(value, "abc", TokenUse.START, connected=connected, now_s=later)
    with pytest.raises(TokenExpired):
        tokens.verify(value, "abc", TokenUse.CONTROL, connected=False, now_s=later)
    tokens.verify(value, "abc", TokenUse.CONTROL, connected=True, now_s=later + 3600)
    with pytest.raises(TokenForAnotherSession):  # expiry never widens the scope
        tokens.verify(value, "xyz", TokenUse.CONTROL, connected=True, now_s=later)


def test_short_api_keys_are_refused_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "tooshort-9"
    monkeypatch.setenv("HEADCAST_API_KEYS", f"{KEY},{secret}")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "HEADCAST_API_KEYS" in message and "#2" in message and "16" in message
    assert secret not in message and KEY not in message
    assert info.value.__cause__ is None  # the ValidationError (which holds the input) is dropped
    monkeypatch.setenv("HEADCAST_API_KEYS", f" {KEY} , {OTHER_KEY} ")
    keys = load_settings().api_keys
    assert [key.get_secret_value() for key in keys] == [KEY, OTHER_KEY]
    assert KEY not in repr(load_settings())


# -- the app ------------------------------------------------------------------------------


@pytest.fixture
def keyed_client(caplog: pytest.LogCaptureFixture) -> Iterator[TestClient]:
    caplog.set_level(logging.INFO, logger="headcast.server.app")
    app = create_app(_settings(api_keys=[KEY, OTHER_KEY]), engine=FakeEngine(96, 64))
    with TestClient(app) as client:
        _wait_ready(client)
        yield client


def test_creating_a_session_needs_an_api_key(
    keyed_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = keyed_client
    missing = client.post("/v1/sessions", json={})
    _assert_problem(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/v1/sessions", json={}, headers=_bearer(WRONG_KEY))
    body = _assert_problem(wrong, 401, "unauthorized")
    assert "invalid_token" in wrong.headers["www-authenticate"]
    assert "HEADCAST_API_KEYS" in body["detail"] and WRONG_KEY not in wrong.text
    # the session token is not an API key
    created = client.post("/v1/sessions", json={}, headers=_bearer(KEY))
    assert created.status_code == 201, created.text
    session = created.json()
    _assert_problem(
        client.post("/v1/sessions", json={}, headers=_bearer(session["token"])), 401, "unauthorized"
    )
    assert _rejected_auth(client) == 3
    assert client.post("/v1/sessions", json={}, headers=_bearer(OTHER_KEY)).status_code == 201

    log = "\n".join(r.getMessage() for r in caplog.get_records("setup") + caplog.records)
    assert "API keys required" in log and "2 key(s)" in log and "OPEN MODE" not in log
    assert KEY not in log and OTHER_KEY not in log


def test_session_tokens_on_the_session_routes(keyed_client: TestClient) -> None:
    client = keyed_client
    first = client.post("/v1/sessions", json={}, headers=_bearer(KEY)).json()
    second = client.post("/v1/sessions", json={}, headers=_bearer(KEY)).json()
    offer = {"sdp": "garbage", "type": "offer"}
    before = _rejected_auth(client)

    _assert_problem(
        client.post(f"/v1/sessions/{first['id']}/offer", json=offer, headers=_bearer(KEY)),
        401,
        "unauthorized",
    )  # an API key is not a session token
    _assert_problem(
        client.post(
            f"/v1/sessions/{first['id']}/offer", json=offer, headers=_bearer(second["token"])
        ),
        403,
        "forbidden",
    )
    _assert_problem(
        client.post(f"/v1/sessions/{first['id']}/keepalive", headers=_bearer(second["token"])),
        403,
        "forbidden",
    )
    # a valid token gets past auth: the garbage SDP is the next thing refused
    _assert_problem(
        client.post(
            f"/v1/sessions/{first['id']}/offer", json=offer, headers=_bearer(first["token"])
        ),
        400,
        "bad-offer",
    )
    assert (
        client.post(
            f"/v1/sessions/{first['id']}/keepalive", headers=_bearer(first["token"])
        ).status_code
        == 204
    )
    assert _rejected_auth(client) == before + 3
    assert (
        client.delete(f"/v1/sessions/{second['id']}", headers=_bearer(second["token"])).status_code
        == 204
    )


def test_an_expired_token_is_401_until_the_unconnected_session_is_released() -> None:
    app = create_app(
        _settings(api_keys=[KEY], session_token_ttl_s=SHORT_TTL_S), engine=FakeEngine(96, 64)
    )
    with TestClient(app) as client:
        _wait_ready(client)
        _expire_unconnected_session(client)


def _expire_unconnected_session(client: TestClient) -> None:
    session = client.post("/v1/sessions", json={}, headers=_bearer(KEY)).json()
    url = f"/v1/sessions/{session['id']}/offer"
    offer = {"sdp": "garbage", "type": "offer"}
    deadline = time.monotonic() + POLL_LIMIT_S
    seen: list[int] = []
    while time.monotonic() < deadline:
        response = client.post(url, json=offer, headers=_bearer(session["token"]))
        seen.append(response.status_code)
        if response.status_code == 401:
            body = _assert_problem(response, 401, "token-expired")
            assert "create a new session" in body["detail"]
            assert "invalid_token" in response.headers["www-authenticate"]
        if response.status_code == 404:
            break
        time.sleep(POLL_S)
    # 400 (valid token, bad SDP) until the token expires; then the session, which can no
    # longer be started, is released (404). A 401 may show in between, never anything else.
    assert seen[0] == 400 and seen[-1] == 404, seen
    assert set(seen) <= {400, 401, 404}, seen


def test_open_mode_says_so_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="headcast.server.app")
    app = create_app(_settings(), engine=FakeEngine(96, 64))
    with TestClient(app) as client:
        _wait_ready(client)
        assert client.post("/v1/sessions", json={}).status_code == 201
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("OPEN MODE" in r.getMessage() for r in warnings), caplog.text
    assert "API keys required" not in caplog.text


def test_tokens_in_logged_urls_are_redacted() -> None:
    token = SessionTokens(60.0).issue("abc").value
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        0,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", f"/v1/sessions/abc/audio?token={token}&rate=16000"),
        None,
    )
    assert TokenRedactor().filter(record)  # redacts, never drops
    message = record.getMessage()
    assert token not in message
    assert message.endswith('/v1/sessions/abc/audio?token=[redacted]&rate=16000" [accepted]')
    assert redact_tokens("/x?a=1&session_token=s3cret") == "/x?a=1&session_token=[redacted]"


def test_malformed_tokens_are_invalid_tokens_not_errors() -> None:
    """Non-ASCII, Unicode digits or an overlong token: refused like any garbled token."""
    tokens = SessionTokens(60.0)
    real = tokens.issue("abc", now_s=NOW_S).value
    session, expires_ms, signature = real.split(".")
    for bad in (
        "é" + real,  # an accented letter before a real token (latin-1 from a header)
        f"{session}.²³.{signature}",  # superscript digits: str.isdigit() says yes
        f"{session}.{expires_ms}.{signature}é",
        f"{session}.١٢٣.{signature}",  # Arabic-Indic digits
        real + "A" * 300,  # overlong
        "a.b.c.d",
    ):
        with pytest.raises(InvalidToken):
            tokens.verify(bad, "abc", TokenUse.START, connected=False, now_s=NOW_S)
    tokens.verify(real, "abc", TokenUse.START, connected=False, now_s=NOW_S)


def test_every_spelling_of_the_token_parameter_is_redacted() -> None:
    for query in ("tok%65n", "TOKEN", "%74oken", "to%6Ben", "token"):
        line = f'127.0.0.1:5000 - "WebSocket /v1/sessions/abc/audio?{query}=s3cret.1.sig&x=1"'
        assert redact_tokens(line).endswith(f'?{query}=[redacted]&x=1"'), query
    assert redact_tokens("/x?tokenizer=1&a=b") == "/x?tokenizer=1&a=b"

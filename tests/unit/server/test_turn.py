"""Per-session TURN credentials: the TURN REST API user name and password, their lifetime, and
the settings that turn them on (tests/integration/test_turn.py checks them against coturn)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from headcast.server.runtime import peer_config, turn_minter
from headcast.server.settings import SettingsError, load_settings
from headcast.server.turn import TurnMinter, mint_credential
from headcast.streaming.turn_check import relay_candidates, rest_expiry

SECRET = "a-turn-secret-of-32-characters!!"
TURN_URL = "turn:turn.example.org:3478?transport=udp"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HEADCAST_"):
            monkeypatch.delenv(name)


def test_credential_is_expiry_colon_name_signed_with_hmac_sha1() -> None:
    credential = mint_credential(SECRET, "abc123", 1_700_000_000.2)
    assert credential.username == "1700000001:abc123"  # rounded up: never shorter than asked
    assert credential.expires_at == 1_700_000_001
    digest = hmac.new(SECRET.encode(), b"1700000001:abc123", hashlib.sha1).digest()
    assert credential.password == base64.b64encode(digest).decode()
    assert mint_credential("another-secret-entirely", "abc123", 1_700_000_000.2).password != (
        credential.password
    )
    assert SECRET not in repr(credential) and credential.password not in repr(credential)


def test_minter_gives_each_session_its_own_credential_for_its_life() -> None:
    minter = TurnMinter((TURN_URL,), SECRET, lifetime_s=600.0)
    first = minter.ice_server("session-a", now=1_000.0)
    second = minter.ice_server("session-b", now=1_000.0)
    assert first.urls == [TURN_URL]
    assert first.username == "1600:session-a" and second.username == "1600:session-b"
    assert first.credential != second.credential
    assert rest_expiry(first.username) == 1600 and rest_expiry("plain-user") is None


def test_settings_mint_for_the_longest_session_life_and_keep_static_servers() -> None:
    settings = load_settings(
        turn_urls=TURN_URL,
        turn_secret=SECRET,
        max_duration_s=900.0,
        ice_servers=[{"urls": "stun:stun.example.org:3478"}],
        ice_relay_only=True,
    )
    minter = turn_minter(settings)
    assert minter is not None and minter.lifetime_s == 900.0 and minter.urls == (TURN_URL,)
    config = peer_config(settings)
    assert config.relay_only
    assert [s.urls for s in config.ice_servers] == [["stun:stun.example.org:3478"]]
    assert turn_minter(load_settings()) is None


def test_turn_urls_come_comma_separated_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "HEADCAST_TURN_URLS", f"{TURN_URL}, turns:turn.example.org:5349?transport=tcp"
    )
    monkeypatch.setenv("HEADCAST_TURN_SECRET", SECRET)
    settings = load_settings()
    assert settings.turn_urls == [TURN_URL, "turns:turn.example.org:5349?transport=tcp"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"turn_urls": TURN_URL}, "turn_urls and turn_secret go together"),
        ({"turn_secret": SECRET}, "turn_urls and turn_secret go together"),
        ({"turn_urls": "stun:stun.example.org", "turn_secret": SECRET}, "is not a TURN URL"),
        ({"turn_urls": TURN_URL, "turn_secret": "short"}, "shorter than 16 characters"),
        ({"ice_relay_only": True}, "ice_relay_only needs a TURN server"),
    ],
)
def test_incomplete_turn_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings(**overrides)
    assert "short" not in str(caught.value).replace("shorter", "")  # the secret is never echoed


def test_relay_candidates_are_counted_from_the_sdp() -> None:
    sdp = (
        "a=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\n"
        "a=candidate:2 1 udp 16777215 203.0.113.9 49152 typ relay raddr 0.0.0.0 rport 9\r\n"
    )
    assert relay_candidates(sdp) == 1 and relay_candidates("v=0\r\n") == 0


def test_turn_settings_may_come_from_different_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"turn_secret: {SECRET}\n", encoding="utf-8")
    monkeypatch.setenv("HEADCAST_TURN_URLS", TURN_URL)
    settings = load_settings(profile, ice_relay_only=True)
    assert settings.turn_urls == [TURN_URL] and settings.ice_relay_only

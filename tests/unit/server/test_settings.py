"""Settings: profile < environment < flags, and errors that name the bad key or value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headcast.server.settings import Settings, SettingsError, load_settings
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HEADCAST_"):
            monkeypatch.delenv(name)


def _profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_cpu_demo() -> None:
    settings = load_settings()
    assert (settings.host, settings.port, settings.engine) == ("127.0.0.1", 8000, "puppet")
    assert (settings.height, settings.width, settings.max_sessions) == (768, 448, None)
    assert settings.max_sessions_fallback == 4  # the puppet measures no RTF
    assert settings.video_codec == "vp8" and settings.ice_servers == []
    assert not settings.offers_loopback


def test_profile_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile(tmp_path, "port: 9001\nmax_sessions: 2\nvideo_codec: h264\nheight: 512\n")
    assert load_settings(profile).port == 9001
    monkeypatch.setenv("HEADCAST_PORT", "9002")
    monkeypatch.setenv("HEADCAST_MAX_SESSIONS", "3")
    settings = load_settings(profile, port=9003, host=None)
    assert settings.port == 9003  # flag beats env beats profile
    assert settings.max_sessions == 3  # env beats profile
    assert settings.video_codec == "h264" and settings.height == 512  # profile beats defaults
    assert settings.host == "127.0.0.1"  # an unset flag (None) changes nothing


def test_unknown_profile_key_is_named(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "port: 9001\nmax_session: 2\n")
    with pytest.raises(SettingsError, match=r"unknown setting 'max_session'") as info:
        load_settings(profile)
    assert str(profile) in str(info.value) and "max_sessions" in str(info.value)


def test_bad_values_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="engine"):
        load_settings(_profile(tmp_path, "engine: flashtolk\n"))
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings(colour="blue")
    monkeypatch.setenv("HEADCAST_PORT", "eighty")
    with pytest.raises(SettingsError, match="HEADCAST_PORT"):
        load_settings()


def test_profile_must_be_a_readable_mapping(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(_profile(tmp_path, "- port\n"))


def test_ice_servers_and_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile(
        tmp_path,
        "ice_servers:\n  - urls: stun:stun.example.org:3478\n"
        "  - urls: [turn:turn.example.org:3478]\n    username: u\n    credential: p\n",
    )
    settings = load_settings(profile)
    assert settings.ice_servers[0].urls == ["stun:stun.example.org:3478"]
    assert settings.ice_servers[1].username == "u"
    monkeypatch.setenv("HEADCAST_ICE_LOOPBACK_ONLY", "true")
    assert load_settings().offers_loopback


@pytest.mark.parametrize("name", ["cpu-demo", "tiny", "h100", "h200"])
def test_shipped_profiles_load(name: str) -> None:
    settings = load_settings(REPO_ROOT / "configs" / f"{name}.yaml")
    assert isinstance(settings, Settings)
    if name == "cpu-demo":
        assert (
            settings.engine == "puppet" and settings.ice_loopback and settings.host == "127.0.0.1"
        )
    if name in ("h100", "h200"):
        assert settings.engine == "flashtalk" and settings.model_dir is not None

"""docs/configuration.md is generated from ``Settings`` and must match it.

Fails when a setting is added, removed or re-documented without regenerating the file
(``python -m headcast.server.config_docs``), and checks the generator names every field, its
environment variable and its default.
"""

from __future__ import annotations

from pathlib import Path

from headcast.server.config_docs import DOC_PATH, main, render_configuration_doc
from headcast.server.settings import ENV_PREFIX, Settings


def test_the_configuration_doc_is_up_to_date() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render_configuration_doc(), (
        "docs/configuration.md is out of date: run python -m headcast.server.config_docs"
    )


def test_every_setting_is_documented_with_its_env_variable_and_default() -> None:
    doc = render_configuration_doc()
    for name, field in Settings.model_fields.items():
        section = doc.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        assert f"`{ENV_PREFIX}{name.upper()}`" in section
        assert "- Default: " in section and "- Type: " in section
        first_words = " ".join((field.description or "").split()[:3]).replace("``", "`")
        assert first_words and first_words in section, name
    assert "## `api_keys`" in doc and "- Default: empty" in doc
    assert "## `max_sessions`\n\n- Environment: `HEADCAST_MAX_SESSIONS`" in doc


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"
    assert main(["--check", "--output", str(target)]) == 1  # missing
    assert main(["--output", str(target)]) == 0
    assert main(["--check", "--output", str(target)]) == 0
    target.write_text(target.read_text(encoding="utf-8").replace("HEADCAST_PORT", "X"))
    assert main(["--check", "--output", str(target)]) == 1

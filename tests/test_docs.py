"""The docs list every setting, and the README names the commands CI and users run."""

from __future__ import annotations

from pathlib import Path

from streamgauge.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc_lists_every_setting() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [n for n in Settings.model_fields if f"`STREAMGAUGE_{n.upper()}`" not in text]
    assert not missing, f"undocumented settings: {missing}"
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_readme_names_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "scripts/demo" in readme and "scripts/check" in readme
    assert "scripts/check" in (ROOT / ".ci" / "run").read_text()

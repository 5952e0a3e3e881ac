"""Regenerate docs/configuration.md from the Settings model: `.venv/bin/python scripts/configuration_doc.py`."""

from __future__ import annotations

from pathlib import Path

from pydantic_core import PydanticUndefined

from streamgauge.config import Settings

HEADER = """# Configuration

Every setting is read once at start from the environment, with the prefix `STREAMGAUGE_`
(for example `STREAMGAUGE_DURABILITY=full`). `streamgauge serve --data DIR` sets `STREAMGAUGE_DATA`.
`tests/test_docs.py` checks that this page lists every setting; regenerate it with
`.venv/bin/python scripts/configuration_doc.py`.

| variable | default | what it does |
|---|---|---|
"""
SHOWN = {"admin_token": "generated"}


def main() -> None:
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = SHOWN.get(name) or ("unset" if default in (None, PydanticUndefined) else default)
        rows.append(f"| `STREAMGAUGE_{name.upper()}` | `{shown}` | {field.description} |")
    path = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    path.write_text(HEADER + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()

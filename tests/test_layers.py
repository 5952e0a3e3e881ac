"""The layers the import contracts cannot see: a face reaches storage only through the engine's
methods, never through the engine's ``store`` attribute (issue 12 item 1)."""

from __future__ import annotations

import re
from pathlib import Path

import streamgauge

FACES = Path(streamgauge.__file__).parent / "faces"


def test_no_face_reaches_the_store_through_the_engine() -> None:
    used = [
        f"{path.relative_to(FACES)}:{n}"
        for path in sorted(FACES.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bengine\.store\b", line)
    ]
    assert used == []


def test_no_face_holds_sql() -> None:
    sql = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")
    held = [
        f"{path.relative_to(FACES)}:{n}"
        for path in sorted(FACES.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if sql.search(line)
    ]
    assert held == []
